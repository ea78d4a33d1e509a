"""Data-distortion guided self-distillation (DDGSD, Xu & Liu, AAAI 2019), and DDGSD + DLB (ddgsd_dlb).

Both views go through the network in one call; loss = CE on both + kl_weight * the two-way KL between the views +
mmd_weight * the MMD^2 of their mean features, and for ddgsd_dlb DLB's last-batch term. There is no official code:
the terms are the paper's, the weights our choice (formulas and defaults: docs/methods.md)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dlb.methods.base import Cost, Method, mixed_ce, register_method
from dlb.methods.dlb import DLB, last_batch_kd


def features_and_logits(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (B, D) and logits from one backbone pass, for cifar_* and timm models alike (docs/methods.md)."""
    feats = model.forward_features(x)
    return model.forward_head(feats, pre_logits=True), model.forward_head(feats)


@register_method("ddgsd")
class DDGSD(Method):
    num_views = 2
    order, color = 6, "C4"
    cost = Cost("2 (one call on both views)", "no", "A(2B) − A(B) ≈ A: both views kept for backward",
                lambda A, P, N, K, B, img: A)

    @dataclass
    class Config:
        name: str = "ddgsd"
        T: float = 4.0
        kl_weight: float = 1.0
        mmd_weight: float = 5e-4
        ranges = {"T": "> 0", "kl_weight": ">= 0", "mmd_weight": ">= 0"}

    @classmethod
    def rules_out(cls, cfg):
        # features_and_logits calls model.forward_features, which the DistributedDataParallel wrapper never sees
        return {"ddp": ("trainer.ddp", True, f"method={cfg.name} runs model.forward_features, which "
                        "DistributedDataParallel does not wrap (gradients would not be averaged); train it on one GPU")}

    def training_step(self, model, batch):
        b = batch.views[0].shape[0]
        feats, logits = features_and_logits(model, torch.cat(batch.views[:2]))
        (f_a, f_b), (z_a, z_b) = feats.split(b), logits.split(b)
        # Both views of a sample share its label (and, under CutMix, its partner and lam).
        ce = mixed_ce(logits, *(None if t is None else t.repeat(2) for t in (batch.y, batch.y_mix, batch.lam)))
        kl = last_batch_kd(z_a, z_b, self.T) + last_batch_kd(z_b, z_a, self.T)  # each view learns from the other
        mmd = (f_a.float().mean(0) - f_b.float().mean(0)).pow(2).sum()  # of the batch-mean features
        return z_a, {"ce": ce, "kl": self.kl_weight * kl, "mmd": self.mmd_weight * mmd}


@register_method("ddgsd_dlb")
class DDGSDWithDLB(DDGSD):
    """DDGSD on S_t plus DLB's last-batch KD; the cache is DLB's (same keys, same checkpoint state)."""

    order, color = 7, "C1"
    compared_with = ("ddgsd",)
    prev: dict[str, torch.Tensor] | None = None  # view1 images, labels and detached view0 logits of S_{t-1}
    cost = Cost("2 + 1 (last batch's view, separate call)", "no", "≈ 2A + last-batch cache B·(img + 8 + K·4)",
                lambda A, P, N, K, B, img: 2 * A + B * (img + 8 + 4 * K))

    @dataclass
    class Config(DDGSD.Config):
        """DDGSD's fields, then DLB's term's (dlb.py: T = 3, alpha = 1)."""
        name: str = "ddgsd_dlb"
        dlb_T: float = 3.0
        dlb_alpha: float = 1.0
        ranges = {**DDGSD.Config.ranges, "dlb_T": "> 0", "dlb_alpha": ">= 0"}

    def training_step(self, model, batch):
        logits, losses = super().training_step(model, batch)
        if self.prev is not None:  # a separate call, as in DLB: BatchNorm statistics of S_{t-1} alone
            losses["kd"] = self.dlb_alpha * last_batch_kd(model(self.prev["x1"]), self.prev["logits"], self.dlb_T)
        self.prev = {"x1": batch.views[1], "y": batch.y, "logits": logits.detach().float()}
        return logits, losses

    method_state = DLB.method_state
    load_method_state = DLB.load_method_state
