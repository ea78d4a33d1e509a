"""Run folders: what identifies a run (dlb/run/identity.py), the data it saw, where it lives by default, what a refused command
leaves behind, and what a person watching a run sees (start-up line, progress, train.log, Ctrl-C)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

import dlb.trainer as trainer_mod
from conftest import REPO, compose
from dlb.run import identity as runid
from dlb.train import EXIT_INTERRUPTED, EXIT_PREEMPTED, EXIT_USER_ERROR
from dlb.trainer import Trainer
from fakedata import write_fake_imagefolder

TRAIN = ["dataset=imagefolder", "backbone=resnet8", "method=dlb", "trainer.device=cpu"]


def cli(args, cwd=REPO, timeout=300, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "dlb.train", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, **kw)


def folder_state(run_dir: Path) -> dict:
    """Every file's bytes under run_dir, but the lock file (its holder line names the last process that asked)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three image folders: `a`; `b`, the same but one pixel of one training image; `c`, four classes."""
    root = tmp_path_factory.mktemp("images")
    for name, classes in (("a", ("cat", "dog", "emu")), ("b", ("cat", "dog", "emu")), ("c", ("cat", "dog", "emu", "fox"))):
        write_fake_imagefolder(root / name, classes=classes, n_train_per_class=16, n_test_per_class=4, size=(12, 12))
    first = sorted((root / "b" / "train").rglob("*.png"))[0]
    pixels = np.array(Image.open(first))
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(first)
    return root


# --- data identity ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("other, what", [("b", r"train_sha256: '[0-9a-f]{12}' -> '[0-9a-f]{12}'"),
                                         ("c", r"num_classes: 3 -> 4")])
def test_other_data_in_a_run_folder_is_refused_in_one_line_and_the_folder_is_untouched(images, tmp_path, other, what):
    out = tmp_path / "run"
    args = [*TRAIN, "trainer.epochs=1", f"hydra.run.dir={out}"]
    first = cli([*args, f"dataset.root={images / 'a'}"])
    assert first.returncode == 0, first.stderr[-2000:]
    before = folder_state(out)
    r = cli([*args, f"dataset.root={images / other}"])
    assert r.returncode == EXIT_USER_ERROR, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert re.match(rf"dlb: error: {re.escape(str(out))} holds a run trained on other data \(.*{what}", lines[0])
    assert folder_state(out) == before
    # The data it was trained on is still welcome: the same command resumes (here: finds it complete).
    again = cli([*args, f"dataset.root={images / 'a'}"])
    assert again.returncode == 0 and f"{out}: already complete" in again.stdout, again.stderr[-2000:]


def test_fingerprint_names_sizes_classes_and_content(images):
    from dlb.data.datasets import fingerprint, load_dataset

    a = [load_dataset("imagefolder", str(images / "a"), train, image_size=12) for train in (True, False)]
    b = [load_dataset("imagefolder", str(images / "b"), train, image_size=12) for train in (True, False)]
    fa, fb = fingerprint(*a), fingerprint(*b)
    assert (fa["train_size"], fa["test_size"], fa["num_classes"], fa["classes"]) == (48, 12, 3, ["cat", "dog", "emu"])
    assert fa["test_sha256"] == fb["test_sha256"] and fa["train_sha256"] != fb["train_sha256"]
    assert runid.data_differences(fa, fb) == [f"train_sha256: {fa['train_sha256'][:12]!r} -> "
                                              f"{fb['train_sha256'][:12]!r}"]
    assert runid.data_differences(fa, fingerprint(*a)) == [] and runid.data_differences(None, fa) == []


# --- one folder per configuration -------------------------------------------------------------------------------
def run_dir_of(*overrides) -> str:
    return compose(list(overrides), with_hydra=True).hydra.run.dir


