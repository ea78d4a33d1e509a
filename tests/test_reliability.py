"""Faults a long sweep meets (docs/reliability.md): kills, preemption signals, divergence, bad input, full or shared
output dirs, a failing W&B. Tiny runs: fake CIFAR-10 (192 images), resnet8, batch 8, 24 steps per epoch, 3 epochs,
one CPU thread (a loaded 2-core machine runs 2 OpenMP threads many times slower than 1)."""
from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import types
import warnings
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import dlb.run.checkpoint as ckpt
import dlb.trainer as trainer_mod
from conftest import REPO, compose, metric_rows
from dlb.run.folder import RunFolder
from dlb.errors import ConfigError, Diverged, OutputError, Preempted
from dlb.methods.dlb import DLB
from dlb.models import build_model
from dlb.train import EXIT_DIVERGED, EXIT_PREEMPTED, EXIT_USER_ERROR, load_config, main
from dlb.trainer import Trainer
from fakedata import subprocess_env_for_fake_cifar, write_fake_cifar

N_TRAIN, BATCH, EPOCHS = 192, 8, 3
STEPS = N_TRAIN // BATCH  # per epoch
RUN_ARGS = ["dataset=cifar10", "backbone=resnet8", "method=dlb", "debug=tiny", f"trainer.batch_size={BATCH}",
            "trainer.eval_batch_size=20", f"trainer.epochs={EPOCHS}", "trainer.deterministic=true",
            f"dataset.train_subset={N_TRAIN}"]


# --- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(root, child env): fake CIFAR-10 for this process (md5 lists patched) and for child processes."""
    root = tmp_path_factory.mktemp("rel") / "data"
    with pytest.MonkeyPatch.context() as mp:
        md5s = write_fake_cifar(root, name="cifar10", n_train=N_TRAIN, n_test=40, monkeypatch=mp)
        env = subprocess_env_for_fake_cifar({"cifar10": md5s}, root.parent)
        env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        yield root, env


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic as the OMP_NUM_THREADS=1 children, and fast on a busy machine
    yield
    torch.set_num_threads(n)


def cfg_for(root, *overrides):
    return load_config([*RUN_ARGS, f"dataset.root={root}", *overrides])


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce exactly: (run dir, final weights)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    t = Trainer(cfg_for(data[0]), out)
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures start before the autouse one_thread
    try:
        t.fit()
    finally:
        torch.set_num_threads(n)
    return out, {k: v.clone() for k, v in t.model.state_dict().items()}


def finish_in_process_and_compare(data, reference, out: Path) -> dict:
    """Resume `out` here until done; its weights, metric rows and step count must equal the reference run's."""
    t = Trainer(cfg_for(data[0]), out)
    summary = t.fit()
    ref_dir, ref_weights = reference
    assert summary["status"] == "completed" and summary["steps"] == EPOCHS * STEPS
    for k, v in ref_weights.items():
        assert torch.equal(v, t.model.state_dict()[k]), k
    assert metric_rows(out) == metric_rows(ref_dir)
    return summary


