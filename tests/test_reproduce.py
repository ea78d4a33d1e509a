"""`make reproduce-table1` end to end on CPU: the grid's shape, tiny data, one step per job, tables at the end.

CI runs a reduced grid (seed 0, ResNet-32: all 3 datasets x 7 methods = 21 jobs); DLB_SLOW_FULL=1
(`make test-all`) runs the full 3 x 6 x 7 x 3 = 378-job shape.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow
FULL = os.environ.get("DLB_SLOW_FULL") == "1"


def test_reproduce_table1_debug_grid(tmp_path, monkeypatch):
    from fakedata import subprocess_env_for_fake_cifar, write_fake_cifar, write_fake_tinyimagenet

    data = tmp_path / "data"
    md5s = {name: write_fake_cifar(data, name=name, n_train=64, n_test=32) for name in ("cifar10", "cifar100")}
    write_fake_tinyimagenet(data, n_classes=4, n_train_per_class=8, n_val_per_class=4, reorganised=True)
    env = subprocess_env_for_fake_cifar(md5s, tmp_path)
    env.update(DLB_DATA=str(data), HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    args = "debug=step trainer.batch_size=8" + ("" if FULL else " seed=0 backbone=resnet32")
    r = subprocess.run(["make", "reproduce-table1", f"PY={sys.executable}",  # the interpreter running the tests
                        f"SWEEP_ROOT={tmp_path / 'multirun'}", f"RESULTS={tmp_path / 'results'}",
                        f"ARGS={args}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=3000)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])

    n_backbones, n_seeds = (6, 3) if FULL else (1, 1)
    summaries = list((tmp_path / "multirun").glob("table1_*/**/summary.json"))
    assert len(summaries) == 3 * n_backbones * 7 * n_seeds
    assert all(json.loads(p.read_text())["status"] == "completed" for p in summaries)
    report = json.loads((tmp_path / "results" / "table1" / "table1.json").read_text())
    assert (tmp_path / "results" / "table1" / "table1.md").exists()
    assert (tmp_path / "results" / "table1" / "table1.tex").exists()
    text = (tmp_path / "results" / "table1" / "table1.md").read_text()
    for method in ("ce", "lsr", "tfkd_self", "tfkd_reg", "cskd", "pskd", "dlb"):
        assert method in text
    assert report  # aggregated data written
