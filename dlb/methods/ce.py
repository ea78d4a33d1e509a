"""Plain cross-entropy: the baseline of the official base.py."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from dlb.methods.base import Method, register_method


@register_method("ce")
class CE(Method):
    @dataclass
    class Config:
        name: str = "ce"

    def training_step(self, model, batch):
        logits = model(batch.views[0])
        return logits, {"ce": F.cross_entropy(logits, batch.y)}