class Child:
    """`python -m dlb.train` (or `python -c code`) in a subprocess, its output read as it comes (tqdm progress)."""

    PROGRESS = re.compile(r"epoch (\d+)/\d+:\s+\d+%\|[^|\r\n]*\|\s*(\d+)/(\d+)")

    def __init__(self, env, args, code: str | None = None):
        cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "dlb.train", *args]
        self.p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.out = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for chunk in iter(lambda: self.p.stdout.read1(4096), b""):
            self.out += chunk.decode(errors="replace")

    def position(self) -> tuple[int, int] | None:
        """(epoch, step) of the latest progress line, 1-based epoch."""
        found = self.PROGRESS.findall(self.out)
        return (int(found[-1][0]), int(found[-1][1])) if found else None

    def wait_until(self, pred, timeout=120.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return
            if self.p.poll() is not None:
                time.sleep(0.2)  # let the reader catch up
                pytest.fail(f"child exited with {self.p.returncode} before the expected point:\n{self.out[-3000:]}")
            time.sleep(0.01)
        self.p.kill()
        pytest.fail(f"timed out waiting; output:\n{self.out[-3000:]}")

    def finish(self, timeout=120.0) -> int:
        rc = self.p.wait(timeout)
        self._reader.join(10)
        self.p.stdout.close()
        return rc


def run_cli(monkeypatch, capsys, *argv) -> tuple[int, list[str]]:
    """`python -m dlb.train argv` in this process: (exit code, stderr lines)."""
    monkeypatch.setattr(sys, "argv", ["dlb.train", *argv])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # main() sets it for itself; this restores it afterwards
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        GlobalHydra.instance().clear()
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


# --- crash safety -----------------------------------------------------------------------------------------------
def _state(epoch, weight):
    return {"epoch": epoch, "model": {"w": torch.full((4,), float(weight))}}


def test_truncated_last_checkpoint_falls_back_to_prev_with_a_warning(tmp_path, capsys):
    folder = RunFolder(tmp_path)
    folder.save_checkpoint(_state(1, 1.0))
    folder.save_checkpoint(_state(2, 2.0))
    last = folder.last
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    state = folder.load_checkpoint()
    assert state["epoch"] == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and re.match(r"dlb: warning: checkpoint .*last\.pt is unreadable.*falling back to .*prev\.pt",
                                      err[0])


def test_a_resumed_run_keeps_a_readable_prev_after_a_truncated_last(data, tmp_path, capsys):
    out, short = tmp_path / "run", ("trainer.epochs=2", "trainer.limit_train_batches=2")
    Trainer(cfg_for(data[0], *short), out).fit()  # two epochs: last.pt (epoch 2), prev.pt (epoch 1)
    folder = RunFolder(out)
    folder.last.write_bytes(folder.last.read_bytes()[:100])
    capsys.readouterr()
    summary = Trainer(cfg_for(data[0], *short), out).fit()  # resumes from prev.pt and trains epoch 2 again
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    err = capsys.readouterr().err
    assert "dlb: warning: checkpoint" in err and "dlb: warning: kept the unreadable" in err
    aside = list(folder.checkpoints.glob("last.pt.corrupt-*"))
    assert len(aside) == 1 and aside[0].stat().st_size == 100  # kept for inspection
    assert torch.load(folder.prev, weights_only=False)["epoch"] == 1  # readable, not the truncated file
    assert torch.load(folder.last, weights_only=False)["epoch"] == 2


def test_killed_between_the_renames_resumes_from_prev_with_a_warning(tmp_path, capsys):
    folder = RunFolder(tmp_path)
    folder.save_checkpoint(_state(1, 1.0))
    folder.save_checkpoint(_state(2, 2.0))
    os.replace(folder.last, folder.prev)  # what save_checkpoint's first rename does
    (folder.checkpoints / "last.pt.tmp").write_bytes(b"half a checkpoint")
    assert folder.load_checkpoint()["epoch"] == 2
    assert re.match(r"dlb: warning: checkpoint .*last\.pt is missing.*prev\.pt", capsys.readouterr().err)


def test_full_disk_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path)
    folder.save_checkpoint(_state(1, 1.0))
    real = torch.save

    def fill_the_disk(obj, f, *a, **kw):
        f.write(b"x" * 100)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", fill_the_disk)
    with pytest.raises(OutputError, match=r"^cannot write .*last\.pt\.tmp: No space left on device; free some space"):
        folder.save_checkpoint(_state(2, 2.0))
    monkeypatch.setattr(ckpt.torch, "save", real)
    assert sorted(p.name for p in folder.checkpoints.iterdir()) == ["last.pt"]  # no partial temp file left behind
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert folder.load_checkpoint()["epoch"] == 1


