"""scripts/demo.py: one line per step of finding the data, its time estimate, the seed-noise line read from the
committed results, and end to end with overrides on tiny fake Fashion-MNIST: no traceback, the table and the plot."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from dlb.errors import DatasetError


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


def _demo_lines(capsys) -> list[str]:
    out = capsys.readouterr()
    assert out.err == ""
    return out.out.splitlines()


def test_data_found_on_disk_is_one_line(monkeypatch, capsys):
    demo = load_demo()
    monkeypatch.setattr(demo, "have_data", lambda root: True)
    demo.ensure_data("/data")
    assert _demo_lines(capsys) == [f"demo: data: Fashion-MNIST found on disk (looked in /data, then "
                                   f"{demo.FASHION_MNIST_SYSTEM_DIR})"]


def test_download_is_one_line_each_way(monkeypatch, capsys):
    """torchvision's progress and its multi-line network error never reach the terminal: one line per step."""
    demo = load_demo()
    calls = []

    def failing_load(name, root, train, download=False):
        calls.append(train)
        print("Downloading http://... Failed to download (trying next):")  # what torchvision prints
        try:
            raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>\nsecond line")
        except OSError as e:
            raise DatasetError(f"downloading Fashion-MNIST into {root} failed ({e}); check internet") from e

    monkeypatch.setattr(demo, "load_dataset", failing_load)
    assert demo.download("/data") == "<urlopen error [Errno -3] Temporary failure in name resolution>"
    assert capsys.readouterr().out == "" and calls == [True]
    monkeypatch.setattr(demo, "load_dataset", lambda *a, **k: None)
    assert demo.download("/data") is None

    have = iter([False, True])
    monkeypatch.setattr(demo, "have_data", lambda root: next(have))
    monkeypatch.setattr(demo, "download", lambda root: None)
    demo.ensure_data("/data")
    assert _demo_lines(capsys) == [
        f"demo: data: Fashion-MNIST not in /data or {demo.FASHION_MNIST_SYSTEM_DIR}; downloading it with torchvision ...",
        "demo: data: downloaded into /data"]


@pytest.mark.parametrize("apt_works", [True, False])
def test_apt_install_is_one_line_and_its_output_goes_to_a_log(monkeypatch, capsys, tmp_path, apt_works):
    demo = load_demo()
    log = tmp_path / "apt-get.log"
    monkeypatch.setattr(demo, "APT_LOG", log)
    monkeypatch.setattr(demo, "have_data", lambda root: apt_works and log.is_file())
    monkeypatch.setattr(demo, "download", lambda root: "<urlopen error no network>")
    monkeypatch.setattr(demo.shutil, "which", lambda cmd: "/usr/bin/apt-get")
    monkeypatch.setattr(demo.os, "geteuid", lambda: 0)
    ran = []

    def fake_apt(cmd, stdout, stderr, env):
        ran.append(cmd[1])
        stdout.write("Reading package lists... 0%\nReading package lists... Done\n")
        stdout.write("" if apt_works else "E: Unable to locate package dataset-fashion-mnist\n")
        return subprocess.CompletedProcess(cmd, 0 if apt_works else 100)

    monkeypatch.setattr(demo.subprocess, "run", fake_apt)
    head = [f"demo: data: Fashion-MNIST not in /data or {demo.FASHION_MNIST_SYSTEM_DIR}; downloading it with "
            "torchvision ...", "demo: data: download failed: <urlopen error no network>",
            f"demo: data: installing Debian's dataset-fashion-mnist package with apt-get (output in {log}) ..."]
    if apt_works:
        demo.ensure_data("/data")
        assert _demo_lines(capsys) == [*head, f"demo: data: installed at {demo.FASHION_MNIST_SYSTEM_DIR}"]
        assert ran == ["install"]
        return
    with pytest.raises(SystemExit) as stop:
        demo.ensure_data("/data")
    assert _demo_lines(capsys) == [*head, "demo: data: apt-get failed (E: Unable to locate package "
                                   f"dataset-fashion-mnist); full log: {log}"]
    assert ran == ["install", "update", "install"] and "Reading package lists" in log.read_text()
    assert str(stop.value.code) == "demo: data: no Fashion-MNIST. Run: sudo apt-get install -y dataset-fashion-mnist"


