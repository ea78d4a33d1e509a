"""End-to-end training on tiny CIFAR-format data: smoke runs, outputs, resume equivalence, W&B offline."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, compose, metric_rows
from dlb.config import validate
from dlb.errors import ResumeError
from dlb.run.folder import RunFolder
from dlb.trainer import Trainer

def tiny_cfg(root, *overrides):
    cfg = compose(["dataset=cifar10", f"dataset.root={root}", "backbone=resnet8", "debug=tiny",
                   "trainer.batch_size=16", "trainer.eval_batch_size=20", *overrides])
    validate(cfg)
    return cfg


@pytest.mark.parametrize("method", ["ce", "dlb"])
def test_one_epoch_smoke_writes_every_output(fake_cifar, tmp_path, method):
    out = tmp_path / "run"
    summary = Trainer(tiny_cfg(fake_cifar, f"method={method}"), out).fit()
    assert summary["status"] == "completed" and summary["epochs_completed"] == 1
    assert summary["steps"] == 6  # 96 images / batch 16
    for key in ("best_test_err", "last_test_err", "last_test_nll", "last_test_ece", "num_params", "data",
                "peak_memory_bytes", "train_time_s", "seed", "world_size", "global_batch"):
        assert summary[key] is not None, key
    for key in ("git_commit", "torch", "device_name"):
        assert summary["environment"][key] is not None, key
    assert summary["data"]["train_size"] == 96 and len(summary["data"]["train_sha256"]) == 64
    assert json.loads((out / "summary.json").read_text()) == summary
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["epoch"] == 1 and rows[0]["test_n"] == 40
    for key in ("train_loss", "train_ce", "train_acc", "test_acc", "test_err", "test_nll", "test_ece", "lr",
                "train_time_s", "train_img_per_s"):
        assert key in rows[0], key
    if method == "dlb":  # every step after the run's first has the KD term
        assert rows[0]["train_kd"] > 0
    assert (out / "checkpoints" / "last.pt").exists() and (out / "checkpoints" / "best.pt").exists()
    assert json.loads((out / "environment.json").read_text())["torch"] == torch.__version__
    assert json.loads((out / "config.json").read_text())["method"]["name"] == method


def _interrupt_after_first_checkpoint(monkeypatch):
    real = RunFolder.save_checkpoint

    def save_then_die(folder, state):
        real(folder, state)
        raise KeyboardInterrupt  # the process dies right after epoch 1's checkpoint is on disk

    monkeypatch.setattr(RunFolder, "save_checkpoint", save_then_die)


@pytest.mark.parametrize("method", ["ce", "dlb", "pskd", "cskd"])
def test_resume_equals_uninterrupted_run(fake_cifar, tmp_path, monkeypatch, method):
    """Two epochs in one go, or one epoch, an interruption right after its checkpoint, and the second resumed: the
    same weights, metric rows and method state (DLB's last batch, PS-KD's memory; CS-KD's class-paired order shows in
    the weights)."""
    overrides = [f"method={method}", "trainer.epochs=2", "trainer.deterministic=true"]
    full = Trainer(tiny_cfg(fake_cifar, *overrides), tmp_path / "full")
    full.fit()

    with monkeypatch.context() as m:
        _interrupt_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt):
            Trainer(tiny_cfg(fake_cifar, *overrides), tmp_path / "cut").fit()
    interrupted = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert interrupted["status"] == "stopped" and interrupted["epochs_completed"] == 1

    resumed = Trainer(tiny_cfg(fake_cifar, *overrides), tmp_path / "cut")
    summary = resumed.fit()
    assert summary["status"] == "completed" and summary["steps"] == full.step
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    torch.testing.assert_close(resumed.method.method_state(), full.method.method_state(), rtol=0, atol=0)
    assert metric_rows(tmp_path / "cut") == metric_rows(tmp_path / "full")


def test_resume_refuses_a_different_config(fake_cifar, tmp_path):
    Trainer(tiny_cfg(fake_cifar, "method=dlb"), tmp_path / "run").fit()
    with pytest.raises(ResumeError, match="method.alpha"):
        Trainer(tiny_cfg(fake_cifar, "method=dlb", "method.alpha=0.5"), tmp_path / "run").fit()
    with pytest.raises(ResumeError, match="resume=true"):
        Trainer(tiny_cfg(fake_cifar, "method=dlb", "resume=false"), tmp_path / "run").fit()


def test_dlb_cache_crosses_epoch_boundaries(fake_cifar, tmp_path):
    """With one step per epoch, epoch 2's only step must already have the KD term (the cache survived)."""
    t = Trainer(tiny_cfg(fake_cifar, "method=dlb", "trainer.epochs=2", "trainer.limit_train_batches=1"), tmp_path)
    t.fit()
    assert "train_kd" not in t.history[0] or t.history[0]["train_kd"] == 0
    assert t.history[1]["train_kd"] > 0


