"""Tests for dlb/data/augment.py (CutOut, CutMix on the device batch), its loader wiring and config checks."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import compose
from dlb.data import augment as A
from dlb.data import loader as L
from dlb.config import validate
from dlb.errors import ConfigError
from dlb.methods.base import mixed_ce
from dlb.train import load_config
from dlb.trainer import Trainer
from test_loader import DEVICES, make_ds, norm
from test_train import tiny_cfg


def const_batch(n=8, size=32, num_views=1, device="cpu"):
    """Image i is the constant i + 1 in every view (never 0, so holes and pasted regions are recognisable)."""
    x = (torch.arange(n, dtype=torch.float32, device=device) + 1).view(n, 1, 1, 1).expand(n, 3, size, size)
    return L.Batch([x.clone() for _ in range(num_views)], torch.arange(n, device=device) % 3,
                   torch.arange(n, device=device))


def hole_box(mask: torch.Tensor):
    """(rows, cols) of a 2-D boolean mask that must be one filled axis-aligned rectangle."""
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    assert torch.equal(rows, torch.arange(rows[0], rows[-1] + 1))
    assert torch.equal(cols, torch.arange(cols[0], cols[-1] + 1))
    rect = torch.zeros_like(mask)
    rect[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
    assert torch.equal(mask, rect)
    return rows, cols


# --------------------------------------------------------------------------------------------------------- CutOut


def test_cutout_one_clipped_hole_per_image_and_view():
    n, s, size = 64, 32, 16
    out = A.Cutout(size)(const_batch(n, s, num_views=2), seed=5)
    g = torch.Generator().manual_seed(5)
    for v, view in enumerate(out.views):
        cy, cx = A.cutout_params(n, s, s, g, "cpu")  # views draw in order from one generator
        for i in range(n):
            zero = view[i] == 0
            assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])  # all channels
            rows, cols = hole_box(zero[0])
            y0, x0 = int(cy[i]) - size // 2, int(cx[i]) - size // 2
            assert rows.tolist() == list(range(max(y0, 0), min(y0 + size, s)))  # side `size`, clipped at borders
            assert cols.tolist() == list(range(max(x0, 0), min(x0 + size, s)))
            assert (view[i][~zero] == i + 1).all()  # the rest untouched
    assert not torch.equal(out.views[0] == 0, out.views[1] == 0)  # each view its own hole
    assert out.y_mix is None and torch.equal(out.y, const_batch(n).y)


def test_cutout_positions_cover_the_image():
    g = torch.Generator().manual_seed(0)
    cy, cx = A.cutout_params(20000, 32, 32, g, "cpu")
    assert cy.unique().tolist() == list(range(32)) and cx.unique().tolist() == list(range(32))
    # Every pixel lies in some hole; border pixels less often than central ones (clipping).
    x = torch.ones(2000, 1, 32, 32)
    holes = (A.apply_cutout(x, cy[:2000], cx[:2000], 8) == 0).float().mean(0)[0]
    assert (holes > 0).all() and holes[0, 0] < holes[16, 16]


@pytest.mark.parametrize("device", DEVICES)
def test_cutout_in_loader_zeroes_normalised_pixels_only(device):
    ds = make_ds(64)
    kw = dict(batch_size=32, train=True, device=device, seed=3, num_views=2, channels_last=True)
    plain = list(L.DeviceLoader(ds, **kw))
    cut = list(L.DeviceLoader(ds, batch_augment=A.Cutout(8), **kw))
    for p, c in zip(plain, cut):
        assert torch.equal(p.idx, c.idx)
        for pv, cv in zip(p.views, c.views):
            assert cv.is_contiguous(memory_format=torch.channels_last)
            hole = (cv == 0) & (pv != 0)
            # Same crops as without CutOut (own random stream); only the hole changed, to 0 after normalisation.
            assert torch.equal(cv[~hole], pv[~hole]) and (hole.flatten(1).sum(1) == 3 * 8 * 8).sum() > 0
    # Eval loaders never augment.
    ev = next(iter(L.DeviceLoader(ds, batch_size=64, train=False, device=device, batch_augment=A.Cutout(8))))
    torch.testing.assert_close(ev.views[0].cpu(), norm(ds.images), atol=1e-5, rtol=0)


def test_batch_augment_is_a_pure_function_of_seed_epoch_step():
    ds = make_ds(96)
    for aug in (A.Cutout(8), A.CutMix(prob=1.0)):
        kw = dict(batch_size=32, train=True, device="cpu", seed=1, num_views=2, batch_augment=aug)
        dl = L.DeviceLoader(ds, **kw)
        dl.set_epoch(2)
        full = list(dl)
        fresh = L.DeviceLoader(ds, **kw)
        fresh.set_epoch(2)
        tail = list(fresh.iter_from(1))
        for a, b in zip(full[1:], tail):
            assert all(torch.equal(u, v) for u, v in zip(a.views, b.views))
            assert (a.y_mix is None) == (b.y_mix is None)
            assert a.y_mix is None or (torch.equal(a.y_mix, b.y_mix) and torch.equal(a.lam, b.lam))
    # Same rows at another step -> another hole.
    dl = L.DeviceLoader(ds, batch_size=32, train=True, device="cpu", augment="none",
                        batch_order=lambda e, g: [torch.arange(32)] * 2, batch_augment=A.Cutout(8))
    b0, b1 = list(dl)
    assert not torch.equal(b0.views[0] == 0, b1.views[0] == 0)


def test_torch_loader_applies_the_same_batch_augment():
    ds = make_ds(64)
    kw = dict(batch_size=32, train=True, device="cpu", augment="none", shuffle=False, num_views=2, seed=4)
    for aug in (A.Cutout(8), A.CutMix(prob=1.0)):
        dev = list(L.make_loader(ds, kind="device", batch_augment=aug, **kw))
        tor = list(L.make_loader(ds, kind="torch", num_workers=0, batch_augment=aug, **kw))
        for a, b in zip(dev, tor):
            assert torch.equal(a.y_mix, b.y_mix) if a.y_mix is not None else b.y_mix is None
            for u, v in zip(a.views, b.views):
                torch.testing.assert_close(u, v, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------------- CutMix


def test_cutmix_pastes_the_partners_box_and_mixes_labels_by_area():
    n, s = 16, 32
    batch = const_batch(n, s)
    mixed_any = 0
    for seed in range(20):
        out = A.CutMix(prob=1.0)(batch, seed)
        lam, (y1, y2, x1, x2), perm = A.CutMix(prob=1.0).draw(n, s, s, seed, "cpu")
        x = out.views[0][:, 0]
        # Inside the box every pixel is the partner's, outside the sample's own.
        box = torch.zeros(s, s, dtype=torch.bool)
        box[y1:y2, x1:x2] = True
        partner = perm + 1.0
        assert torch.equal(x[:, box], partner[:, None].expand(n, int(box.sum())))
        assert torch.equal(x[:, ~box], (torch.arange(n) + 1.0)[:, None].expand(n, int((~box).sum())))
        assert torch.equal(out.y_mix, batch.y[perm])
        # lam is exactly the unpasted fraction, the same for every sample.
        assert lam == 1 - (y2 - y1) * (x2 - x1) / (s * s)
        assert out.lam.dtype == torch.float32 and torch.equal(out.lam, torch.full((n,), lam))
        mixed_any += box.any().item()
    assert mixed_any > 10
    assert torch.equal(batch.views[0][:, 0, 0, 0], torch.arange(n) + 1.0)  # the input batch is left as it was


class FixedCentre:
    """Stands in for the numpy generator: rand_bbox's two integers() calls return cy, then cx."""

    def __init__(self, cy, cx):
        self.values = iter((cy, cx))

    def integers(self, high):
        return next(self.values)


