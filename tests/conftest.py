import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


def compose(overrides=(), name="config"):
    """The config `python -m dlb.train <overrides>` would run with (no Hydra run dir side effects)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from dlb.config import register_configs

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        return hydra_compose(name, overrides=list(overrides), return_hydra_config=False)


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    """A tiny CIFAR-10 in the real archive format (md5 lists patched to match); returns its root."""
    from fakedata import write_fake_cifar

    root = tmp_path / "data"
    write_fake_cifar(root, name="cifar10", n_train=96, n_test=40, monkeypatch=monkeypatch)
    return root
