"""dlb.device.placement.set_threads: the CPU thread count is chosen deliberately, never torch's one-per-core default."""
from __future__ import annotations

import os

import pytest
import torch

from dlb.device.placement import set_threads


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_requested_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert set_threads(2) == 2 and torch.get_num_threads() == 2
    assert set_threads(0) == 1  # at least one


def test_env_then_cores_per_job(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert set_threads(None, jobs=8) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert set_threads(None) == 8
    assert set_threads(None, jobs=3) == 2 and torch.get_num_threads() == 2
    assert set_threads(None, jobs=16) == 1


def test_joblib_launcher_gives_each_job_one_thread():
    from dlb.sweep import compose

    assert compose(["launcher=gpus"], with_hydra=True).hydra.job.env_set.OMP_NUM_THREADS == "1"


def test_a_busy_cpu_gets_a_note_naming_the_knob(monkeypatch):
    from dlb.device.placement import busy_cpu_note

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 2.0, 2.0))
    assert "load 2.0 on 2 cores" in busy_cpu_note(2) and "trainer.threads=<n>" in busy_cpu_note(2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert busy_cpu_note(2) is None