def test_no_data_and_no_apt_names_the_one_command(monkeypatch, capsys):
    demo = load_demo()
    monkeypatch.setattr(demo, "have_data", lambda root: False)
    monkeypatch.setattr(demo, "download", lambda root: "<urlopen error no network>")
    monkeypatch.setattr(demo.shutil, "which", lambda cmd: None)
    with pytest.raises(SystemExit) as stop:
        demo.ensure_data("/data")
    assert len(_demo_lines(capsys)) == 2
    assert str(stop.value.code).startswith("demo: data: no Fashion-MNIST. Run: python -m dlb.train "
                                           "experiment=fashion_demo dataset.download=true")


def test_seed_noise_line_reads_the_spread_from_the_results_file(tmp_path):
    """The figures come from the file: a made-up file gives its numbers; the committed one gives its own."""
    demo = load_demo()
    results = {"rows": [{"backbone": "cifar_resnet8", "method": "ce", "setting": "", "variant": "", "seeds": [0, 1, 2],
                         "best": {"std": 2.345}}],
               "claims": [{"comparisons": [{"backbone": "cifar_resnet8", "setting": "", "base": "ce", "method": "dlb",
                                            "best": {"mean": 0.625, "lo": -0.125, "hi": 1.375, "n": 3}}]}]}
    path = tmp_path / "claims.json"
    path.write_text(json.dumps(results))
    line = demo.seed_noise_line("cifar_resnet8", 16.0, 15.81, path)
    assert "DLB is 0.19 points ahead of CE on one seed: less than" in line and "±2.35 points" in line
    assert "+0.62 points, 95 % interval [-0.12, +1.38], on 3 paired seeds" in line and str(path) in line
    assert "\n" not in line
    assert "more than" in demo.seed_noise_line("cifar_resnet8", 16.0, 12.0, path)
    assert "no multi-seed cifar_resnet20 result" in demo.seed_noise_line("cifar_resnet20", 16.0, 15.0, path)

    committed = json.loads(demo.SEED_RESULTS.read_text())
    ce = next(r for r in committed["rows"] if (r["backbone"], r["method"], r["setting"], r["variant"]) ==
              ("cifar_resnet8", "ce", "", ""))
    line = demo.seed_noise_line("cifar_resnet8", 16.0, 15.81)
    assert f"±{ce['best']['std']:.2f} points" in line and "results/cpu_claims/cpu_claims.json" in line


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
        lines = r.stdout.splitlines()
        assert lines[0].startswith("demo: data: Fashion-MNIST found on disk")
        assert re.fullmatch(r"demo: estimate: about (\d+ min )?\d+ s in all \(.*\)", lines[1]), lines[1]
        assert lines[2].startswith("demo: python -m dlb.train experiment=fashion_demo method=ce ")
        assert len(re.findall(r"^demo: estimate: about .* left \((CE|DLB)'s first epoch took", r.stdout, re.M)) == 2
        assert re.search(r"^DLB is \d+\.\d\d points (ahead of|behind) CE on one seed: .*cpu_claims\.json", r.stdout,
                         re.M)
        png = re.search(r"^Test error per epoch, CE vs DLB: (\S+\.png)$", r.stdout, re.M)
        assert png and (REPO / png[1]).stat().st_size > 0
        folders.append(REPO / png[1])
    finally:
        for f in folders:
            shutil.rmtree(f, ignore_errors=True) if f.is_dir() else f.unlink(missing_ok=True)


@pytest.mark.parametrize("code,says", [(75, "run stopped; run the same command again"), (2, "failed with exit code 2")])
def test_a_stopped_or_failed_run_ends_the_demo_in_one_line(capsys, code, says):
    demo = load_demo()
    with pytest.raises(SystemExit) as stop:
        demo.train("dlb", [sys.executable, "-c", f"print('epoch 1/2  loss 1'); raise SystemExit({code})"], None)
    assert says in str(stop.value.code) and "\n" not in str(stop.value.code)
    assert capsys.readouterr().out.splitlines()[0] == "epoch 1/2  loss 1"
