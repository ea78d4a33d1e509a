"""Label smoothing (LSR), as the Tf-KD repository's loss_label_smoothing (my_loss_function.py): the target is
(1 - eps) on the true class and eps/(K-1) on each other (docs/methods.md)."""
from __future__ import annotations

from dataclasses import dataclass

from dlb.methods.base import Cost, Method, onehot_targets, register_method, soft_target_ce


@register_method("lsr")
class LSR(Method):
    order, color = 1, "C2"
    cost = Cost(memory="0 (B·K·4 soft targets, transient)")

    @dataclass
    class Config:
        """Default: the Tf-KD repo's my_loss_function.py::loss_label_smoothing (alpha = 0.1)."""
        name: str = "lsr"
        eps: float = 0.1
        ranges = {"eps": "in [0, 1)"}

    def training_step(self, model, batch):
        logits = model(batch.views[0])
        k, eps = logits.shape[1], self.eps
        # affine in the one-hot, so a CutMix-ed one gives the lam-mix of the two smoothed targets
        target = onehot_targets(batch, k) * (1 - eps - eps / (k - 1)) + eps / (k - 1)
        return logits, {"ce": soft_target_ce(logits, target)}
