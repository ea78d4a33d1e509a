"""The run folder has one owner (dlb.run.folder.RunFolder), and the test metrics one declaration (dlb.metrics.METRICS)."""
from __future__ import annotations

import ast
import json
import re

import torch

from conftest import REPO, compose
from dlb import metrics
from dlb.config import validate
from dlb.metrics import Metric
from dlb.run.folder import RunFolder, Summary
from dlb.trainer import Trainer

# The folder's own file names, as RunFolder declares them.
NAMES = [getattr(RunFolder, k) for k in ("CONFIG", "SUMMARY", "METRICS", "ENVIRONMENT", "LOG", "HYDRA", "HYDRA_CONFIG",
                                         "HYDRA_OVERRIDES", "LAST", "PREV", "BEST", "LOCK", "NOISY_LABELS", "WANDB_ID")]
OWNER = "dlb/run/folder.py"


def _code_strings(tree: ast.AST):
    """The string constants of a module that are not docstrings (prose may name the files)."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    in_fstrings = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):  # whole, as written: f"{x}.lock" is no file named .lock
            yield node.lineno, ast.unparse(node)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings | in_fstrings:
            yield node.lineno, node.value


def test_no_module_but_run_folder_spells_a_run_folder_file_name():
    pattern = re.compile(r"(?<![\w.}])(" + "|".join(re.escape(n) for n in NAMES) + r")(?![\w])")
    found = []
    for path in sorted([*(REPO / "dlb").rglob("*.py"), *(REPO / "scripts").rglob("*.py")]):
        rel = path.relative_to(REPO).as_posix()
        if rel == OWNER:
            continue
        for line, text in _code_strings(ast.parse(path.read_text())):
            found += [f"{rel}:{line}: {m}" for m in pattern.findall(text)]
    assert not found, found


def test_the_check_finds_a_spelled_name():
    tree = ast.parse('"""Docstrings may say summary.json."""\nPATH = "run/summary.json"\nLOG = f"{RUN}/train.log"\n')
    assert [text for _, text in _code_strings(tree)] == ["run/summary.json", "f'{RUN}/train.log'"]


def test_a_declared_metric_reaches_the_metrics_rows_and_the_summary(fake_cifar, tmp_path, monkeypatch):
    mean_conf = Metric("conf", "mean confidence", False, lambda o: float(o.confidence.mean()))
    top2 = Metric("top2", "top-2 accuracy (%)", False,
                  lambda o: 100 * float((o.logits.topk(2, 1).indices == o.labels[:, None]).any(1).float().mean()))
    monkeypatch.setattr(metrics, "METRICS", (*metrics.METRICS, mean_conf, top2))
    cfg = compose(["dataset=cifar10", f"dataset.root={fake_cifar}", "backbone=resnet8", "debug=tiny", "method=ce",
                   "trainer.batch_size=16", "trainer.eval_batch_size=20", "trainer.limit_train_batches=1"])
    validate(cfg)
    out = tmp_path / "run"
    summary = Trainer(cfg, out).fit()
    row = RunFolder(out).read_metrics()[-1]
    assert 0 < row["test_conf"] <= 1 and row["test_acc"] <= row["test_top2"] <= 100
    saved = json.loads(RunFolder(out).summary.read_text())
    assert saved["last_test_conf"] == row["test_conf"] == summary["last_test_conf"]
    assert saved["last_test_top2"] == row["test_top2"]
    assert Summary.read(out).last_test_top2 == row["test_top2"]


def test_evaluate_computes_every_declared_metric_on_the_whole_test_set(monkeypatch):
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x

    class Batch:
        def __init__(self, logits, y):
            self.views, self.y = [logits], y

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.5]])
    y = torch.tensor([0, 0, 0, 1])
    got = metrics.evaluate(Fixed(), [Batch(logits[:2], y[:2]), Batch(logits[2:], y[2:])])
    assert got["test_n"] == 4 and got["test_acc"] == 75.0 and got["test_err"] == 25.0
    nll = torch.nn.functional.cross_entropy(logits, y).item()
    assert abs(got["test_nll"] - nll) < 1e-6
    assert set(got) == {f"test_{m.name}" for m in metrics.METRICS} | {"test_n"}
