"""configs/recipe/: each baseline's own official CIFAR recipe and what it needs (lr warm-up, rotation): docs/recipes.md.

The values live in one place, the recipe files: each value carries a comment quoting the official line it comes from,
and these tests check the quote holds the value, and that composing the recipe gives exactly those values."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchvision.transforms import functional as F

from conftest import CONFIGS, REPO, compose
from dlb.data import loader as L
from dlb.run import identity as runid
from dlb.config import to_container, validate
from dlb.errors import ConfigError
from dlb.trainer import Trainer

RECIPES = sorted(p.stem for p in (CONFIGS / "recipe").glob("*.yaml"))
METHOD_OF = {"dlb": "dlb", "cskd": "cskd", "pskd": "pskd", "tfkd": "tfkd_reg"}  # a method each recipe is for
GOLDEN = json.loads((REPO / "tests" / "golden" / "configs_before_recipes.json").read_text())
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?")
SOURCE = re.compile(r"\S+\.(?:py|json) L\d+")


def tiny(root, *overrides):
    cfg = compose(["dataset=cifar10", f"dataset.root={root}", "backbone=resnet8", "trainer.device=cpu",
                   "trainer.eval_batch_size=20", *overrides])
    validate(cfg)
    return cfg


def recipe_values(recipe: str) -> list[tuple[str, str, str]]:
    """(dotted key, value as written, comment) for every value line of configs/recipe/<recipe>.yaml."""
    out, path = [], []
    for line in (CONFIGS / "recipe" / f"{recipe}.yaml").read_text().splitlines():
        m = re.match(r"^( *)(\w+):(?: (.*?))?(?:  # (.*))?$", line)
        if not m:
            continue
        depth = len(m[1]) // 2
        path[depth:] = [m[2]]
        if m[3]:
            out.append((".".join(path), m[3], m[4] or ""))
    return out


def numbers(text: str) -> set[float]:
    return {float(n) for n in NUMBER.findall(re.sub(r"\bL\d+(?:-\d+)?", "", text))}


def test_the_recipes():
    assert RECIPES == ["cskd", "dlb", "pskd", "tfkd"]
    assert recipe_values("dlb") == []  # DLB's recipe is the schema's and optim/sgd.yaml's defaults


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r != "dlb"])
def test_every_value_quotes_its_official_source_and_composes_as_written(recipe):
    values = recipe_values(recipe)
    assert {k for k, _, _ in values} >= {"optim.lr", "optim.momentum", "optim.nesterov", "optim.weight_decay",
                                         "optim.gamma", "optim.milestone_fractions", "trainer.batch_size",
                                         "trainer.epochs"}
    written = OmegaConf.load(CONFIGS / "recipe" / f"{recipe}.yaml")
    composed = compose([f"recipe={recipe}", f"method={METHOD_OF[recipe]}"])
    for key, value, comment in values:
        assert SOURCE.search(comment), f"{recipe}.yaml {key}: no 'file L<line>' source in {comment!r}"
        assert numbers(value) <= numbers(comment), f"{recipe}.yaml {key}={value}: not in its source {comment!r}"
        if value in ("true", "false"):
            assert re.search(rf"\b{value}\b", comment, re.IGNORECASE), f"{recipe}.yaml {key}={value}: {comment!r}"
        expected = OmegaConf.select(written, key)
        got = OmegaConf.select(composed, key)
        assert got == (expected if not isinstance(expected, str) else float(expected)), (recipe, key)


def test_command_line_values_win_over_the_recipe():
    cfg = compose(["recipe=cskd", "optim.lr=0.3", "trainer.epochs=7"])
    assert (cfg.optim.lr, cfg.trainer.epochs, cfg.optim.weight_decay) == (0.3, 7, 1e-4)


def test_tfkd_lr_follows_the_batch_size_as_its_expression():
    for batch in (128, 64, 256, 100):
        assert compose(["recipe=tfkd", f"trainer.batch_size={batch}"]).optim.lr == 0.1 * (batch / 128)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_trains_one_step(fake_cifar, tmp_path, recipe):
    cfg = tiny(fake_cifar, f"recipe={recipe}", f"method={METHOD_OF[recipe]}", "debug=step")
    trainer = Trainer(cfg, tmp_path / "run")
    assert trainer.train_loader.rotation == cfg.dataset.rotation
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["steps"] == 1


def test_warmup_is_tfkd_warmuplr_then_the_schedule(fake_cifar, tmp_path):
    """Tf-KD's WarmUpLR (utils.py) sets lr = base_lr * k / (K + 1e-8) before step k = 1..K of epoch 0, K = steps per
    epoch x warm epochs; from epoch 1 on the MultiStepLR value. A toy schedule: 3 steps per epoch, lr 0.1 * 16/128."""
    cfg = tiny(fake_cifar, "recipe=tfkd", "method=tfkd_reg", "trainer.batch_size=16", "trainer.epochs=10",
               "trainer.limit_train_batches=3")
    trainer = Trainer(cfg, tmp_path / "run")
    seen = []  # the lr each optimizer step runs with
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    for epoch in (0, 1):
        trainer.train_epoch(epoch)
        trainer.scheduler.step()
        trainer.epoch = epoch + 1
    base, K = 0.1 * (16 / 128), 3
    by_hand = [base * k / (K + 1e-8) for k in (1, 2, 3)] + [base] * 3
    np.testing.assert_allclose(seen, by_hand, rtol=1e-7)
    assert seen[2:] == [base] * 4  # the warm-up ends exactly on the schedule's lr
    assert trainer.optimizer.param_groups[0]["lr"] == base  # epoch 2: still before the first milestone (3 of 10)


def test_without_warmup_the_lr_is_untouched(fake_cifar, tmp_path):
    trainer = Trainer(tiny(fake_cifar, "method=ce", "trainer.batch_size=16", "trainer.limit_train_batches=2"),
                      tmp_path / "run")
    assert trainer.warmup_steps == 0
    trainer.train_epoch(0)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.05


def test_rotation_is_torchvisions_random_rotation_pixel_for_pixel():
    g = torch.Generator().manual_seed(0)
    for size in (32, 12, 31):
        x = torch.randint(0, 256, (40, 3, size, size), dtype=torch.uint8, generator=g)
        angle = torch.cat([torch.tensor([0.0, 15.0, -15.0, 90.0]), torch.empty(36).uniform_(-180, 180, generator=g)])
        ours = L.apply_rotation(x, angle)
        assert not torch.equal(ours, x)
        for i in range(len(x)):
            pil = Image.fromarray(x[i].permute(1, 2, 0).numpy())
            theirs = np.asarray(F.rotate(pil, float(angle[i]), fill=0))  # RandomRotation's call, its angle given
            assert np.array_equal(ours[i].permute(1, 2, 0).numpy(), theirs), (size, float(angle[i]))


def test_both_loaders_rotate_training_views_after_the_crop_and_flip():
    from test_loader import make_ds

    ds = make_ds(n=64)
    idx = torch.arange(16)
    kw = dict(batch_size=16, train=True, device="cpu", seed=3, num_views=2)
    rotated = L.DeviceLoader(ds, rotation=15, **kw).make_batch(0, 0, idx)
    plain = L.DeviceLoader(ds, **kw).make_batch(0, 0, idx)
    g = torch.Generator().manual_seed(L._aug_seed(3, 0, 0))
    loader = L.DeviceLoader(ds, **kw)
    for v in range(2):  # per view: the crop and flip draws, then the angles
        x = L.apply_crop_flip(ds.images[idx], *L.crop_flip_params(16, 32, 32, 32, 4, g, "cpu"), 32, 4)
        x = L.apply_rotation(x, L.rotation_params(16, 15, g, "cpu"))
        assert torch.equal(rotated.views[v], torch.addcmul(loader.shift, x.float(), loader.scale))
        assert not torch.equal(rotated.views[v], plain.views[v])
    assert L.DeviceLoader(ds, rotation=15, **{**kw, "train": False}).rotation == 0  # test images stay upright

    from torchvision import transforms as T

    steps = L.TorchLoader(ds, rotation=15, num_workers=0, **kw).dl.dataset.transform.transforms
    assert [type(s) for s in steps[:3]] == [T.RandomCrop, T.RandomHorizontalFlip, T.RandomRotation]
    assert list(steps[2].degrees) == [-15.0, 15.0]
    test_steps = L.TorchLoader(ds, rotation=15, num_workers=0, **{**kw, "train": False}).dl.dataset.transform.transforms
    assert not any(isinstance(s, T.RandomRotation) for s in test_steps)


@pytest.mark.parametrize("override, message", [
    ("dataset.rotation=-1", "dataset.rotation=-1.0: the rotation range in degrees must be in [0, 180]"),
    ("dataset.rotation=200", "dataset.rotation=200.0: the rotation range in degrees must be in [0, 180]"),
    ("optim.warmup_epochs=-1", "optim.warmup_epochs=-1: must be in [0, trainer.epochs=240]"),
    ("optim.warmup_epochs=241", "optim.warmup_epochs=241: must be in [0, trainer.epochs=240]"),
])
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as e:
        validate(compose([override]))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_recipe_names_the_run_folder():
    dirs = {r: compose(["method=cskd", f"recipe={r}"], with_hydra=True).hydra.run.dir for r in RECIPES}
    assert dirs["dlb"] == "outputs/cifar100/cifar_resnet32/cskd/seed0"  # the default names nothing
    assert dirs["cskd"] == "outputs/cifar100/cifar_resnet32/cskd/recipe=cskd/seed0"
    assert len(set(dirs.values())) == len(RECIPES)
    # a recipe's values differ from the defaults of its own choice only where the command changes them
    assert compose(["recipe=tfkd", "trainer.batch_size=64"], with_hydra=True).hydra.run.dir == \
        "outputs/cifar100/cifar_resnet32/dlb/recipe=tfkd,optim.lr=0.05,trainer.batch_size=64/seed0"
    assert compose(["recipe=tfkd", "optim.warmup_epochs=0"], with_hydra=True).hydra.run.dir == \
        "outputs/cifar100/cifar_resnet32/dlb/recipe=tfkd,optim.warmup_epochs=0/seed0"


@pytest.mark.parametrize("case", GOLDEN, ids=lambda c: " ".join(c["overrides"]) or "defaults")
@pytest.mark.parametrize("dlb", [[], ["recipe=dlb"]], ids=["default", "recipe=dlb"])
def test_recipe_dlb_is_the_config_from_before_recipes(case, dlb, monkeypatch):
    """tests/golden/configs_before_recipes.json: resolved configs and run folders composed before configs/recipe/
    existed. The identity (what a run computes) and the folder are the same now; the two new keys sit at the values
    that change nothing, which leave the identity. (Free keys, such as speed settings, may change defaults.)"""
    monkeypatch.delenv("DLB_DATA", raising=False)
    config = to_container(compose([*case["overrides"], *dlb]))
    assert (config["optim"]["warmup_epochs"], config["dataset"]["rotation"]) == (0, 0)
    assert runid.identity(config) == runid.identity(case["config"])
    assert compose([*case["overrides"], *dlb], with_hydra=True).hydra.run.dir == case["run_dir"]


def test_docs_name_every_recipe_and_how_to_switch():
    text = (REPO / "docs" / "recipes.md").read_text()
    assert "python -m dlb.train method=cskd recipe=cskd" in text
    for recipe in RECIPES:
        assert f"recipe={recipe}" in text
    assert "docs/recipes.md" in (REPO / "docs" / "methods.md").read_text() or \
        "recipes.md" in (REPO / "docs" / "methods.md").read_text()
