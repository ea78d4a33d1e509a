"""The README's 'DLB in your own training loop' example runs as written (on tiny CIFAR-100-format data)."""
from __future__ import annotations

import os
import re

import torch

from conftest import REPO


def test_readme_own_loop_example_runs(tmp_path, monkeypatch):
    from fakedata import write_fake_cifar

    write_fake_cifar(tmp_path / "data", name="cifar100", n_train=20, n_test=4, monkeypatch=monkeypatch)
    text = (REPO / "README.md").read_text()
    code = re.search(r"## DLB in your own training loop.*?```python\n(.*?)```", text, re.S | re.I)
    assert code, "README lost its own-loop example"
    src = code.group(1).replace("range(240)", "range(2)")
    monkeypatch.chdir(tmp_path)
    steps = []
    import timm

    import dlb.models  # noqa: F401

    def my_model():
        net = timm.create_model("cifar_resnet8", num_classes=100)
        net.register_forward_hook(lambda *a: steps.append(1))
        return net

    scope = {"my_model": my_model}
    exec(compile(src, "README.md", "exec"), scope)
    assert set(scope["losses"]) == {"ce", "kd"} and torch.isfinite(sum(scope["losses"].values()))
    assert len(steps) == 2 * 1 * 2 - 1  # 2 epochs x 1 batch x 2 forwards, minus the run's first step
