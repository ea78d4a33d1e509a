"""The Makefile's contract: `make help` shows real values, `make test`/`make demo` install on first use (and only
then), `make report` builds tables and plots outside the committed results/. Checked with `make -n` (nothing runs)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def make(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "PY")}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True, env=env)


def test_help_prints_values_not_variables():
    out = make("help", "VENV=/tmp/some-venv").stdout
    assert "$(" not in out and "Create /tmp/some-venv and install" in out


def test_test_and_demo_install_first_only_when_needed(tmp_path):
    venv = tmp_path / "venv"
    for target in ("test", "demo"):
        assert "-m venv" in make("-n", target, f"VENV={venv}").stdout  # fresh clone: install first
    venv.mkdir()
    (venv / ".installed").touch()
    os.utime(venv / ".installed", (2e9, 2e9))  # newer than pyproject.toml
    assert "-m venv" not in make("-n", "test", f"VENV={venv}").stdout
    os.utime(venv / ".installed", (1e9, 1e9))  # pyproject.toml changed since
    assert "-m venv" in make("-n", "test", f"VENV={venv}").stdout
    assert "-m venv" in make("-n", "install", f"VENV={venv}").stdout
    assert "-m venv" not in make("-n", "test", f"VENV={venv}", "PY=python3").stdout  # the caller's interpreter
    assert "scripts/demo.py seed=1" in make("-n", "demo", f"VENV={venv}", "PY=python3", "ARGS=seed=1").stdout


def test_report_writes_outside_results():
    r = make("report")
    assert r.returncode != 0 and "usage: make report ROOTS=" in r.stdout
    out = make("-n", "report", "ROOTS=multirun/x outputs", "PY=python3").stdout
    assert "-m dlb.report multirun/x outputs --name report --out reports/x" in out
    assert "-m dlb.plot multirun/x outputs --out reports/x" in out


def test_claims_target_runs_every_claim_experiment_into_one_folder():
    out = make("-n", "reproduce-claims-cpu", "PY=python3", "SWEEP_ROOT=/tmp/sw").stdout
    claims = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("cpu_claim[0-9]*.yaml"))
    assert len(claims) >= 5 and all(out.count(f" {e} ") + out.count(f" {e};") == 2 for e in claims), out
    assert out.count("hydra.sweep.dir=/tmp/sw/cpu_claims") == 4 and "cpu_dlb_sensitivity" in out
    assert "--part 0/2" in out and "--part 1/2" in out  # two processes, each with its share of the seeds
    assert "-m dlb.report /tmp/sw/cpu_claims --seeds 0,1,2,3,4" in out