def test_rand_bbox_matches_the_official_formula():
    for lam in (0.0, 0.3, 0.75, 1.0):
        cut = int(32 * math.sqrt(1 - lam))  # official: np.int(W * np.sqrt(1 - lam)), half-sides cut // 2
        for cy, cx in ((0, 0), (31, 31), (16, 5)):
            clip = lambda v: min(max(v, 0), 32)  # noqa: E731
            expect = (clip(cy - cut // 2), clip(cy + cut // 2), clip(cx - cut // 2), clip(cx + cut // 2))
            assert A.rand_bbox(32, 32, lam, FixedCentre(cy, cx)) == expect


def test_cutmix_probability_and_unmixed_batches():
    cm = A.CutMix(prob=0.5)
    draws = [cm.draw(8, 32, 32, seed, "cpu") for seed in range(2000)]
    frac = sum(d is not None for d in draws) / len(draws)
    assert abs(frac - 0.5) < 0.04
    lams = torch.tensor([d[0] for d in draws if d is not None])
    # Beta(1,1) is uniform, but clipping at the borders shrinks boxes: the exact lam averages ~0.7, not 0.5.
    assert lams.min() < 0.2 and lams.max() <= 1 and 0.6 < lams.mean() < 0.8
    unmixed = next(seed for seed, d in enumerate(draws) if d is None)
    batch = const_batch(8)
    out = cm(batch, unmixed)
    assert out.y_mix is None and out.lam is None and torch.equal(out.views[0], batch.views[0])
    assert all(A.CutMix(prob=0.0).draw(8, 32, 32, seed, "cpu") is None for seed in range(50))


def test_cutmix_shared_views_share_partner_box_and_lam():
    n = 16
    batch = const_batch(n, num_views=2)
    batch.views[1] = batch.views[1] + 100  # views differ, so each pixel says which view and which sample it came from
    out = A.CutMix(prob=1.0)(batch, seed=7)
    assert torch.equal(out.views[1] - 100, out.views[0])
    with pytest.raises(ValueError, match="shared"):
        A.CutMix(prob=1.0, views="independent")(batch, seed=7)
    one = A.CutMix(prob=1.0, views="independent")(const_batch(n), seed=7)  # one view: fine
    assert one.y_mix is not None


def test_cutmix_paired_rows_give_sample_and_partner_the_same_patch():
    """CS-KD's [B samples; B partners] batch: partner j gets sample j's source, box and second label, and the
    sources are samples (a partner's pixels never end up in another row)."""
    b = 8
    batch = const_batch(2 * b)
    batch.views[0][b:] += 100  # partner j is 100 + sample j's value, so each pixel names its row
    for seed in range(10):
        out = A.CutMix(prob=1.0, paired_rows=True)(batch, seed)
        _, (y1, y2, x1, x2), perm = A.CutMix(prob=1.0, paired_rows=True).draw(2 * b, 32, 32, seed, "cpu")
        assert torch.equal(perm[:b], perm[b:]) and bool((perm < b).all())
        assert sorted(perm[:b].tolist()) == list(range(b))  # a permutation of the samples
        x = out.views[0][:, 0]
        assert torch.equal(x[:b, y1:y2, x1:x2], x[b:, y1:y2, x1:x2])  # the same pasted patch
        assert bool((x[:, y1:y2, x1:x2] <= b).all())  # pasted from sample rows only
        assert torch.equal(out.y_mix[:b], out.y_mix[b:]) and torch.equal(out.lam[:b], out.lam[b:])
    with pytest.raises(ValueError, match="even"):
        A.CutMix(prob=1.0, paired_rows=True)(const_batch(7), seed=0)


def test_cskd_training_batches_are_mixed_in_pairs(fake_cifar, tmp_path):
    """The trainer hands CS-KD's paired_rows to CutMix: in its loader's batches partner j's second label is sample
    j's (with unpaired mixing they would agree only by chance, 1 in 10 per row here)."""
    trainer = Trainer(tiny_cfg(fake_cifar, "method=cskd", "augment=cutmix", "augment.prob=1.0"), tmp_path / "run")
    for batch in trainer.train_loader:
        b = batch.y.shape[0] // 2
        assert torch.equal(batch.y[:b], batch.y[b:])  # same-class partners
        assert torch.equal(batch.y_mix[:b], batch.y_mix[b:])


def test_mixed_ce_by_hand():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    y, y_mix, lam = torch.tensor([0, 2]), torch.tensor([1, 2]), torch.tensor([0.25, 0.75])
    logp = logits - logits.exp().sum(1, keepdim=True).log()
    by_hand = ((0.25 * -logp[0, 0] + 0.75 * -logp[0, 1]) + (0.75 * -logp[1, 2] + 0.25 * -logp[1, 2])) / 2
    torch.testing.assert_close(mixed_ce(logits, y, y_mix, lam), by_hand)
    torch.testing.assert_close(mixed_ce(logits, y), F.cross_entropy(logits, y))


# --------------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("dataset,size", [("cifar10", 16), ("cifar100", 8)])
def test_cutout_size_follows_the_dataset(dataset, size):
    cfg = compose([f"dataset={dataset}", "augment=cutout"])
    validate(cfg)
    assert cfg.augment.size == size and isinstance(A.build(cfg.augment), A.Cutout)
    cfg = compose(["augment=cutmix"])
    validate(cfg)
    assert (cfg.augment.prob, cfg.augment.beta, cfg.augment.views) == (0.5, 1.0, "shared")
    assert A.build(compose().augment) is None


@pytest.mark.parametrize("overrides,key", [
    (["augment.name=mixup"], "augment.name"), (["augment=cutout", "augment.size=0"], "augment.size"),
    (["augment=cutout", "augment.size=32"], "augment.size"), (["augment=cutmix", "augment.prob=1.5"], "augment.prob"),
    (["augment=cutmix", "augment.beta=0"], "augment.beta"), (["augment=cutmix", "augment.views=both"], "augment.views"),
    (["augment=cutmix", "augment.views=independent", "method=dlb"], "augment.views"),
])
def test_bad_augment_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides)  # the schema (a Choice) or validate


def test_independent_views_are_fine_for_one_view_methods():
    validate(compose(["augment=cutmix", "augment.views=independent", "method=ce"]))


# --------------------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("method", ["ce", "dlb"])
@pytest.mark.parametrize("augment", ["cutout", "cutmix"])
def test_one_epoch_with_batch_augment(fake_cifar, tmp_path, method, augment):
    extra = ["augment.prob=1.0"] if augment == "cutmix" else []  # every batch mixed: the mixed paths run
    out = tmp_path / "run"
    summary = Trainer(tiny_cfg(fake_cifar, f"method={method}", f"augment={augment}", *extra), out).fit()
    assert summary["status"] == "completed" and summary["steps"] == 6 and summary["augment"] == augment
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(row["train_loss"])
    if method == "dlb":
        assert row["train_kd"] > 0

