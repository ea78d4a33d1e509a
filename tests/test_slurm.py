"""launcher=slurm on a real one-node SLURM cluster (tests/slurm_cluster.py, started once per session): sweeps,
preemption and time-limit requeues with resume, cancellation, skipping finished runs, and requests the partition
can never satisfy. Tiny deterministic runs on fake CIFAR-10; every command has a hard timeout."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, metric_rows
from dlb.errors import ConfigError
from dlb.slurm import check_request
from dlb.train import EXIT_PREEMPTED
from fakedata import subprocess_env_for_fake_cifar, write_fake_cifar

pytestmark = pytest.mark.slurm

N_TRAIN, BATCH, EPOCHS = 480, 8, 3  # about 5 s an epoch here: time to signal the job mid-epoch
STEPS = N_TRAIN // BATCH  # per epoch
RUN_ARGS = ["dataset=cifar10", "backbone=resnet8", "method=dlb", "debug=tiny", f"trainer.batch_size={BATCH}",
            "trainer.eval_batch_size=20", f"trainer.epochs={EPOCHS}", "trainer.deterministic=true",
            f"dataset.train_subset={N_TRAIN}", "dataset.test_subset=40"]
TIME_LIMIT_MIN = 30
SLURM_ARGS = ["launcher=slurm", "trainer.device=cpu", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
              f"hydra.launcher.timeout_min={TIME_LIMIT_MIN}"]
PROGRESS = re.compile(r"epoch (\d+)/\d+:\s+\d+%\|[^|\r\n]*\|\s*(\d+)/(\d+)")


@pytest.fixture(scope="module")
def data(tmp_path_factory, slurm_cluster):
    """(fake CIFAR-10 root, environment for `python -m dlb.train` and the jobs it submits: sbatch passes it on)."""
    root = tmp_path_factory.mktemp("slurm") / "data"
    with pytest.MonkeyPatch.context() as mp:
        md5s = write_fake_cifar(root, name="cifar10", n_train=N_TRAIN, n_test=40, monkeypatch=mp)
    env = {**slurm_cluster.env, **subprocess_env_for_fake_cifar({"cifar10": md5s}, root.parent)}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return root, env


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The final weights and metric rows of the same run uninterrupted, outside SLURM."""
    out = tmp_path_factory.mktemp("reference") / "run"
    r = subprocess.run([sys.executable, "-m", "dlb.train", *RUN_ARGS, f"dataset.root={data[0]}",
                        f"hydra.run.dir={out}"], cwd=REPO, env=data[1], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return weights(out), metric_rows(out)


@pytest.fixture(autouse=True)
def no_jobs_left(slurm_cluster):
    """Each test starts and ends with an empty queue (a failed test's jobs would hold the node's CPUs)."""
    yield
    ids = squeue(slurm_cluster, "%i").split()
    if ids:
        subprocess.run(["scancel", *ids], env=slurm_cluster.env, timeout=30)


def squeue(cluster, fmt: str) -> str:
    return subprocess.run(["squeue", "-h", "-o", fmt], env=cluster.env, capture_output=True, text=True,
                          timeout=30).stdout


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False, map_location="cpu")["model"]


def assert_same_run(run_dir: Path, reference) -> None:
    ref_weights, ref_rows = reference
    got = weights(run_dir)
    assert all(torch.equal(v, got[k]) for k, v in ref_weights.items())
    assert metric_rows(run_dir) == ref_rows


