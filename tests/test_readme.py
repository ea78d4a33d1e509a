"""The README's commands run as written after its set-up (`make install`, then the environment entered as the Quick
start says), on tiny fake data where they need data: the 'DLB in your own training loop' example, the inspection
commands, the sweep dry runs and the one-cell recipe (train, report, plot)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest
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


# --- the README's commands, run as written where they can run offline -------------------------------------------
def _readme_text() -> str:
    return " ".join((REPO / "README.md").read_text().split())  # commands may wrap across lines in prose


def _readme_command(start: str) -> list[str]:
    """The README's command line that starts with `start`, from its bash blocks, split into arguments."""
    for block in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S):
        for line in block.splitlines():
            if line.startswith(start):
                return shlex.split(line.split("  #")[0])
    raise AssertionError(f"README lost its command {start!r}")


def _setup() -> list[str]:
    """The Quick start's set-up lines, up to and including the one that enters the environment."""
    quick = re.search(r"## Quick start.*?```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    lines = [line.split("#")[0].strip() for line in quick.group(1).splitlines()]
    enter = next((i for i, line in enumerate(lines) if line.startswith("source ")), None)
    assert enter is not None, "README's Quick start no longer says how to enter the environment"
    return lines[:enter + 1]


def test_readme_enters_the_environment_right_after_installing_it():
    assert _setup() == ["make install", "source .venv/bin/activate"]


def _run(cmd: list[str], tmp_path, env=None) -> subprocess.CompletedProcess:
    """Run a README command as a reader would, in a shell that entered the environment as the Quick start says, paths
    under multirun/ and reports/ moved into tmp_path; it must succeed without a traceback."""
    assert cmd[0] == "python"
    enter = _setup()[-1]
    if not (REPO / enter.split()[-1]).is_file():
        pytest.skip(f"no {enter.split()[-1]} here: the README's `make install` was not run in this checkout")
    args = [re.sub(r"(^|=)(multirun|reports)/", lambda m: f"{m[1]}{tmp_path}/{m[2]}/", a) for a in cmd[1:]]
    r = subprocess.run(["bash", "-c", f"{enter} && {shlex.join(['python', *args])}"], cwd=REPO, capture_output=True,
                       text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", **(env or {})})
    assert "Traceback (most recent call last)" not in r.stderr, r.stderr[-3000:]
    assert r.returncode == 0, f"{' '.join(cmd)}: exit {r.returncode}\n{r.stderr[-3000:]}"
    return r


def test_readme_inspection_commands_run(tmp_path):
    text = _readme_text()
    for cmd in ("python -m dlb.train --cfg job", "python -m dlb.train --help"):
        assert cmd in text, cmd
    assert "method:" in _run(["python", "-m", "dlb.train", "--cfg", "job"], tmp_path).stdout
    help_text = _run(["python", "-m", "dlb.train", "--help"], tmp_path).stdout
    assert "method: ce, cskd" in help_text and "schema/" not in help_text
    assert "126 jobs" in _run(_readme_command("python -m dlb.sweep experiment=table1_cifar100 "), tmp_path).stdout
    estimate = re.search(r"`(python -m dlb\.sweep experiment=table1_cifar100 backbone=resnet32[^`]*)`", text)
    dry_run = _run(shlex.split(estimate.group(1)), tmp_path)
    assert "6 jobs" in dry_run.stdout and "Training-time estimate" in dry_run.stdout


@pytest.mark.slow
def test_readme_one_cell_recipe_runs_on_fake_data(tmp_path):
    """The one-cell recipe (train CE and DLB x 3 seeds, report, plot) at one step per epoch on tiny fake CIFAR-100."""
    from fakedata import subprocess_env_for_fake_cifar, write_fake_cifar

    md5s = write_fake_cifar(tmp_path / "data", name="cifar100", n_train=64, n_test=20)
    env = subprocess_env_for_fake_cifar({"cifar100": md5s}, tmp_path)
    train = _readme_command("python -m dlb.train -m dataset=cifar100 backbone=resnet32 method=ce,dlb seed=0,1,2")
    _run(train + ["debug=step", f"dataset.root={tmp_path}/data"], tmp_path, env)
    report = _run(_readme_command("python -m dlb.report multirun/cifar100_resnet32"), tmp_path)
    assert "**6 runs**" in report.stdout and "ce → dlb" in report.stdout
    assert (tmp_path / "reports" / "cifar100_resnet32" / "cifar100_resnet32.md").is_file()
    _run(_readme_command("python -m dlb.plot multirun/cifar100_resnet32"), tmp_path)
    assert (tmp_path / "reports" / "cifar100_resnet32" / "curves_cifar100_cifar_resnet32.png").is_file()
