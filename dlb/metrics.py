"""Evaluation metrics: top-1 accuracy/error, NLL and expected calibration error (15 equal-width bins)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Metric:
    """A test-set metric: `test_<name>` in every epoch's metrics row and in W&B, `last_test_<name>` in summary.json,
    a column of the report. Declared once, here (README, "Extending": a metric)."""
    name: str
    label: str  # how tables name it
    lower_is_better: bool


METRICS = (Metric("acc", "accuracy (%)", False), Metric("err", "error (%)", True), Metric("nll", "NLL", True),
           Metric("ece", "ECE", True))


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> float:
    """sum_b |B_b|/N * |acc(B_b) - conf(B_b)| over equal-width confidence bins (Guo et al. 2017)."""
    edges = torch.linspace(0, 1, bins + 1, device=confidence.device)
    which = torch.bucketize(confidence, edges[1:-1])  # bin b holds (edges[b], edges[b+1]]
    n = torch.bincount(which, minlength=bins).float()
    conf_sum = torch.bincount(which, weights=confidence.float(), minlength=bins)
    acc_sum = torch.bincount(which, weights=correct.float(), minlength=bins)
    return float((conf_sum - acc_sum).abs().sum() / confidence.numel())


@torch.no_grad()
def evaluate(model, loader, limit_batches: int | None = None, autocast=None) -> dict:
    """Test metrics of `model` over `loader` (Batch objects). One host sync at the end."""
    model.eval()
    nll_sum, confs, corrects = 0.0, [], []
    n = 0
    for step, batch in enumerate(loader):
        if limit_batches is not None and step >= limit_batches:
            break
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            logits = model(batch.views[0])
        logits = logits.float()
        nll_sum = nll_sum + F.cross_entropy(logits, batch.y, reduction="sum")
        conf, pred = logits.softmax(1).max(1)
        confs.append(conf)
        corrects.append(pred == batch.y)
        n += batch.y.numel()
    from dlb.device import distributed

    if distributed.active():  # DDP: each rank evaluated a shard of the test set
        return _reduced_metrics(confs, corrects, nll_sum, n, getattr(loader, "device", "cpu"))
    conf, correct = torch.cat(confs), torch.cat(corrects)
    acc = float(correct.float().mean()) * 100
    return {"test_acc": acc, "test_err": 100 - acc, "test_nll": float(nll_sum) / n,
            "test_ece": expected_calibration_error(conf, correct), "test_n": n}


def _reduced_metrics(confs: list, corrects: list, nll_sum, n: int, device, bins: int = 15) -> dict:
    """evaluate()'s metrics over the union of the ranks' shards: the count, correct count, NLL sum and the calibration
    bins' sums are summed over ranks in float64 in one all_reduce, then the same formulas as one process."""
    from dlb.device.distributed import all_reduce_sum

    conf = torch.cat(confs) if confs else torch.zeros(0, device=device)  # a rank may hold no eval batch
    correct = torch.cat(corrects) if corrects else torch.zeros(0, dtype=torch.bool, device=device)
    edges = torch.linspace(0, 1, bins + 1, device=conf.device)
    which = torch.bucketize(conf, edges[1:-1])
    head = torch.stack([torch.tensor(float(n), device=conf.device), correct.sum().double(),
                        torch.as_tensor(nll_sum, device=conf.device).double()])
    stats = all_reduce_sum(torch.cat([head.double(), torch.bincount(which, weights=conf.double(), minlength=bins),
                                      torch.bincount(which, weights=correct.double(), minlength=bins)]))
    total, n_correct, nll = stats[:3].tolist()
    ece = float((stats[3:3 + bins] - stats[3 + bins:]).abs().sum()) / total
    acc = 100 * n_correct / total
    return {"test_acc": acc, "test_err": 100 - acc, "test_nll": nll / total, "test_ece": ece, "test_n": int(total)}
