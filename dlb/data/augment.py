"""Batch-level augmentation (CutOut, CutMix), applied by the training loaders to the normalised device batch as
`aug(batch, seed) -> Batch`, the seed a function of (seed, epoch, step), so mid-epoch resume reproduces the batch.
Semantics, randomness and the DLB combination: docs/augment_and_noise.md."""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch

from dlb.choice import BatchAugment, CutMixViews
from dlb.data.loader import Batch


@functools.cache
def _generator(device: torch.device) -> torch.Generator:
    """One per device, re-seeded per batch: host-side bookkeeping, no sync."""
    return torch.Generator(device=device)


def cutout_params(n: int, h: int, w: int, g: torch.Generator, device):
    """Hole centres (cy, cx), each (n,), uniform over the image's pixels (official: np.random.randint(h))."""
    return tuple(torch.randint(0, size, (n,), generator=g, device=device) for size in (h, w))


def apply_cutout(x: torch.Tensor, cy, cx, size: int) -> torch.Tensor:
    """Zero rows [cy - size//2, cy - size//2 + size) x the same columns of each image, clipped at the borders (the
    official hole is one pixel short for odd sizes: docs/augment_and_noise.md)."""
    h, w = x.shape[-2:]
    # each pixel's offset into its image's hole, (n, h) and (n, w); clipping is implicit: rows outside don't exist
    rows = torch.arange(h, device=x.device) - (cy - size // 2)[:, None]
    cols = torch.arange(w, device=x.device) - (cx - size // 2)[:, None]
    hole = ((rows >= 0) & (rows < size))[:, None, :, None] & ((cols >= 0) & (cols < size))[:, None, None, :]
    return x.clone().masked_fill_(hole, 0.0)  # clone keeps the memory format (channels_last); masked_fill doesn't


@dataclasses.dataclass
class Cutout:
    """DeVries & Taylor's CutOut: one square hole of side `size` per image and view, zeroed after normalisation (as
    the official code: the hole is the dataset mean colour); labels are unchanged."""
    size: int

    def __call__(self, batch: Batch, seed: int) -> Batch:
        x = batch.views[0]
        g = _generator(x.device).manual_seed(seed)
        n, _, h, w = x.shape
        views = [apply_cutout(v, *cutout_params(n, h, w, g, v.device), self.size) for v in batch.views]
        return dataclasses.replace(batch, views=views)


def rand_bbox(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Official CutMix rand_bbox: side sqrt(1-lam) of the image's, centre uniform over the pixels, both half-sides
    cut//2, clipped to the image.  Returns (y1, y2, x1, x2) as python ints."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y1, y2 = min(max(cy - cut_h // 2, 0), h), min(max(cy + cut_h // 2, 0), h)
    x1, x2 = min(max(cx - cut_w // 2, 0), w), min(max(cx + cut_w // 2, 0), w)
    return y1, y2, x1, x2


class CutMix:
    """Yun et al.'s CutMix, as the official train.py: per batch with probability `prob`, the partner's (a random
    permutation's) box is pasted and the Batch gets y_mix = y[perm] and lam (B,), the exact unpasted fraction.
    views: "shared" (one draw for all views) or "independent" (per view: one-view batches only); paired_rows: CS-KD's
    [samples; partners] batches, row B + j mixed as row j. Details: docs/augment_and_noise.md."""

    def __init__(self, prob: float = 0.5, beta: float = 1.0, views: str = "shared", paired_rows: bool = False):
        self.prob, self.beta, self.paired_rows = float(prob), float(beta), bool(paired_rows)
        self.views = CutMixViews(views)  # ValueError for an unknown mode

    def draw(self, n: int, h: int, w: int, seed: int, device):
        """(lam, box, perm) for one batch, or None when the batch stays unmixed.  The host-side decisions come from
        a CPU generator (known without a device sync); the permutation is drawn on the device."""
        rng = np.random.default_rng(seed)
        if not rng.random() < self.prob:
            return None
        lam = float(rng.beta(self.beta, self.beta))
        y1, y2, x1, x2 = rand_bbox(h, w, lam, rng)
        g = _generator(torch.device(device)).manual_seed(seed)
        if self.paired_rows:
            if n % 2:
                raise ValueError(f"paired_rows CutMix needs [samples; partners] batches of even size, got {n} rows")
            half = torch.randperm(n // 2, generator=g, device=device)
            perm = torch.cat([half, half])  # partner j takes its patch from the same sample as sample j
        else:
            perm = torch.randperm(n, generator=g, device=device)
        return 1.0 - (y2 - y1) * (x2 - x1) / (h * w), (y1, y2, x1, x2), perm

    def __call__(self, batch: Batch, seed: int) -> Batch:
        if self.views == "independent" and len(batch.views) > 1:
            raise ValueError("CutMix views='independent' needs per-view targets, which a Batch cannot hold; "
                             "use views='shared' with several views")
        x = batch.views[0]
        n, _, h, w = x.shape
        mix = self.draw(n, h, w, seed, x.device)
        if mix is None:
            return batch
        lam, (y1, y2, x1, x2), perm = mix
        views = [v.clone() for v in batch.views]  # clones keep channels_last; the caller's tensors stay as they were
        for out, v in zip(views, batch.views):
            out[:, :, y1:y2, x1:x2] = v[perm, :, y1:y2, x1:x2]
        # lam is a python float: filling a device tensor with it needs no sync.
        return dataclasses.replace(batch, views=views, y_mix=batch.y[perm],
                                   lam=torch.full((n,), lam, dtype=torch.float32, device=x.device))


def build(cfg, paired_rows: bool = False) -> Cutout | CutMix | None:
    """The augmenter for an `augment` config group (None for augment=none); paired_rows: the method's
    Method.paired_rows (CS-KD)."""
    if cfg.name == "none":
        return None
    if cfg.name == "cutout":
        return Cutout(cfg.size)
    if cfg.name == "cutmix":
        return CutMix(cfg.prob, cfg.beta, cfg.views, paired_rows=paired_rows)
    raise ValueError(f"unknown augment {cfg.name!r}; use one of {', '.join(BatchAugment)}")
