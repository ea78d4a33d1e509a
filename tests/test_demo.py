"""scripts/demo.py with overrides, end to end on tiny fake Fashion-MNIST: no traceback, the table printed."""
from __future__ import annotations

import importlib.util
import os
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


def test_demo_with_overrides_runs(tmp_path):
    from fakedata import write_fake_fashion_mnist

    write_fake_fashion_mnist(tmp_path / "data" / "FashionMNIST" / "raw", n_train=64, n_test=32)
    overrides = ["seed=1", "trainer.epochs=1", "dataset.train_subset=64", "trainer.batch_size=32",
                 "trainer.device=cpu", "trainer.progress=false"]
    env = {**os.environ, "DLB_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    folders = [REPO / load_demo().run_dir(m, overrides) for m in ("ce", "dlb")]
    try:
        r = subprocess.run([sys.executable, "scripts/demo.py", *overrides], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
        assert "Traceback" not in r.stderr, r.stderr
        assert r.returncode == 0, r.stderr[-2000:]
        assert "| ce |" in r.stdout and "| dlb |" in r.stdout and "seed 1" in r.stdout
        assert "x86_64 (cpu)" not in r.stdout and "varies with whatever else the machine runs" in r.stdout
        assert all((f / "summary.json").is_file() for f in folders)
    finally:
        for f in folders:
            shutil.rmtree(f, ignore_errors=True)
