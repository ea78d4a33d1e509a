"""scripts/demo.py with overrides, end to end on tiny fake Fashion-MNIST: no traceback, the table printed."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys

from conftest import REPO


def load_demo():
    spec = importlib.util.spec_from_file_location("demo", REPO / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_run_dir_is_safe_for_hydra():
    demo = load_demo()
    assert demo.run_dir("ce", []) == "outputs/demo/ce/seed0"
    assert demo.run_dir("dlb", ["seed=1", "optim.milestones=[2, 3]", "x='a/b'"]) == \
        "outputs/demo/dlb/seed=1,optim.milestones=_2_3_,x=_a_b_"


def test_demo_trains_in_bf16_where_the_device_has_it(monkeypatch):
    """bf16 autocast where the device does bf16 in hardware, unless the command sets trainer.precision; bf16 and fp32
    runs get folders of their own."""
    demo = load_demo()
    monkeypatch.setattr(demo, "native_bf16", lambda device: True)
    assert demo.precision(["seed=1"]) == ["trainer.precision=bf16"]
    assert demo.precision(["trainer.precision=fp32"]) == [] and demo.precision(["+trainer.precision=bf16"]) == []
    monkeypatch.setattr(demo, "native_bf16", lambda device: device.type == "cuda")
    assert demo.precision(["trainer.device=cpu"]) == []
    assert demo.run_dir("ce", ["trainer.precision=bf16"]) == "outputs/demo/ce/trainer.precision=bf16"


def test_demo_with_overrides_runs(tmp_path):
    from fakedata import write_fake_fashion_mnist

    write_fake_fashion_mnist(tmp_path / "data" / "FashionMNIST" / "raw", n_train=64, n_test=32)
    overrides = ["seed=1", "trainer.epochs=1", "dataset.train_subset=64", "trainer.batch_size=32",
                 "trainer.device=cpu", "trainer.progress=false"]
    env = {**os.environ, "DLB_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    demo = load_demo()
    folders = [REPO / demo.run_dir(m, [*demo.precision(overrides), *overrides]) for m in ("ce", "dlb")]
    try:
        r = subprocess.run([sys.executable, "scripts/demo.py", *overrides], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
        assert "Traceback" not in r.stderr, r.stderr
        assert r.returncode == 0, r.stderr[-2000:]
        assert "| ce |" in r.stdout and "| dlb |" in r.stdout and re.search(r"seed 1, (fp32|bf16), on ", r.stdout)
        assert "x86_64 (cpu)" not in r.stdout and "varies with whatever else the machine runs" in r.stdout
        assert all((f / "summary.json").is_file() for f in folders)
    finally:
        for f in folders:
            shutil.rmtree(f, ignore_errors=True)
