"""Plain cross-entropy: the baseline of the official base.py."""
from __future__ import annotations

from dataclasses import dataclass

from dlb.methods.base import Method, batch_ce, register_method


@register_method("ce")
class CE(Method):
    order, color = 0, "0.35"

    @dataclass
    class Config:
        name: str = "ce"

    def training_step(self, model, batch):
        logits = model(batch.views[0])
        return logits, {"ce": batch_ce(logits, batch)}
