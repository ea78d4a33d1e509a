"""Data loading: a device-resident loader (the default) and the classic PIL/DataLoader pipeline for comparison.

DeviceLoader builds each batch from the whole uint8 dataset on the device in a few batched tensor ops, since per-image
PIL work in worker processes is the bottleneck of small-network training on CIFAR-sized data. All its randomness is a
pure function of (seed, epoch, step), so a run resumes mid-epoch (iter_from) with the exact batches it would have seen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dlb.choice import Augment, LoaderKind
from dlb.device.distributed import shard

if TYPE_CHECKING:
    from dlb.data.datasets import ArrayDataset


@dataclass
class Batch:
    views: list[torch.Tensor]  # num_views float tensors (B,3,S,S), augmented independently, normalised
    y: torch.Tensor  # int64 (B,)
    idx: torch.Tensor | None = None  # int64 (B,), dataset row indices (None in a user's own loop)
    # CutMix: the target is lam * onehot(y) + (1 - lam) * onehot(y_mix), per sample; None when not mixed.
    y_mix: torch.Tensor | None = None  # int64 (B,)
    lam: torch.Tensor | None = None  # float (B,)


def mix_seed(*xs: int) -> int:
    """Hash a tuple of non-negative ints into one 64-bit seed (SeedSequence: well mixed, no collisions
    between nearby tuples).  Callers keep tuple lengths fixed per use so different uses cannot alias."""
    return int(np.random.SeedSequence(list(xs)).generate_state(1, np.uint64)[0])


def _perm_seed(seed: int, epoch: int) -> int:
    return mix_seed(seed, epoch, 0, 0)  # tag 0: epoch order


def _aug_seed(seed: int, epoch: int, step: int, rank: int = 0, world: int = 1, batch_level: bool = False) -> int:
    """Tag 1: the per-image augmentation of a batch; tag 2: the batch-level one, a stream of its own so adding
    CutOut/CutMix leaves the crops unchanged. Under DDP tags 3 and 4: each rank its own stream (step * world + rank
    is distinct per (step, rank))."""
    if world > 1:
        return mix_seed(seed, epoch, 3 + batch_level, step * world + rank)
    return mix_seed(seed, epoch, 1 + batch_level, step)


# Batched augmentation: *_params sample the per-sample parameters (exposed so tests can recompute them), the appliers
# consume them. Draw order within a view is fixed, so results depend only on the generator.
def crop_flip_params(n: int, h: int, w: int, crop: int, padding: int, g: torch.Generator, device):
    """RandomCrop(crop, padding) + RandomHorizontalFlip: offsets uniform in [0, H+2p-crop] of the padded
    image (torchvision semantics), flip with p=0.5.  Returns (dy, dx, flip), each (n,)."""
    dy, dx = (torch.randint(0, size + 2 * padding - crop + 1, (n,), generator=g, device=device) for size in (h, w))
    return dy, dx, torch.rand(n, generator=g, device=device) < 0.5


def apply_crop_flip(x: torch.Tensor, dy, dx, flip, crop: int, padding: int) -> torch.Tensor:
    """Crop every sample at its own offset in one gather: pad once, then index with per-sample row/col
    grids; the flip is folded into the column grid (reversed columns), so it costs nothing extra."""
    xp = F.pad(x, (padding,) * 4) if padding else x
    ar = torch.arange(crop, device=x.device)
    rows = dy[:, None] + ar  # (n, crop)
    cols = dx[:, None] + torch.where(flip[:, None], ar.flip(0), ar)
    n_idx = torch.arange(x.shape[0], device=x.device)[:, None, None, None]
    c_idx = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return xp[n_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]


def rrc_params(n: int, h: int, w: int, g: torch.Generator, device, scale=(0.08, 1.0),
               ratio=(3 / 4, 4 / 3), tries: int = 10):
    """RandomResizedCrop.get_params batched: draw `tries` (scale, log-ratio) candidates per sample at once,
    keep the first that fits, else torchvision's fallback (whole image, ratio clamped, centred).
    Returns integer boxes (top, left, height, width) and flip, each (n,)."""
    area = h * w
    s = torch.empty(n, tries, device=device).uniform_(scale[0], scale[1], generator=g)
    ar = torch.exp(torch.empty(n, tries, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g))
    cw = torch.round(torch.sqrt(area * s * ar))
    ch = torch.round(torch.sqrt(area * s / ar))
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first, any_ok = ok.to(torch.uint8).argmax(1, keepdim=True), ok.any(1)  # argmax: the first maximal index
    # Fallback box: python scalars, identical for every sample (depends only on the image shape).
    fw = int(round(h * max(ratio))) if w / h > max(ratio) else w
    fh = int(round(w / min(ratio))) if w / h < min(ratio) else h
    bh = torch.where(any_ok, ch.gather(1, first).squeeze(1), float(fh))
    bw = torch.where(any_ok, cw.gather(1, first).squeeze(1), float(fw))
    # randint(0, H-h+1) per sample with a per-sample bound: floor(U * (H-h+1)).
    u = torch.rand(2, n, generator=g, device=device)
    top = torch.where(any_ok, torch.floor(u[0] * (h - bh + 1)), float((h - fh) // 2))
    left = torch.where(any_ok, torch.floor(u[1] * (w - bw + 1)), float((w - fw) // 2))
    flip = torch.rand(n, generator=g, device=device) < 0.5
    return top.long(), left.long(), bh.long(), bw.long(), flip


def apply_rrc_flip(x: torch.Tensor, top, left, bh, bw, flip, size: int) -> torch.Tensor:
    """Crop + bilinear resize of the whole batch in one roi_align call.  With aligned=True the sampling
    grid matches F.interpolate(align_corners=False); adaptive sampling (ceil(box/size) points per bin,
    averaged) acts as an antialias filter when downscaling.  Returns float in [0,255]."""
    from torchvision.ops import roi_align

    boxes = torch.stack([torch.arange(x.shape[0], device=x.device), left, top, left + bw, top + bh], 1).float()
    out = roi_align(x.float(), boxes, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def rotation_params(n: int, degrees: float, g: torch.Generator, device) -> torch.Tensor:
    """RandomRotation(degrees).get_params per sample: angles (degrees) uniform in [-degrees, degrees], float32."""
    return torch.empty(n, device=device).uniform_(-degrees, degrees, generator=g)


def apply_rotation(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate each image counter-clockwise by its angle about the image centre, nearest neighbour, zero outside:
    torchvision's RandomRotation on a PIL image, i.e. PIL's Image.rotate, pixel for pixel. PIL maps every output
    pixel back to the input with the inverse rotation in 16.16 fixed point (the NEAREST affine transform of its
    Geometry.c: input column = (A2 + x*A0 + y*A1) >> 16, row alike), which is computed here for the whole batch
    and applied as one gather. Any dtype (uint8 crops, float random-resized crops)."""
    (n, c, h, w), dev = x.shape, x.device
    # PIL Image.rotate: the angle modulo 360, negated, in radians; the inverse matrix (a b c; d e f) about (w/2, h/2)
    r = -(torch.remainder(angle.to(torch.float64), 360.0) * (math.pi / 180.0))
    a, b = torch.cos(r), torch.sin(r)
    d, e = -b, a
    cx, cy = w / 2, h / 2
    c0 = a * -cx + b * -cy + cx
    f0 = d * -cx + e * -cy + cy

    def fix(v):  # 16.16 fixed point, rounded as PIL's FIX: floor(v * 65536 + 0.5)
        return torch.floor(v * 65536.0 + 0.5).to(torch.int64)[:, None, None]

    # sampled at pixel centres: the +0.5 terms
    a0, a1, a3, a4, a2, a5 = fix(a), fix(b), fix(d), fix(e), fix(c0 + b * 0.5 + a * 0.5), fix(f0 + e * 0.5 + d * 0.5)
    xs = torch.arange(w, device=dev)[None, None, :]
    ys = torch.arange(h, device=dev)[None, :, None]
    col = (a2 + xs * a0 + ys * a1) >> 16  # (n, h, w); >> floors, as in C on the negative values too
    row = (a5 + xs * a3 + ys * a4) >> 16
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    src = (row.clamp(0, h - 1) * w + col.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    out = x.reshape(n, c, h * w).gather(2, src).view(n, c, h, w)
    return torch.where(inside[:, None], out, torch.zeros((), dtype=x.dtype, device=dev))


class DeviceLoader:
    """Whole dataset held as uint8 on `device`; batches are drawn, augmented and normalised there.

    batch_order(epoch, g) -> index batches (list of 1-D tensors or a 2-D tensor, one row per batch) replaces
    the shuffled order; `g` is seeded from (seed, epoch) and lives on the loader's device, so draw with device=g.device.

    batch_augment(batch, seed) -> batch (dlb.data.augment.build) runs on each finished training batch; `seed` is a
    function of (seed, epoch, step).  Ignored when train=False.

    rank, world_size (DDP): every rank builds the same epoch order and keeps its shard (dlb.device.distributed.shard);
    a plain shuffled training epoch is cut into global batches of world_size x batch_size first."""

    def __init__(self, ds: "ArrayDataset", *, batch_size: int, train: bool, device, seed: int = 0, num_views: int = 1,
                 augment: str = "crop_flip", crop_size: int = 32, padding: int = 4, rotation: float = 0.0,
                 shuffle: bool | None = None, drop_last: bool = False, channels_last: bool = False,
                 batch_order: Callable[[int, torch.Generator], Sequence[torch.Tensor] | torch.Tensor] | None = None,
                 batch_augment: Callable[[Batch, int], Batch] | None = None, rank: int = 0, world_size: int = 1):
        augment = Augment(augment)  # ValueError for an unknown one
        self.device, self.rank, self.world_size = torch.device(device), rank, world_size
        self.batch_size, self.train, self.seed, self.num_views = batch_size, train, seed, num_views
        self.augment, self.rotation = (augment, rotation) if train else ("none", 0.0)
        self.batch_augment = batch_augment if train else None
        self.crop_size, self.padding, self.drop_last, self.channels_last = crop_size, padding, drop_last, channels_last
        self.shuffle, self.batch_order = train if shuffle is None else shuffle, batch_order
        images = ds.images.to(self.device)
        # Unaugmented views must already have the training resolution: resize once, not every batch, as torchvision's
        # Resize on uint8 (bilinear + antialias in float, rounded back), in chunks that keep the float copy small.
        if self.augment == "none" and images.shape[-2:] != (crop_size, crop_size):
            images = torch.cat([F.interpolate(c.float(), size=(crop_size, crop_size), mode="bilinear", antialias=True)
                                .round_().clamp_(0, 255).to(torch.uint8) for c in images.split(1024)])
        self.images, self.labels = images, ds.labels.to(self.device)
        # (x/255 - mean)/std == x*scale + shift: one fused multiply-add per batch.
        std, mean = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in (ds.std, ds.mean))
        self.scale, self.shift = (1 / (255 * std)).to(self.device), (-mean / std).to(self.device)
        self.gen = torch.Generator(device=self.device)
        self.epoch = 0
        self._batches_cache: tuple[int, list[torch.Tensor]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[torch.Tensor]:
        """Index batches of the current epoch (cached: len() and iteration must agree and not redo work)."""
        if self._batches_cache is not None and self._batches_cache[0] == self.epoch:
            return self._batches_cache[1]
        self.gen.manual_seed(_perm_seed(self.seed, self.epoch))
        if self.batch_order is not None:
            batches = [t.to(self.device, torch.long) for t in self.batch_order(self.epoch, self.gen)]  # rows of 2-D
        else:
            n, dev = len(self.labels), self.device
            order = torch.randperm(n, generator=self.gen, device=dev) if self.shuffle else torch.arange(n, device=dev)
            size = self.batch_size * (self.world_size if self.train else 1)  # DDP: global batches, sharded below
            batches = list(order.split(size))
            if self.drop_last and batches and len(batches[-1]) < size:
                batches.pop()  # sizes are shape metadata: no device sync
        if self.world_size > 1:
            batches = shard(batches, self.rank, self.world_size, train=self.train,
                            global_batches=self.batch_order is None)
        self._batches_cache = (self.epoch, batches)
        return batches

    def __len__(self) -> int:
        return len(self._batches())

    def _normalised_view(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        g, dev, s = self.gen, self.device, self.crop_size
        if self.augment == "crop_flip":
            x = apply_crop_flip(x, *crop_flip_params(n, h, w, s, self.padding, g, dev), s, self.padding)
        elif self.augment == "rrc_flip":
            x = apply_rrc_flip(x, *rrc_params(n, h, w, g, dev), s)
        if self.rotation:  # after the crop and flip, as in Tf-KD's transform
            x = apply_rotation(x, rotation_params(n, self.rotation, g, dev))
        x = torch.addcmul(self.shift, x.float(), self.scale)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def make_batch(self, epoch: int, step: int, idx: torch.Tensor) -> Batch:
        # Re-seeding a device generator is host-side bookkeeping (no sync); views draw sequentially from
        # it, so they get independent parameters.
        self.gen.manual_seed(_aug_seed(self.seed, epoch, step, self.rank, self.world_size))
        x = self.images.index_select(0, idx)
        views = [self._normalised_view(x) for _ in range(self.num_views)]
        batch = Batch(views, self.labels.index_select(0, idx), idx)
        if self.batch_augment is not None:  # after normalisation: CutOut's hole is 0 in normalised space
            batch = self.batch_augment(batch, _aug_seed(self.seed, epoch, step, self.rank, self.world_size, True))
        return batch

    def iter_from(self, step: int):
        # Epoch and order are fixed when called, so a later set_epoch cannot mix epochs within one pass.
        epoch, batches = self.epoch, self._batches()
        return (self.make_batch(epoch, k, batches[k]) for k in range(step, len(batches)))

    def __iter__(self):
        return self.iter_from(0)


class _PILDataset(torch.utils.data.Dataset):
    """Row i -> PIL image -> transforms, num_views times independently (the official DLB pipeline)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform, num_views: int):
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()  # HWC uint8, as PIL wants
        self.labels, self.transform, self.num_views = labels, transform, num_views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i])
        return (*[self.transform(img) for _ in range(self.num_views)], self.labels[i], i)


class TorchLoader:
    """torchvision transforms on PIL images in DataLoader workers (the official DLB code's pipeline), for
    comparison.  The epoch order is a function of (seed, epoch); augmentation draws come from worker RNGs, which
    DataLoader seeds once from the loader generator (persistent workers), so they reproduce only for a run from
    epoch 0 with the same num_workers (and not at all with num_workers=0, which uses the global RNG)."""

    def __init__(self, ds: "ArrayDataset", *, batch_size: int, train: bool, device, seed: int = 0,
                 num_views: int = 1, augment: str = "crop_flip", crop_size: int = 32, padding: int = 4,
                 rotation: float = 0.0, num_workers: int = 2, shuffle: bool | None = None, drop_last: bool = False,
                 channels_last: bool = False, batch_augment: Callable[[Batch, int], Batch] | None = None):
        from torchvision import transforms as T

        augment = Augment(augment)  # ValueError for an unknown one
        self.device, self.seed, self.channels_last = torch.device(device), seed, channels_last
        self.batch_augment = batch_augment if train else None
        aug = {"crop_flip": [T.RandomCrop(crop_size, padding=padding), T.RandomHorizontalFlip()],
               "rrc_flip": [T.RandomResizedCrop(crop_size), T.RandomHorizontalFlip()],
               "none": [T.Resize(crop_size)] if ds.images.shape[-1] != crop_size else []}[augment if train else "none"]
        if rotation and train:
            aug.append(T.RandomRotation(rotation))  # Tf-KD: RandomCrop, RandomHorizontalFlip, RandomRotation
        tf = T.Compose(aug + [T.ToTensor(), T.Normalize(ds.mean, ds.std)])
        self.gen = torch.Generator()
        self.set_epoch(0)
        self.dl = torch.utils.data.DataLoader(
            _PILDataset(ds.images.cpu(), ds.labels.cpu(), tf, num_views), batch_size=batch_size,
            shuffle=train if shuffle is None else shuffle, drop_last=drop_last, num_workers=num_workers,
            generator=self.gen, pin_memory=self.device.type == "cuda", persistent_workers=num_workers > 0)

    def set_epoch(self, epoch: int) -> None:
        # The sampler draws its permutation seed from this generator when each epoch's iterator starts.
        self.epoch = epoch
        self.gen.manual_seed(_perm_seed(self.seed, epoch))

    def __len__(self) -> int:
        return len(self.dl)

    def _to(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def __iter__(self):
        epoch = self.epoch
        for step, (*views, y, idx) in enumerate(self.dl):
            batch = Batch([self._to(v) for v in views], self._to(y), self._to(idx))
            if self.batch_augment is not None:
                batch = self.batch_augment(batch, _aug_seed(self.seed, epoch, step, batch_level=True))
            yield batch

    def iter_from(self, step: int):
        raise NotImplementedError("TorchLoader cannot resume mid-epoch (worker RNG state is not a function "
                                  "of the step); use DeviceLoader (kind='device') for exact resume")


def make_loader(ds: "ArrayDataset", *, kind: str = "device", **kw):
    loaders = {"device": DeviceLoader, "torch": TorchLoader}
    if kind not in loaders:
        raise ValueError(f"unknown loader kind {kind!r}; valid kinds: {', '.join(LoaderKind)}")
    return loaders[kind](ds, **kw)
