import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dlb.config import compose  # noqa: E402,F401  (the tests' `from conftest import compose`)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
TIMING_KEYS = {"train_time_s", "train_img_per_s", "eval_time_s"}  # wall-clock: differ between equal runs


def metric_rows(run_dir: Path) -> list[dict]:
    """A run's metrics.jsonl rows without their timings: what an equal run must reproduce exactly."""
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    """A tiny CIFAR-10 in the real archive format (md5 lists patched to match); returns its root."""
    from fakedata import write_fake_cifar

    root = tmp_path / "data"
    write_fake_cifar(root, name="cifar10", n_train=96, n_test=40, monkeypatch=monkeypatch)
    return root


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node SLURM cluster (tests/slurm_cluster.py) for the session; skips where it can't be started."""
    from slurm_cluster import Cluster, Unavailable

    cluster = Cluster(tmp_path_factory.mktemp("slurm-cluster"))
    try:
        cluster.start()
    except Unavailable as e:
        pytest.skip(f"no SLURM cluster: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()