class Sweep:
    """`python -m dlb.train -m ...` submitting to SLURM, in its own process group (killed at the deadline)."""

    def __init__(self, data, sweep_dir: Path, *args: str, env: dict | None = None):
        root, base_env = data
        self.dir = sweep_dir
        cmd = [sys.executable, "-m", "dlb.train", "-m", *RUN_ARGS, f"dataset.root={root}", "trainer.progress=true",
               *SLURM_ARGS, f"hydra.sweep.dir={sweep_dir}", *args]
        self.p = subprocess.Popen(cmd, cwd=REPO, env={**base_env, **(env or {})}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def finish(self, timeout: float) -> tuple[int, str]:
        try:
            out, _ = self.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            out, _ = self.p.communicate()
            pytest.fail(f"the sweep did not end within {timeout:.0f} s:\n{out[-3000:]}")
        return self.p.returncode, out

    def finish_releasing(self, cluster, timeout: float) -> tuple[int, str]:
        """finish(), starting each requeued job at once instead of after SLURM's hold (BeginTime, ~2 minutes), with
        the time limit it was submitted with."""
        end = time.monotonic() + timeout
        while self.p.poll() is None and time.monotonic() < end:
            for job in re.findall(r"^(\S+) PENDING BeginTime", squeue(cluster, "%i %T %r"), re.M):
                subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now", f"TimeLimit={TIME_LIMIT_MIN}"],
                               env=cluster.env, timeout=30)
            time.sleep(1)
        return self.finish(max(1.0, end - time.monotonic()))

    def job_id(self, timeout: float = 120) -> str:
        return wait_for(lambda: next((p.name for p in (self.dir / ".submitit").glob("*") if p.is_dir()), None),
                        timeout, "no job submitted")

    def job_log(self, job: str) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.dir / ".submitit" / job).glob("*_log.*"))

    def position(self, job: str) -> tuple[int, int]:
        """(epoch, step) of the job's latest progress line, 1-based epoch; (0, 0) before the first."""
        found = PROGRESS.findall(self.job_log(job))
        return (int(found[-1][0]), int(found[-1][1])) if found else (0, 0)

    def run_dirs(self) -> list[Path]:
        return sorted(p.parent for p in self.dir.rglob("summary.json"))


def wait_for(pred, timeout: float, what: str, every: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"{what} within {timeout:.0f} s")


def test_a_two_job_sweep_completes_reports_and_a_relaunch_skips_its_finished_runs(data, slurm_cluster, tmp_path):
    sweep_dir = tmp_path / "sweep"
    started = time.monotonic()
    rc, out = Sweep(data, sweep_dir, "seed=0,1", "trainer.epochs=2").finish(timeout=300)
    assert rc == 0, out[-3000:]
    runs = Sweep(data, sweep_dir).run_dirs()
    assert [json.loads((r / "summary.json").read_text())["status"] for r in runs] == ["completed"] * 2
    print(f"two-job sweep: {time.monotonic() - started:.0f} s")
    report = subprocess.run([sys.executable, "-m", "dlb.report", str(sweep_dir), "--out", str(tmp_path / "report")],
                            cwd=REPO, env=data[1], capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr[-2000:]
    table = json.loads((tmp_path / "report" / "report.json").read_text())
    assert table["n_runs"] == 2 and [r["seeds"] for r in table["rows"]] == [[0, 1]], report.stdout[-2000:]
    rows = {r: (r / "metrics.jsonl").read_text() for r in runs}
    # The same command again: each job finds its run complete and trains nothing.
    again = Sweep(data, sweep_dir, "seed=0,1", "trainer.epochs=2")
    rc, out = again.finish(timeout=300)
    assert rc == 0, out[-3000:]
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").rglob("*_log.out"))
    assert logs.count(": already complete, nothing to do") == 2, logs[-3000:]
    assert {r: (r / "metrics.jsonl").read_text() for r in runs} == rows


def test_preempted_mid_epoch_the_job_is_requeued_and_ends_equal_to_an_uninterrupted_run(data, reference,
                                                                                        slurm_cluster, tmp_path):
    sweep = Sweep(data, tmp_path / "sweep", env={"SUBMITIT_PREEMPT_SIGNAL": "USR1"})
    job = sweep.job_id()
    wait_for(lambda: sweep.position(job)[0] == 2 and 1 <= sweep.position(job)[1] <= STEPS // 2, 240,
             "epoch 2 not reached", every=0.05)
    signalled = time.monotonic()
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm_cluster.env, check=True, timeout=30)
    rc, out = sweep.finish_releasing(slurm_cluster, timeout=300)
    assert rc == 0, out[-3000:]
    log = sweep.job_log(job)
    # The run saves mid-epoch, then hands the signal to submitit, which requeues the job and exits.
    resumed = re.search(r"resumed in epoch 2 at step (\d+)", log)
    assert "Requeued job" in log and resumed and int(resumed.group(1)) >= 1, log[-3000:]
    print(f"preemption: signal to finished {time.monotonic() - signalled:.0f} s (hold released at once), "
          f"resumed at epoch 2 step {resumed.group(1)} of {STEPS}")
    (run,) = sweep.run_dirs()
    assert_same_run(run, reference)


