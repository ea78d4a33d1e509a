"""The method interface, in the spirit of mdistiller's Distiller.

The trainer hands a method a batch; the method runs the model as often as it needs and returns the logits of the
current batch (for training accuracy) and a dict of named, already-weighted loss terms. The trainer sums the terms,
logs each one and backpropagates, never knowing which method runs. Whatever a method remembers between steps
(DLB's last batch, PS-KD's memory) lives in the method and goes into checkpoints through `method_state`."""
from __future__ import annotations

import dataclasses
import enum
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from dlb.errors import ConfigError

METHODS: dict[str, type["Method"]] = {}


def register_method(name: str) -> Callable[[type["Method"]], type["Method"]]:
    def add(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice ({METHODS[name].__module__}, {cls.__module__})")
        cls.name = name
        cls.label = vars(cls).get("label", name)  # a subclass's label is its own name, not its parent's
        METHODS[name] = cls
        return cls

    return add


@dataclass(frozen=True)
class Cost:
    """What a method costs on top of plain CE, as the cost table (scripts/method_costs.py) states it."""
    passes: str = "1"  # images through the network per step, in units of B (calls with gradient unless marked)
    teacher: str = "no"  # what it needs besides the data
    memory: str = "0"  # extra memory vs CE, as a formula of A (CE's bytes saved for backward), P, N, K, B, img
    memory_bytes: Callable[..., float] = lambda A, P, N, K, B, img: 0  # that formula in bytes


class Method(nn.Module):
    """Base class. Subclasses set `Config`, a dataclass: its fields are the method's options with their defaults
    (the `method=<name>` config group entry, and the constructor's keyword arguments), and `name` its registered name.

    The class attributes below are the facts the rest of the package reads from the registry (`METHODS`), so a new
    method states them here, in its own file, and no other file changes."""

    name: str = "?"
    # --- what the trainer, the loader, the config checks and the sweep planner need to know
    num_views: int = 1  # augmented views per image the loader must provide
    # True when a batch's rows are [B samples; B partners of the same samples] (CS-KD): batch augmentations then
    # treat row j and row B + j alike (CutMix pastes the same patch into both).
    paired_rows: bool = False
    # Needs a finished ce run of the same cell (tfkd_self's teacher): dlb.sweep runs the ce jobs in a stage before.
    needs_teacher: bool = False
    # Options that change speed or memory, never the numbers (at most float rounding): not part of a run's identity
    # (dlb.run.identity), so a run may be resumed, averaged or used as a teacher whatever their values.
    speed_only_options: tuple[str, ...] = ()
    # --- how tables (dlb.report), figures (dlb.plot) and the cost table (scripts/method_costs.py) show it
    label: str = ""  # display name; register_method sets it to the registered name unless the class gives one
    order: int = 100  # row position in tables, ascending (the paper's order); ties and unset ones by name
    color: str | None = None  # matplotlib colour in figures; None: one picked from the name
    # The methods whose error the report subtracts this method's from (base - method, per setting), in this order.
    compared_with: tuple[str, ...] = ()
    cost: Cost = Cost()
    # Other settings of this method that the cost table measures too: {"backward=split": Cost(...)} gives the row
    # "<name>:backward=split".
    cost_variants: dict[str, Cost] = {}
    # Diagnostics of the last step (detached scalars, not part of the loss); the trainer averages and logs them
    # as train_<name>. Set them in training_step; leave empty when there are none.
    step_metrics: dict[str, torch.Tensor] = {}

    @dataclass
    class Config:
        name: str = "?"
        # {field: what its value must meet: "> 0", ">= 0" or an interval such as "in [0, 1)"}, checked by
        # validate_config (a class attribute, not an option)
        ranges = {}

    def __init__(self, **options: Any):
        """Each Config field (but `name`) becomes an attribute: the given value, else the Config default. Numbers are
        coerced to the field's type and Enum fields to their member, so `DLB(T=3, backward="split")` works."""
        super().__init__()
        cfg = self.Config(**options)  # a TypeError names an unknown option
        types = typing.get_type_hints(self.Config)
        for f in dataclasses.fields(cfg):
            if f.name != "name":
                setattr(self, f.name, _coerce(getattr(cfg, f.name), types[f.name]))

    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        """Raise dlb.errors.ConfigError for out-of-range values (those outside `Config.ranges`; a method with other
        checks adds them after super().validate_config). Types are already checked by the schema."""
        for key, bound in getattr(cls.Config, "ranges", {}).items():
            if not _meets(cfg[key], bound):
                raise ConfigError(f"method.{key}={cfg[key]}: must be {bound} (default {getattr(cls.Config, key)})")

    @classmethod
    def rules_out(cls, cfg: Any) -> dict[str, tuple[str, Any, str]]:
        """The device features this configuration of the method cannot run with: {feature: (config key, value,
        why and the fix)}, read by config.validate (which refuses them) and by speed resolution (which avoids them).
        Features: "cuda_graphs" (trainer.compile=reduce-overhead), "ddp" (trainer.ddp=true)."""
        return {}

    def training_step(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return (logits of the batch's first len(logits) rows, {term name: weighted loss term}).

        The trainer backpropagates the sum of the terms and measures training accuracy on those logits. It calls
        this under bf16 autocast when trainer.precision=bf16: take log-probabilities from log_probs (fp32) and
        softmax targets of .float() logits, since CPU autocast would compute them in bf16 (cross_entropy and kl_div
        it runs in fp32 itself)."""
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


def _meets(value: float, bound: str) -> bool:
    """Whether `value` meets a Config.ranges bound: "> x", ">= x" or "in" an interval ("[": the end included)."""
    parts = re.fullmatch(r"(>=?) (\S+)|in ([\[(])(\S+), (\S+)([\])])", bound)
    if parts is None:
        raise ValueError(f"Config.ranges bound {bound!r}: write '> x', '>= x' or an interval such as 'in [0, 1)'")
    op, limit, left, low, high, right = parts.groups()
    if op:
        return value > float(limit) if op == ">" else value >= float(limit)
    low, high = float(low), float(high)
    return (low <= value if left == "[" else low < value) and (value <= high if right == "]" else value < high)


def _coerce(value: Any, kind: Any) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(kind, type) and issubclass(kind, enum.Enum) and not isinstance(value, kind):
        return kind(value)  # ValueError for a value that is not one of its members
    return value


def ordered(names) -> list[str]:
    """Method names in table order (`Method.order`, then name); names not registered last, by name."""
    return sorted(names, key=lambda n: (n not in METHODS, METHODS[n].order if n in METHODS else 0, n))


def label(name: str) -> str:
    """A method's display name in tables and figures (`Method.label`); an unregistered name as it is."""
    return METHODS[name].label if name in METHODS else name


def comparisons() -> list[tuple[str, str]]:
    """(base, method) pairs the report computes base - method error for, from each method's `compared_with`: in the
    table order of the method, then its `compared_with` order."""
    return [(base, name) for name in ordered(METHODS) for base in METHODS[name].compared_with]


def mixed_ce(logits: torch.Tensor, y: torch.Tensor, y_mix: torch.Tensor | None = None,
             lam: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (mean or sum over the batch) to hard labels, or to lam*y + (1-lam)*y_mix per sample when the
    batch was CutMix-ed."""
    if y_mix is None:
        return F.cross_entropy(logits, y, reduction=reduction)
    ce, ce_mix = (F.cross_entropy(logits, target, reduction="none") for target in (y, y_mix))
    per_sample = lam * ce + (1 - lam) * ce_mix
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


def log_probs(logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """log softmax(z / T) over the classes, in fp32 also under bf16 autocast (CPU autocast would compute it in bf16).
    Every soft loss takes the student's log-probabilities from here; in fp32 it is F.log_softmax(z / T) bit for bit."""
    z = logits.float()
    return F.log_softmax(z if T == 1 else z / T, dim=1)


def soft_target_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-sum_k t_k log softmax(z)_k, mean over the batch (the official LSR and PS-KD losses)."""
    return -(targets * log_probs(logits)).sum(1).mean()


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
    """Instantiate the method named by method_cfg.name with its other fields as keyword arguments (the one factory);
    `context` (num_classes, train_size, run_cfg, ...) goes to methods whose constructor asks for it."""
    cls = METHODS[method_cfg.name]
    kwargs = {k: v for k, v in dict(method_cfg).items() if k != "name"}
    accepted = inspect.signature(cls.__init__).parameters
    kwargs.update({k: v for k, v in context.items() if k in accepted})
    return cls(**kwargs)
