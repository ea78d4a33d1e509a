"""Tests for dlb/data/loader.py.  `PYTHONPATH=. python tests/test_loader.py` prints a throughput comparison."""
from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from dlb.data import augment as A
from dlb.data import loader as L

try:
    from dlb.data.datasets import ArrayDataset
except ImportError:  # stand-in with the same fields until dlb/data/datasets.py lands

    @dataclass
    class ArrayDataset:
        images: torch.Tensor
        labels: torch.Tensor
        num_classes: int
        mean: tuple
        std: tuple
        name: str
        classes: list | None = None

        def __len__(self):
            return len(self.labels)

        def subset(self, index):
            return ArrayDataset(self.images[index], self.labels[index], self.num_classes, self.mean, self.std,
                                self.name, self.classes)


MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_ds(n=200, size=32, seed=0, num_classes=10):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return ArrayDataset(images, labels, num_classes, MEAN, STD, "synthetic")


def denorm(x):
    """Back to [0,255] units (float) on CPU."""
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (x.float().cpu() * s + m) * 255


def norm(x):
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (x.float() / 255 - m) / s


def same_batches(a, b):
    return len(a) == len(b) and all(
        torch.equal(x.idx, y.idx) and all(torch.equal(u, v) for u, v in zip(x.views, y.views)) for x, y in zip(a, b))