# A child that dies by SIGKILL inside a checkpoint write: half the bytes of its Nth file, or right after
# save_checkpoint's first rename. Test code only: it patches dlb.run.checkpoint in the child, then runs the CLI.
KILL_IN_CHECKPOINT = r"""
import os, signal, sys
import dlb.run.checkpoint as ck
mode, n = os.environ["DLB_TEST_KILL"].split(":")
calls = [0]
if mode == "write":
    def write(obj, path, real=ck._write_synced):
        calls[0] += 1
        if calls[0] == int(n):
            import io
            buf = io.BytesIO(); ck.torch.save(obj, buf)
            with open(path, "wb") as f:
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush(); os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        real(obj, path)
    ck._write_synced = write
else:
    real_replace = os.replace
    def replace(src, dst):
        real_replace(src, dst)
        if str(dst).endswith("prev.pt"):
            calls[0] += 1
            if calls[0] == int(n):
                os.kill(os.getpid(), signal.SIGKILL)
    ck.os.replace = replace
sys.argv = ["dlb.train", *sys.argv[1:]]
from dlb.train import main
main()
"""


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(data, reference, tmp_path):
    root, env = data
    out = tmp_path / "run"
    args = [*RUN_ARGS, f"dataset.root={root}", "trainer.progress=true", f"hydra.run.dir={out}"]
    # 1: killed halfway through writing its 3rd file (best.pt / last.pt of epochs 1-2): a torn temp file.
    child = Child({**env, "DLB_TEST_KILL": "write:3"}, args, code=KILL_IN_CHECKPOINT)
    assert child.finish() == -signal.SIGKILL, child.out[-2000:]
    assert (out / "checkpoints" / "last.pt").exists()
    # 2: killed between the two renames of its first checkpoint: last.pt gone, prev.pt and a complete .tmp left.
    child = Child({**env, "DLB_TEST_KILL": "rename:1"}, args, code=KILL_IN_CHECKPOINT)
    assert child.finish() == -signal.SIGKILL, child.out[-2000:]
    assert not (out / "checkpoints" / "last.pt").exists() and (out / "checkpoints" / "prev.pt").exists()
    # 3, 4: plain SIGKILL at random moments after training started (mid-epoch, evaluation, checkpoint writes).
    rng = random.Random(6)
    for attempt in range(2):
        child = Child(env, args)
        child.wait_until(lambda: child.position() is not None)
        if attempt == 0:
            assert "last.pt is missing" in child.out and "resuming from the previous checkpoint" in child.out
        time.sleep(rng.uniform(0.0, 1.0))
        child.p.send_signal(signal.SIGKILL)
        if child.finish() == 0:  # a slow machine may let it finish first: then there is nothing left to kill
            break
        status = json.loads((out / "summary.json").read_text())["status"]
        if status == "completed":  # the kill landed after the final summary, during exit: nothing left to redo
            break
        # A SIGKILLed run can't say more than "running"; the report lists it as unfinished.
        assert status == "running"
    finish_in_process_and_compare(data, reference, out)