def test_split_backward_trains_like_the_joint_backward(fake_cifar, tmp_path):
    """method.backward=split through the trainer (zero_grad before the step): two epochs give the joint run's
    weights and losses up to float rounding."""
    runs = {}
    for mode in ("joint", "split"):
        t = Trainer(tiny_cfg(fake_cifar, "method=dlb", f"method.backward={mode}", "trainer.epochs=2",
                             "trainer.deterministic=true"), tmp_path / mode)
        t.fit()
        runs[mode] = t
    joint, split = runs["joint"], runs["split"]
    for k, v in joint.model.state_dict().items():
        torch.testing.assert_close(split.model.state_dict()[k], v, rtol=1e-3, atol=1e-5, msg=k)
    for a, b in zip(joint.history, split.history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["train_kd"] == pytest.approx(a["train_kd"], rel=1e-4)


def test_wandb_offline_run_holds_the_metrics(fake_cifar, tmp_path):
    wandb = pytest.importorskip("wandb")
    out = tmp_path / "run"
    Trainer(tiny_cfg(fake_cifar, "method=ce", "logger=wandb", "logger.mode=offline"), out).fit()
    # wandb-core (0.31) answers finish() once the run's stream is closed, but writes the offline record log
    # asynchronously: read right after finish() it sometimes still holds only its 7-byte header. teardown() waits
    # for the service process to exit, which flushes the file (what happens at the exit of a training process).
    wandb.teardown()
    run_dirs = list((out / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    # The offline record log stores each logged value as JSON text next to its key; `wandb sync` uploads it.
    record_log = next(run_dirs[0].glob("run-*.wandb")).read_bytes()
    local = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("test_err", "train_loss", "test_nll"):
        assert key.encode() in record_log and json.dumps(local[key]).encode() in record_log, key
    assert (out / "wandb_id.txt").read_text().strip() in run_dirs[0].name


def test_cli_run_writes_hydra_config(tmp_path):
    from fakedata import write_fake_fashion_mnist

    write_fake_fashion_mnist(tmp_path / "data" / "FashionMNIST" / "raw", n_train=40, n_test=20)
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "dlb.train", "dataset=fashion_mnist", f"dataset.root={tmp_path}/data",
                        "backbone=resnet8", "method=dlb", "debug=step", f"hydra.run.dir={out}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / ".hydra" / "config.yaml").exists() and (out / "summary.json").exists()


def _train_importtime(args, tmp_path, env=None):
    """`python -m dlb.train <args>` into tmp_path/run, with the import log: (result, imported modules, stderr lines)."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "dlb.train", *args, f"hydra.run.dir={tmp_path}/run"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    return r, imported, [line for line in r.stderr.splitlines() if not line.startswith("import time:")]


@pytest.mark.parametrize("args,code,named", [
    (["--help"], 0, None), (["dataset=nope"], 2, None), (["method=ce,nope"], 2, None), (["method.T=["], 2, None),
    (["method=1"], 2, None), (["hydra.run.dir=outputs/c/dlb/method.T=4,optim.lr=0.1/seed0"], 2, None),
    # a key's type or range, a Choice's values, a conflict of settings: answered by the schema and validate
    (["method=dlb", "method.T=abc"], 2, "method.T=abc"), (["method=dlb", "method.T=-1"], 2, "method.T=-1.0"),
    (["trainer.epochs=abc"], 2, None), (["trainer.epochs=0"], 2, None), (["optim.lr=-1"], 2, "optim.lr=-1.0"),
    (["dataset=cifar10", "dataset.train_subset=10000000"], 2, "dataset.train_subset=10000000"),
    (["trainer.precision=fp8"], 2, None), (["method=dlb", "method.backward=nope"], 2, "method.backward=nope"),
    (["method=dlb", "method.backward=split", "trainer.compile=reduce-overhead"], 2, "method.backward='split'"),
    (["method=ddgsd", "trainer.ddp=true"], 2, "trainer.ddp=True"),
    (["method=tfkd_reg", "method.correct_prob=2"], 2, "method.correct_prob=2.0")])
def test_help_and_config_errors_answer_before_torch(args, code, named, tmp_path):
    """--help and every config error are answered without importing torch (seconds sooner on a busy machine), as
    one line naming the override, and nothing is created; the import log shows every module the command loaded."""
    r, imported, lines = _train_importtime(args, tmp_path)
    assert "dlb.groups" in imported and "hydra" in imported  # (dlb.train itself runs as __main__)
    assert not {"torch", "torchvision", "timm"} & imported
    assert r.returncode == code, r.stderr[-2000:]
    assert not (tmp_path / "run").exists()
    if code:
        assert len(lines) == 1 and lines[0].startswith(f"dlb: error: {named or args[0]}: "), lines
    else:
        assert "method: ce, cskd" in r.stdout and "--cfg job" in r.stdout and "$CONFIG" not in r.stdout


def test_the_dlb_train_script_imports_neither_schema_nor_torch():
    """`dlb-train` (pyproject.toml: dlb.train:main) imports dlb.train as a module; main() then checks as above."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import dlb.train"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert r.returncode == 0 and "dlb.train" in imported, r.stderr[-2000:]
    assert not {"dlb.config", "torch", "torchvision", "timm"} & imported


PLUGIN = '''
from __future__ import annotations

from dataclasses import dataclass

import torch

from dlb.errors import ConfigError
from dlb.methods.base import Method, batch_ce, register_method

LIMIT = 10.0


def _check(scale: torch.Tensor | float) -> None:
    if not 0 < scale <= {limit}:
        raise ConfigError(f"method.scale={{scale}}: must be in (0, {{LIMIT}}]")


@register_method("scaled")
class Scaled(Method):
    num_views = 1
    cost = object()  # (not what the checks read)

    @dataclass
    class Config:
        name: str = "scaled"
        scale: float = 1.0

    @classmethod
    def validate_config(cls, cfg):
        _check(cfg.scale)

    def training_step(self, model, batch):
        logits = model(batch.views[0])
        return logits, {{"ce": self.scale * batch_ce(logits, batch)}}
'''


@pytest.mark.parametrize("limit,fast", [("LIMIT", True), ("torch.finfo().max and LIMIT", False)])
def test_a_plugin_methods_config_error_is_one_line(tmp_path, limit, fast):
    """A DLB_PLUGINS method's own range check answers as the package's do: read from its source without torch, or,
    when the check needs more of the file than that reading runs (here torch), with the file imported: same line."""
    (tmp_path / "scaled.py").write_text(PLUGIN.format(limit=limit))
    env = {**os.environ, "DLB_PLUGINS": str(tmp_path / "scaled.py")}
    r, imported, lines = _train_importtime(["method=scaled", "method.scale=-1", "dataset=cifar10"], tmp_path, env)
    assert r.returncode == 2 and lines == ["dlb: error: method.scale=-1.0: must be in (0, 10.0]"], r.stderr[-2000:]
    assert ("torch" not in imported) == fast
    assert not (tmp_path / "run").exists()


def test_an_image_folder_smaller_than_the_subset_is_one_warning_line(tmp_path):
    """An image folder's size is known once read: a subset larger than it is one warning line naming both sizes, and
    the run trains on the whole split (debug=step asks for 256 images of any folder)."""
    from fakedata import write_fake_imagefolder

    write_fake_imagefolder(tmp_path / "images")  # 3 classes x 3 training images
    out = tmp_path / "outputs" / "run"
    r = subprocess.run([sys.executable, "-m", "dlb.train", "dataset=imagefolder", f"dataset.root={tmp_path}/images",
                        "dataset.image_size=8", "backbone=resnet8", "method=ce", "debug=step",
                        "dataset.train_subset=10", "dataset.test_subset=null", f"hydra.run.dir={out}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    warnings = [line for line in r.stderr.splitlines() if line.startswith("dlb: warning:")]
    assert warnings == [f"dlb: warning: dataset.train_subset=10: the training split of dataset=imagefolder "
                        f"({tmp_path}/images) has only 9 images; using all 9"]
    assert json.loads((out / "summary.json").read_text())["data"]["train_size"] == 9


def test_registered_names_are_read_from_the_files_without_torch():
    """The `method` and `dataset` groups' options, read from the source for --help, are exactly the registries' keys."""
    from dlb.data.datasets import DATASETS
    from dlb.groups import registered_names
    from dlb.methods import METHODS

    assert registered_names("method") == sorted(METHODS)
    assert registered_names("dataset") == sorted(DATASETS)


def test_the_config_checks_read_the_registries_facts_from_the_source():
    """dlb.groups.registry, read without importing the files, gives what importing them gives: each method's Config
    fields and defaults, num_views and speed_only_options; each dataset's sizes and config values."""
    import dataclasses

    from dlb.data.datasets import DATASETS
    from dlb.groups import registry
    from dlb.methods import METHODS

    def fields(config):
        return [(f.name, f.default) for f in dataclasses.fields(config)]

    for name, stand_in in registry("method").items():
        method = METHODS[name]
        assert stand_in is not method and stand_in.__module__.startswith("dlb_schema_"), name  # (not imported)
        assert fields(stand_in.Config) == fields(method.Config), name
        assert (stand_in.num_views, stand_in.speed_only_options) == (method.num_views, method.speed_only_options)
    for name, facts in registry("dataset").items():
        spec = DATASETS[name]
        assert (facts.train_size, facts.test_size, facts.config) == (spec.train_size, spec.test_size, spec.config)
