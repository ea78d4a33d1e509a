"""Label smoothing (LSR), as the Tf-KD repository's loss_label_smoothing (my_loss_function.py):

  target = (1 - eps) on the true class, eps/(K-1) on each wrong class;  loss = -sum_k target_k log softmax(z)_k,
  mean over the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dlb.errors import ConfigError
from dlb.methods.base import Cost, Method, onehot_targets, register_method, soft_target_ce


def smooth(onehot: torch.Tensor, eps: float) -> torch.Tensor:
    """(1-eps) on the labelled class, eps/(K-1) elsewhere. Affine in onehot, so a CutMix-ed onehot gives the
    lam-mix of the two smoothed targets."""
    k = onehot.shape[1]
    return onehot * (1 - eps - eps / (k - 1)) + eps / (k - 1)


@register_method("lsr")
class LSR(Method):
    order, color = 1, "C2"
    cost = Cost(memory="0 (B·K·4 soft targets, transient)")

    @dataclass
    class Config:
        """Default: the Tf-KD repo's my_loss_function.py::loss_label_smoothing (alpha = 0.1)."""
        name: str = "lsr"
        eps: float = 0.1

    @classmethod
    def validate_config(cls, cfg):
        if not 0 <= cfg.eps < 1:
            raise ConfigError(f"method.eps={cfg.eps}: the smoothing mass must be in [0, 1) "
                              "(the official code uses 0.1)")

    def training_step(self, model, batch):
        logits = model(batch.views[0])
        target = smooth(onehot_targets(batch, logits.shape[1]), self.eps)
        return logits, {"ce": soft_target_ce(logits, target)}
