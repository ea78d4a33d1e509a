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