@pytest.mark.parametrize("overrides, expected", [
    ([], "outputs/cifar100/cifar_resnet32/dlb/seed0"),
    (["method.T=3", "trainer.compile=default", "optim.fused=false", "trainer.device=cpu"],
     "outputs/cifar100/cifar_resnet32/dlb/seed0"),  # a default value, speed and placement: the same run
    (["method.T=4", "optim.lr=0.1", "seed=2"], "outputs/cifar100/cifar_resnet32/dlb/method.T=4,optim.lr=0.1/seed2"),
    (["trainer.epochs=10"], "outputs/cifar100/cifar_resnet32/dlb/trainer.epochs=10/seed0"),
    (["debug=tiny"], "outputs/debug/cifar100/cifar_resnet32/dlb/debug=tiny/seed0"),
    (["debug=step"], "outputs/debug/cifar100/cifar_resnet32/dlb/debug=step/seed0"),
    (["experiment=fashion_demo", "method=ce"],
     "outputs/fashion_mnist/cifar_resnet8/ce/dataset.train_subset=10000,trainer.epochs=10/seed0"),
    (["dataset.loader=torch", "augment=cutmix", "noise=symmetric", "noise.rate=0.4"],
     "outputs/cifar100/cifar_resnet32/dlb+cutmix+symmetric0.4/dataset.loader=torch/seed0"),
    (["noise=symmetric", "noise.rate=0", "noise.seed=3"], "outputs/cifar100/cifar_resnet32/dlb/seed0"),  # no flip: clean
])
def test_the_default_run_folder_names_what_differs_from_the_defaults(overrides, expected):
    assert run_dir_of(*overrides) == expected


def test_a_noise_rate_of_zero_is_the_clean_run():
    """A noise sweep's 0% point flips no label, so it is the clean run: same identity, same folder, resumable."""
    clean = OmegaConf.to_container(compose([]), resolve=True)
    zero = OmegaConf.to_container(compose(["noise=symmetric", "noise.rate=0.0"]), resolve=True)
    assert runid.identity(zero) == runid.identity(clean) and runid.differences(clean, zero) == []
    noisy = OmegaConf.to_container(compose(["noise=symmetric", "noise.rate=0.2"]), resolve=True)
    assert runid.differences(clean, noisy)


def test_a_long_variant_name_ends_in_a_hash():
    config = {"dataset": {"name": "d"}, "backbone": {"name": "b"}, "method": {"name": "m", "x": "y" * 300},
              "augment": {"name": "none"}, "noise": {"name": "none"}, "seed": 0}
    name = runid.variant_name(config, {**config, "method": {"name": "m", "x": ""}})
    assert len(name) <= runid.MAX_NAME and re.search(r"-[0-9a-f]{8}$", name)


def test_an_ablation_runs_in_its_own_folder_and_the_same_command_resumes_it(images, tmp_path):
    args = [*TRAIN, f"dataset.root={images / 'a'}", "debug=step"]
    base, ablation = cli(args, cwd=tmp_path), cli([*args, "method.T=4"], cwd=tmp_path)
    assert base.returncode == 0 and ablation.returncode == 0, (base.stderr[-2000:], ablation.stderr[-2000:])
    cell = tmp_path / "outputs" / "debug" / "imagefolder" / "cifar_resnet8" / "dlb"
    assert sorted(p.name for p in cell.iterdir()) == ["debug=step", "debug=step,method.T=4"]
    again = cli([*args, "method.T=4"], cwd=tmp_path)
    assert again.returncode == 0 and "already complete" in again.stdout, again.stderr[-2000:]
    assert json.loads((cell / "debug=step,method.T=4" / "seed0" / "config.json").read_text())["method"]["T"] == 4.0


