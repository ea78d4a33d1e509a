"""The package's shape: no import cycles, and a method is one file that every tool picks up (here one outside the
source tree, named in DLB_PLUGINS)."""
import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO
from fakedata import subprocess_env_for_fake_cifar, write_fake_cifar

PACKAGE = REPO / "dlb"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the dlb modules it imports, at module level or inside functions. A package that imports its
    modules through pkgutil (dlb.methods) imports all of them."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        tree, edges = ast.parse(path.read_text()), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from dlb import config` imports the module dlb.config; `from dlb.config import X` the module itself
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                           for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in files and t != name}
        if "pkgutil.iter_modules" in path.read_text():
            edges |= {m for m in files if m.startswith(name + ".")}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done, stack = set(), []

    def visit(node):
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        stack.append(node)
        for nxt in sorted(graph[node]):
            cycle = visit(nxt)
            if cycle:
                return cycle
        stack.pop()
        done.add(node)
        return None

    return next((c for c in map(visit, sorted(graph)) if c), None)


def test_no_import_cycles():
    graph = import_graph()
    assert graph["dlb.config"] >= {"dlb.errors", "dlb.groups"}  # the graph sees what it should
    assert "dlb.methods" in graph["dlb.groups"]  # (imported inside a function)
    assert "dlb.methods.dlb" in graph["dlb.methods"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


TOY = '''
"""A test method: plain CE, scaled."""
from dataclasses import dataclass

from dlb.methods.base import Method, batch_ce, register_method


@register_method("{name}")
class Toy(Method):
    label, order, color = "Toy", 50, "C7"
    compared_with = ("ce",)

    @dataclass
    class Config:
        name: str = "{name}"
        weight: float = 1.0

    def training_step(self, model, batch):
        logits = model(batch.views[0])
        return logits, {{"ce": self.weight * batch_ce(logits, batch)}}
'''


CHECK = textwrap.dedent('''
    import json, sys
    from dlb import sweep
    from dlb.analysis import plot as plot
    from dlb.analysis import report as report
    toy, runs_dir, out = sys.argv[1:]
    fixed, jobs = sweep.plan(["dataset=cifar10", f"method=ce,{toy}"])
    assert jobs == [["method=ce"], [f"method={toy}"]] and sweep.stages(jobs) == [jobs], jobs
    assert sweep.compose(jobs[1]).method.weight == 1.0
    assert report.main([runs_dir, "--out", out, "--name", "toy"]) == 0
    data = json.load(open(f"{out}/toy.json"))
    assert [(d["base"], d["method"]) for d in data["deltas"]] == [("ce", toy)], data["deltas"]
    assert "| ce → Toy " in open(f"{out}/toy.md").read()
    runs, _ = report.collect_runs([runs_dir])
    lines = {label: color for label, color, _ in plot._lines(report.table(runs))}
    assert lines["Toy"] == "C7" and lines["ce"] == "0.35", lines
    assert plot.main([runs_dir, "--out", f"{out}/fig"]) == 0
    print("ok")
''')


def test_a_method_is_one_file(tmp_path):
    """Train, plan, report and plot a method that exists only as its own file, outside the source tree."""
    toy_method = "toy"
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "toy.py").write_text(TOY.format(name=toy_method))
    data = tmp_path / "data"
    with pytest.MonkeyPatch.context() as mp:
        md5s = write_fake_cifar(data, name="cifar10", n_train=64, n_test=32, monkeypatch=mp)
    env = subprocess_env_for_fake_cifar({"cifar10": md5s}, tmp_path)
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1", DLB_PLUGINS=str(tmp_path / "plugins"))
    runs = tmp_path / "multirun"
    r = subprocess.run([sys.executable, "-m", "dlb.train", "-m", f"method=ce,{toy_method}", "debug=step",
                        "dataset=cifar10", f"dataset.root={data}", "backbone=resnet8", "trainer.device=cpu",
                        "seed=0", f"hydra.sweep.dir={runs}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in runs.glob("**/summary.json")]
    assert sorted(s["method"] for s in summaries) == sorted(["ce", toy_method])
    assert all(s["status"] == "completed" for s in summaries)
    r = subprocess.run([sys.executable, "-c", CHECK, toy_method, str(runs), str(tmp_path / "out")], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-3000:]
