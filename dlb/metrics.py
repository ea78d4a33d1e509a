"""Evaluation metrics: top-1 accuracy/error, NLL and expected calibration error (15 equal-width bins)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from dlb.device import distributed


@dataclass(frozen=True)
class EvalOutputs:
    """What evaluate() collects over the whole test set (under DDP: every rank's shard), for the metrics to read."""
    logits: torch.Tensor  # (N, K) float32
    labels: torch.Tensor  # (N,)
    confidence: torch.Tensor  # (N,) the top softmax probability
    correct: torch.Tensor  # (N,) bool: the top class is the label
    nll_sum: float  # cross-entropy summed over the test set (in batch sums, as the batches were evaluated)
    n: int


@dataclass(frozen=True)
class Metric:
    """A test-set metric: `test_<name>` in every epoch's metrics row and in W&B, `last_test_<name>` in summary.json,
    a column of the report. Declared once, in METRICS (docs/extending.md, "Adding a metric")."""
    name: str
    label: str  # how tables name it
    lower_is_better: bool
    of: Callable[[EvalOutputs], float]  # its value on the test set's outputs


def accuracy(o: EvalOutputs) -> float:
    return float(o.correct.float().mean()) * 100


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> float:
    """sum_b |B_b|/N * |acc(B_b) - conf(B_b)| over equal-width confidence bins (Guo et al. 2017)."""
    edges = torch.linspace(0, 1, bins + 1, device=confidence.device)
    which = torch.bucketize(confidence, edges[1:-1])  # bin b holds (edges[b], edges[b+1]]
    conf_sum = torch.bincount(which, weights=confidence.float(), minlength=bins)
    acc_sum = torch.bincount(which, weights=correct.float(), minlength=bins)
    return float((conf_sum - acc_sum).abs().sum() / confidence.numel())


METRICS = (Metric("acc", "accuracy (%)", False, accuracy),
           Metric("err", "error (%)", True, lambda o: 100 - accuracy(o)),
           Metric("nll", "NLL", True, lambda o: o.nll_sum / o.n),
           Metric("ece", "ECE", True, lambda o: expected_calibration_error(o.confidence, o.correct)))


@torch.no_grad()
def evaluate(model, loader, limit_batches: int | None = None, autocast=None) -> dict:
    """{test_<name>: value} for every metric in METRICS, and test_n, of `model` over `loader` (Batch objects)."""
    model.eval()
    nll_sum, n, parts = 0.0, 0, ([], [], [], [])  # EvalOutputs' logits, labels, confidence, correct
    for step, batch in enumerate(loader):
        if limit_batches is not None and step >= limit_batches:
            break
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            logits = model(batch.views[0]).float()
        nll_sum = nll_sum + F.cross_entropy(logits, batch.y, reduction="sum")
        conf, pred = logits.softmax(1).max(1)
        for part, x in zip(parts, (logits, batch.y, conf, pred == batch.y)):
            part.append(x)
        n += batch.y.numel()
    if distributed.active():  # DDP: each rank evaluated a shard of the test set; every rank gets them all
        gathered = [None] * distributed.dist.get_world_size()
        mine = ([torch.cat(p).cpu() if p else None for p in parts], float(nll_sum), n)
        distributed.dist.all_gather_object(gathered, mine)
        parts = [[g[0][i] for g in gathered if g[0][i] is not None] for i in range(len(parts))]
        nll_sum, n = sum(g[1] for g in gathered), sum(g[2] for g in gathered)  # (in rank order)
    outputs = EvalOutputs(*(torch.cat(p) for p in parts), nll_sum=float(nll_sum), n=n)
    return {**{f"test_{m.name}": m.of(outputs) for m in METRICS}, "test_n": n}
