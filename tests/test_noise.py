"""Tests for dlb/data/noise.py (symmetric and asymmetric label noise) and how the trainer uses and records it."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import compose
from dlb.data import noise as N
from dlb.config import validate
from dlb.errors import ConfigError
from dlb.data.datasets import load_dataset
from dlb.train import load_config
from dlb.trainer import Trainer
from test_train import tiny_cfg


def labels(n=50_000, k=10, seed=0):
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


def test_symmetric_flips_to_another_class_at_the_rate():
    y = labels()
    noisy = N.noisy_labels(y, 10, "cifar10", "symmetric", 0.4, seed=0)
    # Every flip lands on another class (a flip to itself would show as a realised rate of 0.4 * 9/10).
    assert abs((noisy != y).float().mean().item() - 0.4) < 0.01
    # Flips spread uniformly over the 9 other classes.
    wrong = noisy[(y == 3) & (noisy != y)]
    freq = torch.bincount(wrong, minlength=10).float() / len(wrong)
    assert freq[3] == 0 and ((freq[torch.arange(10) != 3] - 1 / 9).abs() < 0.02).all()
    assert noisy.dtype == torch.int64 and noisy.shape == y.shape


def test_asymmetric_cifar10_follows_the_map():
    y = labels()
    noisy = N.noisy_labels(y, 10, "cifar10", "asymmetric", 0.4, seed=0)
    flipped = noisy != y
    expect = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}  # truck->automobile, bird->airplane, deer->horse, cat<->dog
    for c in range(10):
        rows = y == c
        if c in expect:
            assert (noisy[rows & flipped] == expect[c]).all()
            assert abs(flipped[rows].float().mean().item() - 0.4) < 0.02
        else:
            assert not flipped[rows].any()


def test_asymmetric_cifar100_stays_in_the_superclass_and_others_shift_by_one():
    target = N.asymmetric_map("cifar100", 100)
    coarse = torch.tensor(N.CIFAR100_COARSE)
    assert torch.equal(torch.bincount(coarse), torch.full((20,), 5))  # 20 superclasses of 5
    assert (target != torch.arange(100)).all() and torch.equal(coarse[target], coarse)
    # Aquatic mammals (beaver, dolphin, otter, seal, whale): one cycle in fine-label order.
    assert [int(target[c]) for c in (4, 30, 55, 72, 95)] == [30, 55, 72, 95, 4]
    c = 4
    for _ in range(5):  # each superclass is a single 5-cycle
        c = int(target[c])
    assert c == 4
    assert torch.equal(N.asymmetric_map("fashion_mnist", 10), (torch.arange(10) + 1) % 10)


def test_noise_is_a_pure_function_of_dataset_name_rate_seed():
    y = labels(5000)
    a = N.noisy_labels(y, 10, "cifar10", "symmetric", 0.4, seed=0)
    assert torch.equal(a, N.noisy_labels(y, 10, "cifar10", "symmetric", 0.40, seed=0))
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(a, N.noisy_labels(y, 10, "cifar10", "symmetric", 0.4, seed=0))
    for other in (("cifar10", "symmetric", 0.4, 1), ("fashion_mnist", "symmetric", 0.4, 0)):
        assert not torch.equal(a, N.noisy_labels(y, 10, *other))
    # A hash of the key, not Python's per-process hash(): a fixed value.
    assert N.noise_seed("cifar10", "symmetric", 0.4, 0) == N.noise_seed("cifar10", "symmetric", 0.4, 0)
    assert N.noise_seed("cifar10", "symmetric", 0.4, 0) < 2**63


def test_rate_zero_and_none_change_nothing():
    y = labels(1000)
    for name in ("symmetric", "asymmetric"):
        assert torch.equal(N.noisy_labels(y, 10, "cifar10", name, 0.0, seed=0), y)
    assert torch.equal(N.noisy_labels(y, 10, "cifar10", "none", 0.0, seed=0), y)


@pytest.mark.parametrize("overrides,key", [
    (["noise=symmetric", "noise.rate=1.0"], "noise.rate"), (["noise=symmetric", "noise.rate=-0.1"], "noise.rate"),
    (["noise.rate=0.3"], "noise.rate"), (["noise.name=pairflip"], "noise.name"), (["noise.seed=-1"], "noise.seed"),
])
def test_bad_noise_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides)  # the schema (a Choice) or validate


def test_noise_options_compose():
    for name, rate in (("symmetric", 0.2), ("asymmetric", 0.4)):
        cfg = compose([f"noise={name}"])
        validate(cfg)
        assert (cfg.noise.name, cfg.noise.rate, cfg.noise.seed) == (name, rate, 0)


# --------------------------------------------------------------------------------------------------------- trainer


def test_trainer_noise_ignores_run_seed_and_method_and_keeps_test_clean(fake_cifar, tmp_path):
    noise = ["noise=symmetric", "noise.rate=0.4"]
    a = Trainer(tiny_cfg(fake_cifar, "method=ce", "seed=0", *noise), tmp_path / "a")
    b = Trainer(tiny_cfg(fake_cifar, "method=dlb", "seed=5", *noise), tmp_path / "b")
    full = load_dataset("cifar10", str(fake_cifar), True)
    expect = N.noisy_labels(full.labels, 10, "cifar10", "symmetric", 0.4, seed=0)
    for t in (a, b):
        assert torch.equal(t.train_loader.labels.cpu(), expect)  # the loader trains on the noisy labels
        assert t.noise_rate_realised == (expect != full.labels).float().mean().item()
    test = load_dataset("cifar10", str(fake_cifar), False)
    assert torch.equal(a.test_loader.labels.cpu(), test.labels)
    # A subset takes the full set's noisy labels of its rows.
    c = Trainer(tiny_cfg(fake_cifar, "method=ce", "dataset.train_subset=50", *noise), tmp_path / "c")
    index = c.noise_record["index"]
    assert len(index) == 50 and torch.equal(c.train_loader.labels.cpu(), expect[index])
    assert torch.equal(c.noise_record["noisy_labels"], expect[index])
    assert c.noise_record["clean_sha256"] == N.labels_fingerprint(full.labels)
    # No noise: clean labels, nothing recorded.
    d = Trainer(tiny_cfg(fake_cifar, "method=ce"), tmp_path / "d")
    assert torch.equal(d.train_loader.labels.cpu(), full.labels) and d.noise_record is None


@pytest.mark.parametrize("method", ["ce", "dlb"])
def test_one_epoch_with_label_noise_records_it(fake_cifar, tmp_path, method):
    out = tmp_path / "run"
    summary = Trainer(tiny_cfg(fake_cifar, f"method={method}", "noise=symmetric", "noise.rate=0.4"), out).fit()
    assert summary["status"] == "completed"
    assert (summary["noise"], summary["noise_rate"], summary["noise_seed"]) == ("symmetric", 0.4, 0)
    assert abs(summary["noise_rate_realised"] - 0.4) < 0.15  # 96 labels: binomial spread
    assert json.loads((out / "summary.json").read_text())["noise_rate_realised"] == summary["noise_rate_realised"]
    rec = torch.load(out / "noisy_labels.pt")
    clean = load_dataset("cifar10", str(tmp_path / "data"), True).labels
    assert (rec["noisy_labels"] != clean).float().mean().item() == summary["noise_rate_realised"]
    assert rec["config"] == {"dataset": "cifar10", "name": "symmetric", "rate": 0.4, "seed": 0}
    assert rec["clean_sha256"] == N.labels_fingerprint(clean) and rec["index"] is None
