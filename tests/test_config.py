"""Config composition for every group option and experiment, and clear errors for bad values."""
from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from conftest import REPO, compose
from dlb.config import milestones, validate
from dlb.groups import group_options
from dlb.errors import ConfigError
from dlb.train import load_config

GROUPS = ["dataset", "backbone", "method", "optim", "logger", "debug", "experiment"]


def options(group):
    return group_options(group)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}"]
    if (group, option) == ("dataset", "imagefolder"):
        overrides.append("dataset.root=/some/images")
    if (group, option) == ("backbone", "timm"):
        overrides.append("backbone.name=resnet18")
    cfg = compose(overrides)
    validate(cfg)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_defaults_are_the_official_recipe():
    cfg = compose()
    assert (cfg.dataset.name, cfg.backbone.name, cfg.method.name) == ("cifar100", "cifar_resnet32", "dlb")
    assert (cfg.method.T, cfg.method.alpha) == (3.0, 1.0)
    o, t = cfg.optim, cfg.trainer
    assert (o.lr, o.momentum, o.nesterov, o.weight_decay, o.gamma) == (0.05, 0.9, True, 5e-4, 0.1)
    assert (t.batch_size, t.epochs) == (64, 240)
    assert milestones(cfg) == [150, 180, 210]
    assert cfg.dataset.augment == "crop_flip" and cfg.dataset.padding == 4


def test_milestones_scale_with_epochs_unless_given():
    assert milestones(compose(["trainer.epochs=24"])) == [15, 18, 21]
    assert milestones(compose(["trainer.epochs=24", "optim.milestones=[5,10]"])) == [5, 10]


@pytest.mark.parametrize("override,key", [
    ("method.T=0", "method.T"), ("method.T=-1", "method.T"), ("method.alpha=-0.1", "method.alpha"),
    ("optim.lr=0", "optim.lr"), ("trainer.batch_size=0", "trainer.batch_size"), ("trainer.eval_batch_size=0", "trainer.eval_batch_size"),
    ("trainer.eval_batch_size=big", "trainer.eval_batch_size"), ("trainer.epochs=0", "trainer.epochs"),
    ("dataset.train_subset=0", "dataset.train_subset"), ("trainer.device=tpu", "trainer.device"),
    ("dataset.augment=mixup", "dataset.augment"), ("trainer.precision=fp8", "trainer.precision"),
    ("optim.momentum=1.5", "optim.momentum"), ("dataset.root=", "dataset.root"), ("logger.mode=sometimes", "logger.mode"),
])
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config([override])  # the schema (a Choice) or validate


def test_split_backward_is_refused_under_cuda_graphs_only():
    with pytest.raises(ConfigError, match=r"method\.backward='split': CUDA graphs .*trainer\.compile=default"):
        validate(compose(["method.backward=split", "trainer.compile=reduce-overhead"]))
    validate(compose(["method.backward=split", "trainer.compile=default"]))
    validate(compose(["method.backward=joint", "trainer.compile=reduce-overhead"]))
    validate(compose(["method=ce", "trainer.compile=reduce-overhead"]))  # no backward key: nothing to refuse


def test_imagefolder_needs_a_root():
    with pytest.raises(ConfigError, match="dataset.root"):
        validate(compose(["dataset=imagefolder"]))


@pytest.mark.parametrize("override", ["method.T=abc", "trainer.batch_size=1.5", "method.foo=1", "trainer.epochs=many"])
def test_wrong_types_and_unknown_keys_are_rejected_by_the_schema(override):
    with pytest.raises((HydraException, OmegaConfBaseException)):
        compose([override])


def test_unknown_group_value_lists_the_options():
    with pytest.raises(HydraException, match="(?s)Available options.*dlb"):
        compose(["method=nope"])


def test_cli_bad_value_is_one_line_and_exit_code_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "dlb.train", "method.T=-1", f"hydra.run.dir={tmp_path}/run"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "method.T=-1" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("overrides, folder", [
    ([], "outputs/cifar100/cifar_resnet32/dlb/seed0"),
    (["augment=cutmix"], "outputs/cifar100/cifar_resnet32/dlb+cutmix/seed0"),
    (["noise=symmetric", "noise.rate=0.4", "seed=2"], "outputs/cifar100/cifar_resnet32/dlb+symmetric0.4/seed2"),
    (["augment=cutout", "noise=asymmetric", "noise.rate=0.2"],
     "outputs/cifar100/cifar_resnet32/dlb+cutout+asymmetric0.2/seed0"),
])
def test_default_run_dir_names_augment_and_noise(overrides, folder):
    """README's hydra.run.dir default: an augmented or noisy run never lands in the plain run's folder."""
    cfg = compose(["dataset=cifar100", "backbone=resnet32", "method=dlb", *overrides], with_hydra=True)
    assert cfg.hydra.run.dir == folder
