"""Every method trains with every batch augmentation, under label noise (any method composes with any
augmentation): one epoch of two steps each, on tiny CIFAR-format data."""
from __future__ import annotations

import json

import pytest
import torch

from dlb.methods import METHODS
from dlb.trainer import Trainer
from test_train import tiny_cfg


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A CE checkpoint for tfkd_self (a trained teacher of the same architecture: resnet8, 10 classes)."""
    import timm

    import dlb.models  # noqa: F401

    path = tmp_path_factory.mktemp("teacher") / "best.pt"
    torch.save({"model": timm.create_model("cifar_resnet8", num_classes=10).state_dict()}, path)
    return path


@pytest.mark.parametrize("augment", ["cutout", "cutmix"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_with_augment_and_noise(fake_cifar, tmp_path, teacher_ckpt, method, augment):
    extra = [f"method.teacher={teacher_ckpt}"] if method == "tfkd_self" else []
    # cutmix.prob=1: every batch mixed, so the mixed-target path of each method really runs.
    cfg = tiny_cfg(fake_cifar, f"method={method}", f"augment={augment}", "augment.prob=1.0", "noise=symmetric",
                   "noise.rate=0.4", "trainer.limit_train_batches=2", *extra)
    summary = Trainer(cfg, tmp_path / "run").fit()
    assert summary["status"] == "completed" and summary["augment"] == augment
    assert 0.2 < summary["noise_rate_realised"] < 0.6  # 96 fake labels at rate 0.4
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert row["train_loss"] == row["train_loss"]  # finite, not NaN
