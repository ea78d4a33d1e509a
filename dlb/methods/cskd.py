"""Class-wise self-KD (CS-KD, Yun et al., CVPR 2020), as the official alinlab/cs-kd train.py and datasets.py: each
batch is B samples then B same-class partners (ClassPairOrder), and loss = CE(z, y[:B]) + lambda * T^2 *
KL(softmax(zp/T) || softmax(z/T)) batchmean, zp the partners' logits under no_grad (docs/methods.md)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlb.methods.base import Cost, Method, log_probs, mixed_ce, register_method


class ClassPairOrder:
    """batch_order for the DeviceLoader: batches of B shuffled samples, each followed by B same-class partners drawn
    for the whole epoch in one gather from a class-sorted index (docs/methods.md, cskd)."""

    def __init__(self, labels: torch.Tensor, batch_size: int):
        self.labels, self.batch_size = labels.long(), int(batch_size)
        self._tables: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def _table(self, device: torch.device):
        if device not in self._tables:  # once per device, outside the per-epoch path
            labels = self.labels.to(device)
            sorted_idx = torch.argsort(labels, stable=True)
            counts = torch.bincount(labels)
            self._tables[device] = (labels, sorted_idx, torch.cumsum(counts, 0) - counts, counts)
        return self._tables[device]

    def partners(self, samples: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        labels, sorted_idx, offsets, counts = self._table(g.device)
        c = labels[samples]
        # floor(u * n) can round up to n in float32 for large classes: clamp to the last member.
        pick = torch.minimum((torch.rand(len(samples), generator=g, device=g.device) * counts[c]).long(), counts[c] - 1)
        return sorted_idx[offsets[c] + pick]

    def __call__(self, epoch: int, g: torch.Generator) -> list[torch.Tensor]:
        order = torch.randperm(len(self.labels), generator=g, device=g.device)
        partners = self.partners(order, g)
        return [torch.cat([s, p]) for s, p in zip(order.split(self.batch_size), partners.split(self.batch_size))]


@register_method("cskd")
class CSKD(Method):
    paired_rows = True  # [samples; partners]: CutMix gives partner j sample j's patch, box and second label
    order, color = 4, "C5"
    cost = Cost("1 + 1 partners (no grad)", "no",
                "B·img partner images per batch and their no-grad forward (transient)")

    @dataclass
    class Config:
        """Defaults: the official train.py (T = 4, lambda = --lamda 1)."""
        name: str = "cskd"
        T: float = 4.0
        kd_weight: float = 1.0  # lambda (the official --lamda)
        ranges = {"T": "> 0", "kd_weight": ">= 0"}

    def batch_order(self, labels, batch_size):
        return ClassPairOrder(labels, batch_size)

    def training_step(self, model, batch):
        x = batch.views[0]
        b = x.shape[0] // 2
        logits = model(x[:b])
        with torch.no_grad():  # a separate call: BatchNorm normalises each half alone (and the partners update its
            partner_logits = model(x[b:])  # running statistics too, as the official code's no_grad forward does)
        ce = mixed_ce(logits, *(None if t is None else t[:b] for t in (batch.y, batch.y_mix, batch.lam)))
        T = self.T
        kl = F.kl_div(log_probs(logits, T), F.softmax(partner_logits.float() / T, dim=1), reduction="sum")
        return logits, {"ce": ce, "kd": self.kd_weight * T * T * kl / b}
