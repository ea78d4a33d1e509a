"""Progressive self-KD (PS-KD, Kim et al., ICCV 2021), as the official lgcnsai/PS-KD-Pytorch main.py train().

An N x K memory holds each training image's softmax from the last time it was seen; the target is
(1 - alpha_t) onehot(y) + alpha_t * memory[idx], alpha_t = alpha_T * (epoch + 1) / E (details: docs/methods.md)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlb.device.distributed import all_gather_rows
from dlb.methods.base import Cost, Method, onehot_targets, register_method, soft_target_ce


@register_method("pskd")
class PSKD(Method):
    order, color = 5, "C6"
    cost = Cost(memory="N·K·4 prediction memory", memory_bytes=lambda A, P, N, K, B, img: N * K * 4)
    alpha_t = 0.0  # this epoch's weight of the memory, set by on_epoch_start

    @dataclass
    class Config:
        """Default: the official main.py (alpha_T = 0.8)."""
        name: str = "pskd"
        alpha_T: float = 0.8
        ranges = {"alpha_T": "in [0, 1]"}

    def __init__(self, train_size: int = 0, num_classes: int = 0, **options):
        super().__init__(**options)
        # A buffer, so method.to(device) moves it; float32 like the official all_predictions.
        self.register_buffer("memory", torch.zeros(train_size, num_classes, dtype=torch.float32), persistent=False)

    def on_epoch_start(self, epoch, epochs):
        self.alpha_t = max(0.0, self.alpha_T * (epoch + 1) / epochs)

    def training_step(self, model, batch):
        if batch.idx is None:
            raise ValueError("PS-KD needs the dataset row indices of each batch (Batch.idx)")
        logits = model(batch.views[0])
        onehot = onehot_targets(batch, logits.shape[1])
        # A row not yet written (a softmax row sums to 1, an empty one to 0) gives the (mixed) one-hot: every row in
        # epoch 0, where the official code writes onehot(y) first, and an image that sat out an epoch (docs/methods.md).
        prev = self.memory[batch.idx]
        prev = torch.where(prev.sum(1, keepdim=True) > 0, prev, onehot)
        target = (1 - self.alpha_t) * onehot + self.alpha_t * prev
        # DDP: every rank writes every rank's rows, so the memory stays identical on all ranks (a sample is seen by a
        # different rank next epoch, and rank 0 checkpoints it). Sent each step, not at the epoch's end, so a
        # mid-epoch checkpoint is complete too; B x K floats per rank per step, no host sync.
        idx, probs = all_gather_rows(batch.idx, F.softmax(logits.detach().float(), dim=1))
        self.memory[idx] = probs
        return logits, {"ce": soft_target_ce(logits, target)}

    def method_state(self):
        return {"memory": self.memory.cpu()}

    def load_method_state(self, state, device=None):
        memory = state["memory"]
        if memory.shape != self.memory.shape:
            raise ValueError(f"PS-KD memory of shape {tuple(memory.shape)} does not fit this run's "
                             f"{tuple(self.memory.shape)} (train_size x num_classes)")
        self.memory.copy_(memory.to(self.memory.device))
