"""Label smoothing (LSR), as the Tf-KD repository's loss_label_smoothing (my_loss_function.py):

  target = (1 - eps) on the true class, eps/(K-1) on each wrong class;  loss = -sum_k target_k log softmax(z)_k,
  mean over the batch.

Also home of the soft-target helpers the other soft-label methods (PS-KD, Tf-KD) share.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlb.methods.base import Method, register_method


def soft_target_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-sum_k t_k log softmax(z)_k, mean over the batch (the official LSR and PS-KD losses)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


def onehot_targets(batch, num_classes: int, rows: slice = slice(None)) -> torch.Tensor:
    """One-hot labels of the batch's `rows`, or lam*onehot(y) + (1-lam)*onehot(y_mix) when it was CutMix-ed.
    Float32 (B, K): soft-target methods mix these with their own soft parts."""
    target = F.one_hot(batch.y[rows], num_classes).float()
    if batch.y_mix is None:
        return target
    lam = batch.lam[rows].float()[:, None]
    return lam * target + (1 - lam) * F.one_hot(batch.y_mix[rows], num_classes).float()


def smooth(onehot: torch.Tensor, eps: float) -> torch.Tensor:
    """(1-eps) on the labelled class, eps/(K-1) elsewhere. Affine in onehot, so a CutMix-ed onehot gives the
    lam-mix of the two smoothed targets."""
    k = onehot.shape[1]
    return onehot * (1 - eps - eps / (k - 1)) + eps / (k - 1)


@register_method("lsr")
class LSR(Method):
    @dataclass
    class Config:
        name: str = "lsr"
        eps: float = 0.1

    @classmethod
    def validate_config(cls, cfg):
        from dlb.config import ConfigError

        if not 0 <= cfg.eps < 1:
            raise ConfigError(f"method.eps={cfg.eps}: the smoothing mass must be in [0, 1) "
                              "(the official code uses 0.1)")

    def __init__(self, eps: float = 0.1):
        super().__init__()
        self.eps = float(eps)

    def training_step(self, model, batch):
        logits = model(batch.views[0])
        target = smooth(onehot_targets(batch, logits.shape[1]), self.eps)
        return logits, {"ce": soft_target_ce(logits, target)}