@pytest.mark.parametrize("device", DEVICES)
def test_shapes_normalisation_labels(device):
    ds = make_ds(100)
    ds.images[7] = 128  # constant image
    dl = L.DeviceLoader(ds, batch_size=32, train=True, device=device, num_views=2, channels_last=True)
    seen = 0
    for b in dl:
        assert len(b.views) == 2
        for v in b.views:
            assert v.shape == (len(b.idx), 3, 32, 32) and v.dtype == torch.float32 and v.device.type == device
            assert v.is_contiguous(memory_format=torch.channels_last)
        assert b.y.dtype == b.idx.dtype == torch.int64 and b.y.device.type == device
        assert torch.equal(b.y.cpu(), ds.labels[b.idx.cpu()])
        seen += len(b.idx)
    assert seen == 100
    # Unaugmented: output is exactly the normalised rows; constant 128 -> (128/255 - mean)/std.
    b = next(iter(L.DeviceLoader(ds, batch_size=16, train=False, device=device)))
    torch.testing.assert_close(b.views[0].cpu(), norm(ds.images[:16]), atol=1e-5, rtol=0)
    expect = (128 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(b.views[0][7].cpu(), expect.view(3, 1, 1).expand(3, 32, 32), atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_crop_flip_matches_reference(device):
    ds = make_ds(64)
    seed, p = 3, 4
    dl = L.DeviceLoader(ds, batch_size=64, train=True, device=device, seed=seed, shuffle=False, padding=p)
    out = denorm(next(iter(dl)).views[0]).round().to(torch.uint8)
    # Recompute the sampled parameters exactly as the loader does for (seed, epoch 0, step 0, view 0).
    g = torch.Generator(device=device).manual_seed(L._aug_seed(seed, 0, 0))
    dy, dx, flip = (t.cpu() for t in L.crop_flip_params(64, 32, 32, 32, p, g, device))
    padded = F.pad(ds.images, (p,) * 4)
    for i in range(64):
        ref = padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        assert torch.equal(out[i], ref.flip(-1) if flip[i] else ref)
    # Independently of the internals: a few outputs are among the (2p+1)^2 * 2 candidate crops.
    for i in range(4):
        crops = [padded[i, :, y:y + 32, x:x + 32] for y in range(2 * p + 1) for x in range(2 * p + 1)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("augment,batch_augment", [("crop_flip", None), ("rrc_flip", None), ("none", None),
                                                   ("crop_flip", A.Cutout(16)), ("crop_flip", A.CutMix(prob=0.5))],
                         ids=["crop_flip", "rrc_flip", "none", "cutout", "cutmix"])
def test_no_host_sync_per_batch(augment, batch_augment):
    ds = make_ds(300, size=64 if augment == "rrc_flip" else 32)
    dl = L.DeviceLoader(ds, batch_size=64, train=True, device="cuda", augment=augment, num_views=2,
                        batch_augment=batch_augment)
    torch.cuda.set_sync_debug_mode("error")  # any device->host sync on the hot path raises
    try:
        for _ in dl:
            pass
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_crop_flip_param_distribution():
    g = torch.Generator().manual_seed(0)
    dy, dx, flip = L.crop_flip_params(20000, 32, 32, 32, 4, g, "cpu")
    assert dy.unique().tolist() == list(range(9)) and dx.unique().tolist() == list(range(9))
    assert abs(flip.float().mean().item() - 0.5) < 0.02


def test_rrc_boxes_and_output():
    g = torch.Generator().manual_seed(0)
    top, left, bh, bw, flip = L.rrc_params(20000, 64, 64, g, "cpu")
    assert (top >= 0).all() and (left >= 0).all() and (bh >= 1).all() and (bw >= 1).all()
    assert (top + bh <= 64).all() and (left + bw <= 64).all()
    frac = (bh * bw).float() / 64**2
    assert frac.min() < 0.1 and frac.max() > 0.9  # spans the (0.08, 1) scale range
    ratio = bw.float() / bh.float()
    assert ratio.min() < 0.8 and ratio.max() > 1.25
    assert abs(flip.float().mean().item() - 0.5) < 0.02
    # roi_align conventions: a box at the output size is an exact crop (+ flip), no interpolation shift.
    x = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    t, l = torch.arange(8) * 3, torch.arange(8) * 4
    f = torch.arange(8) % 2 == 1
    out = L.apply_rrc_flip(x, t, l, torch.full((8,), 32), torch.full((8,), 32), f, 32)
    for i in range(8):
        ref = x[i, :, t[i]:t[i] + 32, l[i]:l[i] + 32].float()
        torch.testing.assert_close(out[i], ref.flip(-1) if f[i] else ref, atol=1e-3, rtol=0)
    # Whole loader on 64x64 data trains at 32x32.
    dl = L.DeviceLoader(make_ds(50, size=64), batch_size=16, train=True, device="cpu", augment="rrc_flip",
                        num_views=2)
    b = next(iter(dl))
    assert b.views[0].shape == b.views[1].shape == (16, 3, 32, 32)
    assert not torch.equal(b.views[0], b.views[1])


def test_rrc_fallback():
    # Extreme ratios never fit a 64x4 image: every sample takes the centred, ratio-clamped fallback.
    g = torch.Generator().manual_seed(0)
    top, left, bh, bw, _ = L.rrc_params(100, 4, 64, g, "cpu", scale=(0.99, 1.0), ratio=(1.0, 1.0))
    assert (bh == 4).all() and (bw == 4).all() and (top == 0).all() and (left == 30).all()


def test_eval_resize_once():
    ds = make_ds(40, size=64)
    dl = L.DeviceLoader(ds, batch_size=40, train=False, device="cpu")
    assert dl.images.shape == (40, 3, 32, 32)  # resized at init and kept
    ref = F.interpolate(ds.images.float(), size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    out = denorm(next(iter(dl)).views[0])
    assert (out - ref).abs().max() <= 0.5 + 1e-3  # uint8 rounding, like torchvision Resize on uint8 tensors


def test_determinism_and_resume():
    ds = make_ds(200)
    kw = dict(batch_size=32, train=True, device="cpu", num_views=2)
    a = list(L.DeviceLoader(ds, seed=1, **kw))
    assert same_batches(a, list(L.DeviceLoader(ds, seed=1, **kw)))
    assert not torch.equal(a[0].idx, next(iter(L.DeviceLoader(ds, seed=2, **kw))).idx)
    dl = L.DeviceLoader(ds, seed=1, **kw)
    dl.set_epoch(1)
    e1 = list(dl)
    assert not torch.equal(a[0].idx, e1[0].idx) and not torch.equal(a[0].views[0], e1[0].views[0])
    assert same_batches(list(dl.iter_from(3)), e1[3:])  # mid-epoch resume reproduces the tail
    fresh = L.DeviceLoader(ds, seed=1, **kw)
    fresh.set_epoch(1)
    assert same_batches(list(fresh.iter_from(5)), e1[5:])
    assert all(not torch.equal(b.views[0], b.views[1]) for b in a)  # views draw independently
    # Same indices, different step -> different augmentation (seed mixes the step in).
    dl2 = L.DeviceLoader(ds, seed=1, batch_order=lambda e, g: [torch.arange(32)] * 2, **kw)
    b0, b1 = list(dl2)
    assert torch.equal(b0.idx, b1.idx) and not torch.equal(b0.views[0], b1.views[0])


def test_epoch_coverage_and_drop_last():
    ds = make_ds(1000)
    dl = L.DeviceLoader(ds, batch_size=64, train=True, device="cpu", augment="none")
    bs = list(dl)
    assert len(dl) == len(bs) == 16 and len(bs[-1].idx) == 1000 - 15 * 64
    idx = torch.cat([b.idx for b in bs])
    assert torch.equal(idx.sort().values, torch.arange(1000)) and not torch.equal(idx, torch.arange(1000))
    dl = L.DeviceLoader(ds, batch_size=64, train=True, device="cpu", augment="none", drop_last=True)
    bs = list(dl)
    assert len(dl) == len(bs) == 15 and all(len(b.idx) == 64 for b in bs)
    # Eval: sequential order.
    ev = L.DeviceLoader(ds, batch_size=300, train=False, device="cpu")
    assert torch.equal(torch.cat([b.idx for b in ev]), torch.arange(1000)) and len(ev) == 4


def test_batch_order_hook():
    ds = make_ds(100)
    calls = []

    def order(epoch, g):
        calls.append(epoch)
        assert isinstance(g, torch.Generator)
        first = torch.randperm(100, generator=g)[:4]
        return [first, torch.tensor([5, 5, 6, 6], dtype=torch.int32)]

    dl = L.DeviceLoader(ds, batch_size=4, train=True, device="cpu", batch_order=order, seed=7)
    dl.set_epoch(2)
    bs = list(dl)
    assert calls == [2] and len(dl) == 2
    assert torch.equal(bs[1].idx, torch.tensor([5, 5, 6, 6])) and bs[1].idx.dtype == torch.int64
    assert torch.equal(bs[1].y, ds.labels[bs[1].idx])
    assert torch.equal(bs[0].idx, next(iter(dl)).idx)  # generator seeded from (seed, epoch)
    # A 2-D tensor is split into rows.
    dl = L.DeviceLoader(ds, batch_size=4, train=True, device="cpu", batch_order=lambda e, g: torch.arange(12).view(3, 4))
    assert [b.idx.tolist() for b in dl] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_torch_loader_matches_device_loader():
    ds = make_ds(100)
    kw = dict(batch_size=32, train=True, device="cpu", augment="none", shuffle=False, num_views=2)
    dev = list(L.make_loader(ds, kind="device", **kw))
    tl = L.make_loader(ds, kind="torch", num_workers=0, **kw)
    tor = list(tl)
    assert len(tl) == len(tor) == len(dev) == 4
    for a, b in zip(dev, tor):
        assert torch.equal(a.idx, b.idx) and torch.equal(a.y, b.y) and b.y.dtype == torch.int64
        for u, v in zip(a.views, b.views):
            torch.testing.assert_close(u, v, atol=1e-5, rtol=0)
    with pytest.raises(NotImplementedError):
        tl.iter_from(1)
    with pytest.raises(ValueError, match="device"):
        L.make_loader(ds, kind="dali", **kw)


def test_torch_loader_augmented_workers():
    ds = make_ds(64)
    tl = L.TorchLoader(ds, batch_size=32, train=True, device="cpu", num_views=2, num_workers=2, seed=0)
    bs = list(tl)
    assert len(bs) == 2 and all(v.shape == (32, 3, 32, 32) for b in bs for v in b.views)
    idx = torch.cat([b.idx for b in bs])
    assert torch.equal(idx.sort().values, torch.arange(64))
    assert torch.equal(torch.cat([b.y for b in bs]), ds.labels[idx])
    assert not torch.equal(bs[0].views[0], bs[0].views[1])
    tl2 = L.TorchLoader(ds, batch_size=32, train=True, device="cpu", num_workers=0, seed=0)
    assert torch.equal(next(iter(tl2)).idx, bs[0].idx)  # epoch order depends only on (seed, epoch)


def benchmark(n=10_000, batch_size=64, num_views=2, device="cpu", epochs=3):
    """Images/s per epoch (each image yields num_views augmented views); median of `epochs` epochs because a
    shared machine makes single epochs noisy."""
    ds = make_ds(n, num_classes=100)
    for kind, kw in [("device", {}), ("torch", {"num_workers": 2})]:
        dl = L.make_loader(ds, kind=kind, batch_size=batch_size, train=True, device=device,
                           num_views=num_views, **kw)
        next(iter(dl))  # warm-up (worker start-up, allocator)
        rates = []
        for epoch in range(epochs):
            dl.set_epoch(epoch)
            t0 = time.perf_counter()
            seen = sum(len(b.idx) for b in dl)
            if device == "cuda":
                torch.cuda.synchronize()
            rates.append(seen / (time.perf_counter() - t0))
        print(f"{kind:6s} {sorted(rates)[len(rates) // 2]:9.0f} images/s median  "
              f"(per epoch: {', '.join(f'{r:.0f}' for r in rates)}; {n} images x {num_views} views, batch {batch_size})")


if __name__ == "__main__":
    benchmark(device="cuda" if torch.cuda.is_available() else "cpu")
