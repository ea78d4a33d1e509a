"""The method interface, in the spirit of mdistiller's Distiller.

The trainer hands a method a batch; the method runs the model as often as it needs and returns the logits of the
current batch (for training accuracy) and a dict of named, already-weighted loss terms. The trainer sums the terms,
logs each one and backpropagates, never knowing which method runs. Whatever a method remembers between steps
(DLB's last batch, PS-KD's memory) lives in the method and goes into checkpoints through `method_state`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

METHODS: dict[str, type["Method"]] = {}


def register_method(name: str) -> Callable[[type["Method"]], type["Method"]]:
    def add(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice ({METHODS[name].__module__}, {cls.__module__})")
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


class Method(nn.Module):
    """Base class. Subclasses set `Config` (a dataclass whose fields are the constructor's keyword arguments)."""

    name: str = "?"
    num_views: int = 1  # augmented views per image the loader must provide
    # True when a batch's rows are [B samples; B partners of the same samples] (CS-KD): batch augmentations then
    # treat row j and row B + j alike (CutMix pastes the same patch into both).
    paired_rows: bool = False
    # Diagnostics of the last step (detached scalars, not part of the loss); the trainer averages and logs them
    # as train_<name>. Set them in training_step; leave empty when there are none.
    step_metrics: dict[str, torch.Tensor] = {}

    @dataclass
    class Config:
        name: str = "?"

    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        """Raise dlb.config.ConfigError for out-of-range values. Types are already checked by the schema."""

    def training_step(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return (logits of the batch's first len(logits) rows, {term name: weighted loss term}).

        The trainer backpropagates the sum of the terms and measures training accuracy on those logits."""
        raise NotImplementedError

    def batch_order(self, labels: torch.Tensor, batch_size: int):
        """Optional loader hook: a callable (epoch, generator) -> index batches replacing plain shuffling
        (CS-KD's class-paired batches). `labels` are the labels the model trains on (noisy ones under label noise)."""
        return None

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called before each training epoch (0-based)."""

    def info(self) -> dict:
        """What the method resolved for this run and a reader of its folder should know (tfkd_self: the teacher's
        checkpoint); recorded in config.json and summary.json as method_info."""
        return {}

    def method_state(self) -> dict:
        """Everything the method carries between steps, for checkpoints."""
        return {}

    def load_method_state(self, state: dict, device: torch.device | str | None = None) -> None:
        """Restore `method_state()`, moving tensors to `device`."""


def mixed_ce(logits: torch.Tensor, y: torch.Tensor, y_mix: torch.Tensor | None = None,
             lam: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (mean or sum over the batch) to hard labels, or to lam*y + (1-lam)*y_mix per sample when the
    batch was CutMix-ed."""
    if y_mix is None:
        return F.cross_entropy(logits, y, reduction=reduction)
    ce = F.cross_entropy(logits, y, reduction="none")
    ce_mix = F.cross_entropy(logits, y_mix, reduction="none")
    per_sample = lam * ce + (1 - lam) * ce_mix
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


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


def batch_ce(logits: torch.Tensor, batch) -> torch.Tensor:
    return mixed_ce(logits, batch.y, batch.y_mix, batch.lam)


def build_method(method_cfg: Any, **context: Any) -> Method:
    """Instantiate the method named by method_cfg.name with its other fields as keyword arguments.

    `context` (num_classes, train_size, run_cfg, ...) is passed to methods whose constructor asks for it.
    """
    import inspect

    cls = METHODS[method_cfg.name]
    kwargs = {k: v for k, v in dict(method_cfg).items() if k != "name"}
    accepted = inspect.signature(cls.__init__).parameters
    kwargs.update({k: v for k, v in context.items() if k in accepted})
    return cls(**kwargs)