# --- preemption -------------------------------------------------------------------------------------------------
def test_sigterm_and_sigusr1_save_mid_epoch_and_resume_equals_an_uninterrupted_run(data, reference, tmp_path):
    root, env = data
    out = tmp_path / "run"
    args = [*RUN_ARGS, f"dataset.root={root}", "trainer.progress=true", f"hydra.run.dir={out}"]
    for sig, epoch in ((signal.SIGTERM, 1), (signal.SIGUSR1, 2)):
        child = Child(env, args)
        # Early in the epoch, so the signal lands mid-epoch even if the progress bar lags a few steps.
        child.wait_until(lambda: (child.position() or (0, 0))[0] == epoch and 1 <= child.position()[1] <= STEPS // 2)
        child.p.send_signal(sig)
        assert child.finish() == EXIT_PREEMPTED, child.out[-3000:]
        lines = [line for line in child.out.splitlines() if line.startswith("dlb: ")]
        assert lines and re.match(rf"dlb: stopped: {sig.name}: saved epoch {epoch} step \d+ of {STEPS} to .*last\.pt; "
                                  "run the same command again to continue$", lines[-1]), child.out[-2000:]
        assert "Traceback" not in child.out
        assert json.loads((out / "summary.json").read_text())["status"] == "preempted"
        stop = RunFolder(out).log.read_text().splitlines()[-1]  # train.log says it too, and how to continue
        assert re.search(rf" stopped: {sig.name}: saved epoch {epoch} step \d+ of {STEPS} .*; continue with: "
                         r".* -m dlb\.train .*hydra\.run\.dir=", stop), stop
        state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
        assert state["epoch"] == epoch - 1 and 0 < state["partial"]["epoch_step"] < STEPS
        assert state["step"] == (epoch - 1) * STEPS + state["partial"]["epoch_step"]
    finish_in_process_and_compare(data, reference, out)


def test_a_signal_during_evaluation_stops_after_that_epochs_checkpoint(data, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = trainer_mod.evaluate

    def evaluate_and_get_preempted(*a, **kw):
        os.kill(os.getpid(), signal.SIGUSR1)
        monkeypatch.setattr(trainer_mod, "evaluate", real)
        return real(*a, **kw)

    monkeypatch.setattr(trainer_mod, "evaluate", evaluate_and_get_preempted)
    with pytest.raises(Preempted, match=r"^SIGUSR1: stopped after epoch 1 \(saved to .*last\.pt\)"):
        Trainer(cfg_for(data[0]), out).fit()
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["epoch"] == 1 and state["partial"] is None
    assert json.loads((out / "summary.json").read_text())["status"] == "preempted"
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # restored when fit ends
    finish_in_process_and_compare(data, reference, out)


def test_stop_signals_chain_to_the_previous_handler_and_leave_sigusr2_alone():
    seen = []
    old_term = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    old_usr2 = signal.getsignal(signal.SIGUSR2)
    try:
        stop = ckpt.StopSignals().install()
        assert signal.getsignal(signal.SIGUSR2) is old_usr2  # submitit's requeue signal stays submitit's
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.received == signal.SIGTERM and seen == []  # our handler only notes it...
        stop.chain()
        assert seen == [signal.SIGTERM]  # ...and the previous one runs once the checkpoint is saved
        stop.restore()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert seen == [signal.SIGTERM] * 2
    finally:
        signal.signal(signal.SIGTERM, old_term)


# --- divergence -------------------------------------------------------------------------------------------------
def _nan_from_step(monkeypatch, step: int):
    """DLB's KD term turns NaN from the given global step on (counting calls of training_step)."""
    real, calls = DLB.training_step, [0]

    def training_step(self, model, batch):
        logits, losses = real(self, model, batch)
        calls[0] += 1
        if calls[0] >= step:
            losses = {**losses, "kd": losses["kd"] * float("nan")}
        return logits, losses

    monkeypatch.setattr(DLB, "training_step", training_step)


def test_nan_loss_stops_the_run_keeps_the_last_good_checkpoint_and_the_report_excludes_it(data, tmp_path,
                                                                                            monkeypatch):
    from dlb.analysis.report import build_report, collect_runs, render_markdown

    out = tmp_path / "runs" / "diverged"
    monkeypatch.setattr(trainer_mod, "FINITE_CHECK_EVERY", 5)
    _nan_from_step(monkeypatch, STEPS + 3)  # epoch 2, step 3
    cfg = cfg_for(data[0])
    with pytest.raises(Diverged) as e:
        Trainer(cfg, out).fit()
    msg = str(e.value)
    assert "\n" not in msg
    assert re.match(rf"training diverged in epoch 2 by step 5 of {STEPS} \(loss=nan, ce=\S+, kd=nan", msg), msg
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["epochs_completed"] == 1
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["epoch"] == 1 and state["partial"] is None  # epoch 1's checkpoint; the NaN state was never saved
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert len(metric_rows(out)) == 1
    # The report lists it as diverged and leaves it out of the means.
    runs, skipped = collect_runs([tmp_path / "runs"])
    report = build_report(runs, skipped)
    assert report["n_diverged"] == 1 and report["n_used"] == 0 and not skipped
    assert "1 diverged" in render_markdown(report)


def test_cli_divergence_is_one_line_and_exit_code_3(data, tmp_path, monkeypatch, capsys):
    _nan_from_step(monkeypatch, 2)
    code, err = run_cli(monkeypatch, capsys, *RUN_ARGS, f"dataset.root={data[0]}", "trainer.epochs=1",
                        f"hydra.run.dir={tmp_path / 'run'}")
    assert code == EXIT_DIVERGED
    assert len(err) == 1 and err[0].startswith("dlb: diverged: training diverged in epoch 1 (loss=nan"), err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


# --- inputs -----------------------------------------------------------------------------------------------------
def test_cli_unknown_key_is_one_line_and_exit_code_2_in_a_real_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "dlb.train", "trainer.epoch=3", f"hydra.run.dir={tmp_path}/run"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == EXIT_USER_ERROR
    assert r.stderr.strip() == ("dlb: error: trainer.epoch=3: no such key; did you mean trainer.epochs? "
                                "(`python -m dlb.train --cfg job` prints every key)")


@pytest.mark.parametrize("argv,expected", [
    (["method=nope"], r"method=nope: no method config named 'nope'; use one of ce, cskd, .*tfkd_self$"),
    (["method.T=abc"], r"method\.T=abc: Value 'abc' of type 'str' could not be converted to Float; give a value"),
    (["trainer.batch_size=null"], r"trainer\.batch_size=null: field 'trainer\.batch_size' is not Optional"),
    (["dataset=1"], r"dataset=1: dataset is a config group; use one of cifar10, "),
    (["method.T=["], r"method\.T=\[: not a valid override"),
    (["+trainer.epoch=3"], r"trainer\.epoch=3: no such key, the run would ignore it; did you mean trainer\.epochs\?"),
    (["method.T=nan"], r"method\.T=nan: must be a finite number"),
    (["augment=cutmix", "augment.views=independent"], r"augment\.views='independent': method=dlb trains on 2 views"),
    (["dataset=cifar10", "dataset.root=/nonexistent", "trainer.device=cpu"],
     r"CIFAR-10 file /nonexistent/cifar-10-batches-py/data_batch_1 is missing; rerun with dataset\.download=true"),
])
def test_cli_bad_input_is_one_line_and_exit_code_2(argv, expected, tmp_path, monkeypatch, capsys):
    code, err = run_cli(monkeypatch, capsys, *argv, f"hydra.run.dir={tmp_path / 'run'}")
    assert code == EXIT_USER_ERROR
    assert len(err) == 1 and err[0].startswith("dlb: error: ") and re.search(expected, err[0]), err


def test_cli_corrupt_dataset_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    with pytest.MonkeyPatch.context() as mp:
        write_fake_cifar(tmp_path / "data", name="cifar10", n_train=20, n_test=10, monkeypatch=mp)
        batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_2"
        batch.write_bytes(batch.read_bytes()[:-10])  # truncated download
        code, err = run_cli(monkeypatch, capsys, "dataset=cifar10", f"dataset.root={tmp_path / 'data'}",
                            "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == EXIT_USER_ERROR and len(err) == 1 and "data_batch_2" in err[0] and "md5" in err[0], err


def test_tfkd_self_without_a_teacher_names_the_key(data, tmp_path):
    with pytest.raises(ConfigError, match=r"^method\.teacher=.*no checkpoint at"):
        Trainer(cfg_for(data[0], "method=tfkd_self", f"method.teacher={tmp_path / 'nowhere'}"), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^method\.teacher=auto: found no .* run"):
        Trainer(cfg_for(data[0], "method=tfkd_self", f"method.teacher_root={tmp_path}"), tmp_path / "run2")


def test_a_backbone_that_cannot_take_the_image_size_fails_before_training():
    cfg = compose(["dataset=cifar10", "backbone=timm", "backbone.name=vit_tiny_patch16_224"])
    with pytest.raises(ConfigError, match=r"^backbone\.name=vit_tiny_patch16_224: cannot take 32x32 images "
                                          r"\(dataset\.image_size=32\): .*\+backbone\.kwargs\.img_size=32$"):
        build_model(cfg, 10)
    fixed = compose(["dataset=cifar10", "backbone=timm", "backbone.name=vit_tiny_patch16_224",
                     "+backbone.kwargs.img_size=32"])
    assert build_model(fixed, 10)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


# Random override sets thrown at compose + validate: each either gives a valid config or one ConfigError line
# naming a key it was given; never another exception, never a multi-line message.
GROUPS = {"dataset": ["cifar10", "cifar100", "tinyimagenet", "fashion_mnist", "imagefolder", "nope"],
          "backbone": ["resnet8", "vgg16", "timm", "nope"], "method": ["ce", "dlb", "pskd", "tfkd_self", "cskd", "x"],
          "augment": ["none", "cutout", "cutmix"], "noise": ["none", "symmetric"], "optim": ["sgd"],
          "logger": ["none", "wandb"], "debug": ["tiny", "step"], "experiment": ["cpu_repro", "table1_cifar10"]}
KEYS = ["trainer.epochs", "trainer.batch_size", "trainer.device", "trainer.precision", "trainer.limit_train_batches",
        "trainer.deterministic", "optim.lr", "optim.momentum", "optim.nesterov", "optim.milestones", "optim.gamma",
        "method.T", "method.alpha", "dataset.root", "dataset.image_size", "dataset.train_subset", "dataset.augment",
        "dataset.loader", "augment.views", "augment.prob", "augment.size", "noise.rate", "logger.mode", "seed",
        "trainer.epoch", "optim.learning_rate", "foo", "method.TT", "backbone.name"]
VALUES = st.one_of(st.integers(-3, 300).map(str), st.sampled_from(["0.5", "1e-3", "-0.1", "nan", "inf", "1e400"]),
                   st.sampled_from(["true", "false", "null", "abc", "''", "[1,2]", "[a", "cuda", "cpu", "bf16",
                                    "independent", "device", "torch", "/tmp/x", "1.5", "{a: 1}"]))
GROUP_OVERRIDE = st.sampled_from(sorted(GROUPS)).flatmap(
    lambda g: st.one_of(st.sampled_from(GROUPS[g]), st.sampled_from(GROUPS[g]), VALUES).map(lambda v: f"{g}={v}"))
KEY_OVERRIDE = st.builds(lambda p, k, v: f"{p}{k}={v}", st.sampled_from(["", "", "", "+", "++"]), st.sampled_from(KEYS),
                         VALUES)
OVERRIDE = st.one_of(GROUP_OVERRIDE, KEY_OVERRIDE, KEY_OVERRIDE)


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OVERRIDE, min_size=1, max_size=4))
@example(["method=tfkd_self", "method.teacher="])
@example(["augment=cutmix", "augment.views=independent", "method=dlb"])
@example(["trainer.epoch=3"])
def test_random_overrides_validate_or_fail_with_one_line_naming_a_key(overrides):
    try:
        load_config(overrides)
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg and msg.strip() == msg and msg
        keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
        # The line names the key as given, or one under a group that was given (dataset=imagefolder -> dataset.root).
        assert any(k in msg for k in keys), (overrides, msg)


# --- output dirs ------------------------------------------------------------------------------------------------
def test_second_run_into_a_locked_dir_fails_fast_naming_the_holder(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    with RunFolder(out).lock():  # another run holds the folder
        code, err = run_cli(monkeypatch, capsys, *RUN_ARGS, f"dataset.root={data[0]}", f"hydra.run.dir={out}")
    assert code == EXIT_USER_ERROR and len(err) == 1, err
    assert re.match(rf"dlb: error: {re.escape(str(out))} is in use by another run \(pid {os.getpid()} on .+\); "
                    r"wait for it to finish, or pick another output dir", err[0]), err
    assert not (out / "checkpoints").exists() and not (out / "summary.json").exists()
    with RunFolder(out).lock():  # released: the next run gets it
        pass


def test_unwritable_output_dir_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    denied = tmp_path / "readonly"
    denied.mkdir()
    if os.geteuid() != 0:
        denied.chmod(0o500)
    else:  # root writes anywhere: let the OS answer as it would for anyone else
        real_mkdir = os.mkdir

        def mkdir(path, *a, **kw):
            if str(path).startswith(str(denied)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_mkdir(path, *a, **kw)

        monkeypatch.setattr(os, "mkdir", mkdir)
    try:
        code, err = run_cli(monkeypatch, capsys, "method=ce", f"hydra.run.dir={denied / 'run'}")
    finally:
        denied.chmod(0o700)
    assert code == EXIT_USER_ERROR and len(err) == 1, err
    assert re.match(rf"dlb: error: cannot write {re.escape(str(denied))}/run.*: Permission denied; .*hydra\.run\.dir",
                    err[0]), err


def test_full_disk_mid_run_is_one_line_and_keeps_the_last_checkpoint(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real, calls = ckpt._write_synced, [0]

    def write(obj, path):
        if path.name == "last.pt.tmp":
            calls[0] += 1
            if calls[0] == 2:  # epoch 2's checkpoint
                raise ckpt.write_error(path, OSError(errno.ENOSPC, "No space left on device"))
        real(obj, path)

    monkeypatch.setattr(ckpt, "_write_synced", write)
    code, err = run_cli(monkeypatch, capsys, *RUN_ARGS, f"dataset.root={data[0]}", "trainer.limit_train_batches=2",
                        f"hydra.run.dir={out}")
    assert code == EXIT_USER_ERROR and len(err) == 1, err
    assert re.match(r"dlb: error: cannot write .*last\.pt\.tmp: No space left on device; free some space", err[0])
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


# --- W&B --------------------------------------------------------------------------------------------------------
def fake_wandb(fail: str):
    """A wandb module whose `fail` call (init, log, summary, finish) raises, as with no network or a bad key."""
    def boom(*a, **kw):
        raise RuntimeError(f"wandb {fail} failed (simulated)")

    logged = []
    run = types.SimpleNamespace(log=boom if fail == "log" else lambda row, step=None: logged.append(row),
                                summary=types.SimpleNamespace(update=boom if fail == "summary" else lambda d: None),
                                finish=boom if fail == "finish" else lambda exit_code=0: None)
    module = types.ModuleType("wandb")
    module.init = boom if fail == "init" else lambda **kw: run
    module.logged = logged
    return module


@pytest.mark.parametrize("fail", ["init", "log", "summary", "finish"])
def test_wandb_failures_never_stop_training_or_lose_local_metrics(fail, data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(fail))
    out = tmp_path / "run"
    cfg = cfg_for(data[0], "method=ce", "trainer.epochs=2", "trainer.limit_train_batches=1", "logger=wandb",
                  "logger.mode=online")
    summary = Trainer(cfg, out).fit()
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dlb: warning: W&B")]
    assert len(said) == 1 and re.match(r"dlb: warning: W&B .*(could not start|failed)", said[0]), said
    assert summary["status"] == "completed"
    assert [r["epoch"] for r in metric_rows(out)] == [1, 2]


def test_no_api_key_means_offline(monkeypatch, tmp_path):
    from dlb.run.loggers import wandb_mode

    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert wandb_mode(None) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(None) == "online" and wandb_mode("offline") == "offline"