def test_a_job_at_its_time_limit_is_requeued_and_resumes(data, slurm_cluster, tmp_path):
    # Submitted with 30 minutes and submitit's signal (SIGUSR2) 120 s before the limit; once training runs, the
    # limit drops to 2 minutes, so the signal is due at once: submitit requeues the job, the requeued job (limit
    # restored) resumes from the last epoch checkpoint and finishes.
    # Slurm sends a --signal up to 60 s off its due time: 60 epochs (~130 s on a quiet machine) outlast that; 12
    # (~30 s there) could finish first
    sweep = Sweep(data, tmp_path / "sweep", "trainer.epochs=60")
    job = sweep.job_id()
    wait_for(lambda: sweep.position(job) != (0, 0), 240, "training did not start")
    shortened = time.monotonic()
    subprocess.run(["scontrol", "update", f"jobid={job}", "TimeLimit=2"], env=slurm_cluster.env, check=True,
                   timeout=30)
    rc, out = sweep.finish_releasing(slurm_cluster, timeout=400)
    assert rc == 0, out[-3000:]
    log = sweep.job_log(job)
    resumed = re.search(r"resumed after epoch (\d+)/60", log)
    assert "Caught signal SIGUSR2" in log and "Requeued job" in log and resumed, log[-3000:]
    (run,) = sweep.run_dirs()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 60 * STEPS
    print(f"time limit: limit shortened to finished {time.monotonic() - shortened:.0f} s, resumed after epoch "
          f"{resumed.group(1)} (the interrupted epoch redone)")


def test_a_cancelled_job_ends_the_sweep_with_its_log_and_no_hang(data, slurm_cluster, tmp_path):
    sweep = Sweep(data, tmp_path / "sweep")
    job = sweep.job_id()
    wait_for(lambda: re.search(rf"^{job} RUNNING", squeue(slurm_cluster, "%i %T"), re.M), 120, "the job did not start")
    subprocess.run(["scancel", job], env=slurm_cluster.env, check=True, timeout=30)
    rc, out = sweep.finish(timeout=120)
    assert rc == EXIT_PREEMPTED, out[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("dlb: error:")]
    assert len(lines) == 1 and f"SLURM job {job} ended CANCELLED without a result" in lines[0], out[-3000:]
    assert str(tmp_path / "sweep" / ".submitit" / job) in lines[0]


@pytest.mark.parametrize("setting, value, fix", [
    ("cpus_per_task", 64, "set hydra.launcher.cpus_per_task="),
    ("mem_gb", 100000, "set hydra.launcher.mem_gb="),
    ("gpus_per_node", 1, "train on the CPU with trainer.device=cpu")])
def test_a_request_no_node_can_satisfy_is_refused_naming_the_setting_and_the_fix(slurm_cluster, monkeypatch, setting,
                                                                              value, fix):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    params = {"partition": None, "cpus_per_task": 1, "tasks_per_node": 1, "mem_gb": 1, "gpus_per_node": 0}
    check_request(params)  # what the node has passes
    with pytest.raises(ConfigError, match=rf"^hydra\.launcher\.{setting}={value}: partition cpu's nodes have .*{fix}"):
        check_request({**params, setting: value})
    with pytest.raises(ConfigError, match=r"^hydra\.launcher\.partition=gpu: no such partition; use one of cpu$"):
        check_request({**params, "partition": "gpu"})


def test_the_sweep_refuses_such_a_request_before_submitting(data, slurm_cluster, tmp_path):
    started = time.monotonic()
    rc, out = Sweep(data, tmp_path / "sweep", "hydra.launcher.cpus_per_task=64").finish(timeout=120)
    assert rc == 2, out[-3000:]
    assert out.strip().splitlines()[-1] == (f"dlb: error: hydra.launcher.cpus_per_task=64: partition cpu's nodes "
                                            f"have at most {slurm_cluster.cpus} CPUs for 1 task(s); set "
                                            f"hydra.launcher.cpus_per_task={slurm_cluster.cpus} or less"), out[-3000:]
    assert not (tmp_path / "sweep" / ".submitit").exists()  # nothing was submitted
    assert time.monotonic() - started < 60