def test_a_plain_multirun_has_deterministic_folders_and_a_rerun_skips_its_finished_runs(images, tmp_path):
    args = ["-m", *TRAIN, f"dataset.root={images / 'a'}", "debug=step", "method=ce,dlb"]
    first = cli(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    runs = sorted(p.parent.relative_to(tmp_path) for p in tmp_path.rglob("summary.json"))
    assert [str(r) for r in runs] == [f"multirun/imagefolder/cifar_resnet8/{m}/debug=step/seed0" for m in ("ce", "dlb")]
    before = {r: files_and_times(tmp_path / r) for r in runs}
    again = cli(args, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count(": already complete, nothing to do") == 2, again.stdout[-2000:]
    assert {r: files_and_times(tmp_path / r) for r in runs} == before


# --- first contact: refused commands, finished runs, folders named back --------------------------------------------
def files_and_times(folder: Path) -> dict:
    """Every file under `folder` (the lock file too): its bytes and its modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("argv", [["method.T=-1"], ["method.T=NaN"], ["trainer.epochs=0"],
                                  ["dataset=cifar10", "dataset.root=/nonexistent", "trainer.device=cpu"],  # no data
                                  ["-m", "method.T=-1"]])
def test_a_refused_command_leaves_no_folder(argv, tmp_path, monkeypatch, capsys):
    from test_reliability import run_cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()  # an outputs folder of earlier runs stays
    (tmp_path / "outputs" / "kept").write_text("")
    code, err = run_cli(monkeypatch, capsys, *argv)
    assert code == EXIT_USER_ERROR and err[0].startswith("dlb: error: "), err
    assert len(err) == 1 or "-m" in argv, err  # (under -m Hydra adds a line naming the failed job's overrides)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == (["multirun", "multirun/multirun.yaml"] if "-m" in argv else []) + ["outputs", "outputs/kept"]


def test_a_finished_run_run_again_says_so_in_one_line_and_touches_nothing(images, tmp_path):
    args = [*TRAIN, f"dataset.root={images / 'a'}", "debug=step"]
    assert cli(args, cwd=tmp_path).returncode == 0
    (out,) = [p.parent for p in tmp_path.rglob("summary.json")]
    summary = json.loads((out / "summary.json").read_text())
    for damage in (None, "last.pt"):  # a finished run whose last.pt is unreadable (prev.pt or best.pt intact) too
        if damage:
            (out / "checkpoints" / damage).write_bytes(b"not a checkpoint")
        before = files_and_times(out)
        again = cli(args, cwd=tmp_path)
        assert again.returncode == 0 and again.stderr == "", again.stderr[-2000:]
        assert again.stdout.splitlines() == [
            f"{out}: already complete, nothing to do | 1 epochs | test err: last {summary['last_test_err']:.2f}, "
            f"best {summary['best_test_err']:.2f} (epoch 1)"]
        assert files_and_times(out) == before


def test_an_unquoted_run_folder_is_one_line_giving_the_override_to_type():
    from dlb.errors import ConfigError
    from dlb.train import load_config

    folder = "outputs/cifar100/cifar_resnet32/dlb/method.T=4,optim.lr=0.1/seed0"
    with pytest.raises(ConfigError, match=r"^hydra\.run\.dir=.*: not a valid override .*for Hydra and the shell: ") as e:
        load_config([f"hydra.run.dir={folder}"])
    assert str(e.value).endswith(f"""shell: "hydra.run.dir='{folder}'\"""")


@pytest.mark.parametrize("folder", ["outputs/c/dlb/method.T=4,optim.lr=0.1/seed0", "/tmp/it's a \\ $HOME folder\\"])
def test_a_quoted_override_reaches_hydra_as_the_folder_it_names(folder):
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dlb.run.command import quoted_override

    (word,) = shlex.split(quoted_override("hydra.run.dir", folder))  # what the shell hands over
    assert OverridesParser.create().parse_override(word).value() == folder


def test_the_printed_command_continues_a_stopped_run_from_anywhere(images, tmp_path):
    """SIGTERM: train.log says where the run stopped and how to continue; the start-up's command, run as printed by
    bash from another folder, continues it in its own folder (a name holding `=` and `,`)."""
    args = [*TRAIN, f"dataset.root={images / 'a'}", "trainer.epochs=3", "trainer.batch_size=4", "dataset.image_size=12",
            "method.T=4"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-m", "dlb.train", *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    command = None
    for line in child.stdout:
        command = line.split(": ", 1)[1].strip() if line.startswith("to continue this run after a stop: ") else command
        if line.startswith("epoch 1/3"):  # training is under way
            break
    child.send_signal(signal.SIGTERM)
    child.communicate(timeout=120)
    assert child.returncode == EXIT_PREEMPTED and command is not None
    (out,) = [p.parent for p in tmp_path.rglob("summary.json")]
    assert "=" in out.parent.name and "," in out.parent.name
    stop = (out / "train.log").read_text().splitlines()[-1]
    assert re.search(r" stopped: SIGTERM: (saved epoch \d step \d+ of 12|stopped after epoch \d) .*; continue with: "
                     + re.escape(command) + "$", stop), stop
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = subprocess.run(["bash", "-c", command], cwd=elsewhere, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert re.match(rf"{re.escape(str(out))}: resumed (in|after) epoch", resumed.stdout), resumed.stdout[-2000:]
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert list(elsewhere.iterdir()) == []


# --- what a person watching sees --------------------------------------------------------------------------------
def tiny_cfg(root, *overrides):
    return compose(["dataset=imagefolder", f"dataset.root={root}", "backbone=resnet8", "debug=tiny",
                    "trainer.batch_size=8", "dataset.image_size=12", *overrides])


def test_start_up_line_progress_lines_epoch_lines_and_a_summary_after_every_epoch(images, tmp_path, monkeypatch,
                                                                                    capsys):
    out = tmp_path / "run"
    monkeypatch.setattr(trainer_mod, "PROGRESS_EVERY_S", 0.0)  # a progress line at every step
    seen = []

    class Watched(Trainer):
        def _run_epoch(self, epoch):
            seen.append(json.loads((out / "summary.json").read_text()))
            return super()._run_epoch(epoch)

    Watched(tiny_cfg(images / "a", "trainer.epochs=2", "method=ce"), out).fit()
    assert [(s["status"], s["epochs_completed"]) for s in seen] == [("running", 0), ("running", 1)]
    assert seen[1]["best_test_err"] is not None
    stdout = capsys.readouterr().out.splitlines()
    assert re.match(rf"{re.escape(str(out))}: fresh run \| cpu \(.+, \d+ CPU threads?\) \| imagefolder: 48 train / 12 "
                    r"test images, 3 classes \| cifar_resnet8 \(0\.08M params\) \| ce \| 2 epochs, seed 0 \| speed: fp32, "
                    r"channels_last, fused SGD, eager, eval batch \d+, heap kept$", stdout[0])  # 12 steps: eager
    assert re.match(r"epoch 2/2 .* test err [\d.]+ .* elapsed \d:\d\d:\d\d  ETA 0:00:00$", stdout[-1])
    # (a "note: the CPU is busy" line follows the start-up line when the machine is loaded)
    log = [line for line in (out / "train.log").read_text().splitlines() if "note: the CPU is busy" not in line]
    assert len(log) == 1 + 2 * 6 + 2  # start-up, 6 steps x 2 epochs (progress), 2 epoch lines
    assert "epoch 1/2 step 1/6" in log[1] and "img/s, epoch ETA" in log[1]
    resumed = Trainer(tiny_cfg(images / "a", "trainer.epochs=2", "method=ce"), out)
    assert resumed.try_resume() and "resumed after epoch 2/2" in trainer_mod.startup_lines(resumed, True)[0]


def test_bf16_where_the_cpu_has_none_says_so_at_start_up(images, tmp_path, monkeypatch, capsys):
    """trainer.precision=bf16 on a CPU without native bf16 is emulated, slower than fp32: a note says so and how."""
    monkeypatch.setattr(trainer_mod, "native_bf16", lambda device: False)
    Trainer(tiny_cfg(images / "a", "trainer.epochs=1", "method=ce", "trainer.precision=bf16"), tmp_path / "run").fit()
    out = capsys.readouterr().out
    assert "speed: bf16 autocast, " in out
    assert "has no native bf16" in out and "use trainer.precision=fp32" in out


def test_ctrl_c_saves_at_the_next_step_says_how_to_continue_and_exits_130(images, tmp_path):
    """Ctrl-C (SIGINT to the process) mid-epoch: one line, status stopped, exit 130; the same command continues."""
    out = tmp_path / "run"
    args = [*TRAIN, f"dataset.root={images / 'a'}", "trainer.epochs=50", "trainer.batch_size=4",
            "dataset.image_size=12", f"hydra.run.dir={out}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-m", "dlb.train", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             preexec_fn=default_sigint,
                             stderr=subprocess.PIPE, text=True)
    for line in child.stdout:  # the first epoch line: training is under way
        if line.startswith("epoch 1/50"):
            break
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("dlb: ")]
    assert len(lines) == 1 and re.match(r"dlb: stopped: Ctrl-C: (saved epoch \d+ step \d+ of 12|stopped after epoch "
                                        r"\d+) .*run the same command again to continue", lines[0]), stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped"
    resumed = Trainer(compose([a for a in args if not a.startswith("hydra.")]), out)
    assert resumed.try_resume() and resumed.step > 0


def default_sigint() -> None:
    """Ctrl-C as a terminal delivers it. A test suite started in the background of a non-interactive shell inherits
    SIGINT ignored, and the trainer rightly leaves an ignored signal alone."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def sigint_default():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # (see default_sigint)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_second_ctrl_c_stops_at_once_and_the_last_checkpoint_survives(images, tmp_path, sigint_default):
    out = tmp_path / "run"
    presses = []

    class PressedTwice(Trainer):
        def train_step(self, batch):
            if self.epoch == 1 and not presses:  # during epoch 2, after epoch 1's checkpoint
                presses.append(1)
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)  # the second press raises KeyboardInterrupt here
            return super().train_step(batch)

    with pytest.raises(KeyboardInterrupt):
        PressedTwice(tiny_cfg(images / "a", "trainer.epochs=3", "method=dlb"), out).fit()
    assert json.loads((out / "summary.json").read_text())["status"] == "stopped"
    assert re.search(r" stopped: Ctrl-C: stopped at once in epoch 2 \(step \d+\); it continues from the last checkpoint; "
                     "continue with: the same command$", (out / "train.log").read_text().splitlines()[-1])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    resumed = Trainer(tiny_cfg(images / "a", "trainer.epochs=3", "method=dlb"), out)
    assert resumed.try_resume() and resumed.epoch == 1 and resumed.partial is None
    assert resumed.fit()["status"] == "completed"


def test_an_unwritable_existing_run_folder_is_one_line_naming_the_path(images, tmp_path, monkeypatch, capsys):
    import dlb.run.checkpoint as ckpt
    from test_reliability import run_cli

    out = tmp_path / "run"
    args = [*TRAIN, f"dataset.root={images / 'a'}", "debug=step", f"hydra.run.dir={out}"]
    assert cli(args).returncode == 0
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "status": "stopped"}))  # a run to continue

    def read_only(path, *a, **kw):  # what a read-only folder answers (also to root, unlike chmod)
        if str(path).startswith(str(out)) and (a[0] if a else kw.get("mode", "r")) != "r":
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, *a, **kw)

    monkeypatch.setattr(ckpt, "open", read_only, raising=False)
    code, err = run_cli(monkeypatch, capsys, *args)
    assert code == EXIT_USER_ERROR and len(err) == 1, err
    assert re.match(rf"dlb: error: cannot write {re.escape(str(out))}/\.lock: Permission denied; make it writable",
                    err[0]), err
