"""Evaluation metrics: top-1 accuracy/error, NLL and expected calibration error (15 equal-width bins)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
    conf, correct = torch.cat(confs), torch.cat(corrects)
    acc = float(correct.float().mean()) * 100
    return {"test_acc": acc, "test_err": 100 - acc, "test_nll": float(nll_sum) / n,
            "test_ece": expected_calibration_error(conf, correct), "test_n": n}
