"""dlb.sweep's dry run: the training-time estimate names the device it was measured on, and CPU hours are never
called GPU hours."""
from __future__ import annotations

from dlb import sweep

ONE_CELL = ["experiment=table1_cifar100", "backbone=resnet32", "method=ce,dlb", "seed=0"]


def test_estimate_names_the_measured_device(monkeypatch, capsys):
    cpu = {"device": "cpu: Intel(R) Xeon(R) Processor (1 threads)",
           "img_per_s": {"cifar_resnet32/ce": 100.0, "cifar_resnet32/dlb": 50.0}}
    monkeypatch.setattr(sweep, "_throughputs", lambda: cpu)
    assert sweep.main(ONE_CELL) == 0
    out = capsys.readouterr().out
    # 240 epochs x 50000 images at 100 and 50 img/s
    assert "100.0 CPU hours on cpu: Intel(R) Xeon(R) Processor (1 threads)" in out
    assert "not a GPU figure" in out and "GPU-hour" not in out and "GPU hours" not in out

    monkeypatch.setattr(sweep, "_throughputs", lambda: {**cpu, "device": "NVIDIA H200"})
    assert sweep.main(ONE_CELL) == 0
    assert "100.0 GPU hours on NVIDIA H200" in capsys.readouterr().out


def _planned_jobs(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.startswith("  ")]


def test_parts_split_the_grid_by_seed_without_overlap(capsys):
    """--part I/N: each process its share of the seeds; together exactly the grid, every seed in one part only."""
    grid = ["experiment=cpu_claim1_backbones", "--no-estimate"]
    assert sweep.main(grid) == 0
    every = _planned_jobs(capsys.readouterr().out)
    parts = []
    for part in ("0/2", "1/2"):
        assert sweep.main([*grid, "--part", part]) == 0
        parts.append(_planned_jobs(capsys.readouterr().out))
    assert sorted(parts[0] + parts[1]) == sorted(every) and len(every) == 20
    seeds = [{job.rsplit("seed=", 1)[1] for job in jobs} for jobs in parts]
    assert seeds == [{"0", "2", "4"}, {"1", "3"}]


def test_a_part_without_jobs_runs_nothing_and_a_bad_part_is_one_line(capsys):
    assert sweep.main(["experiment=cpu_dlb_sensitivity", "--part", "1/2", "--no-estimate", "--run"]) == 0
    assert "0 jobs" in capsys.readouterr().out
    import pytest

    with pytest.raises(SystemExit) as e:
        sweep.main(["experiment=cpu_claim1_backbones", "--part", "2/2"])
    assert e.value.code == 2 and "--part 2/2: use I/N" in capsys.readouterr().err
