import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dlb.config import compose  # noqa: E402,F401  (the tests' `from conftest import compose`)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    """A tiny CIFAR-10 in the real archive format (md5 lists patched to match); returns its root."""
    from fakedata import write_fake_cifar

    root = tmp_path / "data"
    write_fake_cifar(root, name="cifar10", n_train=96, n_test=40, monkeypatch=monkeypatch)
    return root
