"""Results aggregation (dlb.report) and figures (dlb.plot) on run folders written here by hand."""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from dlb.analysis import report as report
from dlb.analysis.report import build_report, collect_runs, render_latex, render_markdown
from dlb.analysis.runs import collect_wandb_runs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_config(dataset="cifar10", backbone="cifar_resnet32", method="ce", seed=0, augment="none", noise="none",
               rate=0.0, **method_kwargs) -> dict:
    """A plausible .hydra/config.yaml content (unresolved interpolations included, as Hydra writes it)."""
    method_cfg = {"name": method, **({"T": 3.0, "alpha": 1.0} if "dlb" in method else {}), **method_kwargs}
    return {
        "dataset": {"name": dataset, "root": "${data_root}", "download": False, "train_subset": None,
                    "test_subset": None, "image_size": 32, "augment": "crop_flip", "padding": 4, "loader": "device",
                    "num_workers": 4},
        "backbone": {"name": backbone, "kwargs": {}},
        "method": method_cfg,
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "gamma": 0.1,
                  "milestones": None, "milestone_fractions": [0.625, 0.75, 0.875]},
        "augment": {"name": augment, "size": 16, "prob": 0.5, "beta": 1.0, "views": "shared"},
        "noise": {"name": noise, "rate": rate, "seed": 0},
        "trainer": {"epochs": 4, "batch_size": 64, "eval_batch_size": 1000, "device": "auto", "progress": None},
        "logger": {"name": "none", "project": "dlb-reproduction", "entity": None, "mode": None, "tags": []},
        "data_root": "${oc.env:DLB_DATA,data}",
        "seed": seed,
        "resume": True,
    }


def write_run(root: Path, rel: str, errs: list[float], *, status="completed", epochs=4, config=None,
              extra_rows=None, write_config=True, device="cpu", overrides=None, **config_kw) -> Path:
    """A run folder as dlb.trainer + Hydra leave it: summary.json, metrics.jsonl, .hydra/config.yaml (and
    .hydra/overrides.yaml: the command line's overrides, where given)."""
    cfg = config or run_config(**config_kw)
    cfg["trainer"]["device"] = device
    d = root / rel
    (d / ".hydra").mkdir(parents=True)
    rows = []
    for i, err in enumerate(errs):
        row = {"epoch": i + 1, "lr": 0.05, "train_loss": 2.0 / (i + 1), "train_ce": 2.0 / (i + 1),
               "train_acc": 50 + i, "test_err": err, "test_acc": 100 - err, "test_nll": 0.3, "test_ece": 0.02}
        row.update((extra_rows or (lambda epoch: {}))(i + 1))
        rows.append(row)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    best = min(range(len(errs)), key=lambda i: errs[i]) if errs else None
    m = cfg["method"]["name"]
    summary = {"status": status, "cell": f"{cfg['dataset']['name']}/{cfg['backbone']['name']}/{m}",
               "dataset": cfg["dataset"]["name"], "backbone": cfg["backbone"]["name"], "method": m,
               "seed": cfg["seed"], "epochs": epochs, "epochs_completed": len(errs),
               "best_test_err": errs[best] if errs else None, "best_test_acc": 100 - errs[best] if errs else None,
               "best_epoch": best + 1 if errs else None, "last_test_err": errs[-1] if errs else None,
               "last_test_acc": 100 - errs[-1] if errs else None, "last_test_nll": 0.3, "last_test_ece": 0.02,
               "train_time_s": 1.0, "num_params": 470000, "git_commit": "abc", "device_name": "cpu"}
    (d / "summary.json").write_text(json.dumps(summary, indent=2))
    if write_config:
        (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    if overrides is not None:
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    return d


# Final test errors, chosen so every mean is easy to check by hand.
CE10 = {0: [40.0, 9.0, 7.0, 7.3], 1: [41.0, 9.5, 7.2, 7.5], 2: [39.0, 9.2, 7.4, 7.6]}  # best 7.0/7.2/7.4
DLB10 = {0: [38.0, 8.0, 6.5, 7.3], 1: [38.5, 8.1, 6.7, 7.4]}  # seed 2 missing; best 6.5/6.7, last 7.3/7.4


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "outputs"
    for seed, errs in CE10.items():
        write_run(root, f"cifar10/cifar_resnet32/ce/seed{seed}", errs, method="ce", seed=seed)
    for seed, errs in DLB10.items():
        write_run(root, f"cifar10/cifar_resnet32/dlb/seed{seed}", errs, method="dlb", seed=seed,
                  device=f"cuda:{seed}")  # a run-free key: must not split the cell
    # Same cell, different config (an alpha ablation in a sweep folder): must not be averaged in.
    write_run(root, "multirun/2026-01-01/method.alpha=0.5,seed=0", [30.0, 6.0, 5.0, 5.1], method="dlb", seed=0,
              alpha=0.5)
    # CIFAR-100: one usable run, one unfinished, one diverged; dlb with a "completed" run that stopped early.
    write_run(root, "cifar100/cifar_resnet32/ce/seed0", [60.0, 35.0, 30.0, 31.0], dataset="cifar100", seed=0)
    write_run(root, "cifar100/cifar_resnet32/ce/seed1", [60.0, 36.0], status="running", dataset="cifar100", seed=1)
    write_run(root, "cifar100/cifar_resnet32/ce/seed2", [60.0], status="diverged", dataset="cifar100", seed=2)
    write_run(root, "cifar100/cifar_resnet32/dlb/seed0", [55.0, 33.0, 28.0, 28.5], dataset="cifar100", method="dlb")
    write_run(root, "cifar100/cifar_resnet32/dlb/seed1", [55.0, 33.0, 28.4, 28.6], dataset="cifar100", method="dlb",
              seed=1)
    write_run(root, "cifar100/cifar_resnet32/dlb/seed2", [55.0, 33.0, 29.0], dataset="cifar100", method="dlb",
              seed=2)
    # Broken folders: listed as skipped, never a crash.
    bad = write_run(root, "broken/truncated", [50.0], seed=0)
    (bad / "summary.json").write_text((bad / "summary.json").read_text()[:40])
    write_run(root, "broken/no_config", [50.0], seed=0, write_config=False)
    return root


def _rows(rep, cell, variant=None):
    """The clean rows of a cell ("dataset/backbone/method"), of one variant where given."""
    return [r for r in rep["rows"] if f"{r['dataset']}/{r['backbone']}/{r['method']}" == cell and not r["setting"]
            and variant in (None, r["variant"])]


def test_collect_lists_broken_runs_as_skipped(runs_root):
    runs, skipped = collect_runs([runs_root])
    assert len(runs) == 12
    reasons = {Path(s["path"]).name: s["reason"] for s in skipped}
    assert set(reasons) == {"truncated", "no_config"}
    assert "unreadable summary.json" in reasons["truncated"]
    assert "no config.json or .hydra/config.yaml" in reasons["no_config"]


def test_cell_means_flags_and_variants(runs_root):
    runs, skipped = collect_runs([runs_root])
    rep = build_report(runs, skipped, paper=report.load_paper(report.DEFAULT_PAPER))
    assert rep["expected_seeds"] == [0, 1, 2]

    [ce] = _rows(rep, "cifar10/cifar_resnet32/ce")
    assert ce["n"] == 3 and ce["seeds"] == [0, 1, 2] and ce["flags"] == []
    assert ce["best"]["mean"] == pytest.approx(7.2) and ce["best"]["std"] == pytest.approx(0.2)
    assert ce["last"]["mean"] == pytest.approx(statistics.mean([7.3, 7.5, 7.6]))
    assert ce["last"]["std"] == pytest.approx(statistics.stdev([7.3, 7.5, 7.6]))  # sample std, ddof=1
    assert ce["paper"]["status"] == "unknown"

    # The alpha=1 runs and the alpha=0.5 one are variants of an alpha ablation: never averaged together (it would
    # pull the mean to 6.07), never flagged as mismatched, neither called the main one.
    [dlb] = _rows(rep, "cifar10/cifar_resnet32/dlb", "method.alpha=1.0")
    assert dlb["n"] == 2 and dlb["best"]["mean"] == pytest.approx((6.5 + 6.7) / 2)
    assert dlb["last"]["mean"] == pytest.approx((7.3 + 7.4) / 2)
    assert dlb["flags"] == ["missing seeds: 2"] and dlb["swept"] == "method.alpha"
    [ablation] = _rows(rep, "cifar10/cifar_resnet32/dlb", "method.alpha=0.5")
    assert ablation["n"] == 1 and "main" not in ablation
    assert ablation["best"]["mean"] == 5.0 and ablation["best"]["std"] is None
    assert "missing seeds: 1, 2" in ablation["flags"]

    # Unfinished and diverged runs are flagged and kept out of the mean.
    [ce100] = _rows(rep, "cifar100/cifar_resnet32/ce")
    assert ce100["n"] == 1 and ce100["best"]["mean"] == 30.0 and ce100["best"]["std"] is None
    assert any(f.startswith("unfinished: 1 (seed 1 running 2/4") for f in ce100["flags"])
    assert "diverged: 1 (seed 2)" in ce100["flags"]
    assert not any(f.startswith("missing seeds") for f in ce100["flags"])  # present, just not usable
    [dlb100] = _rows(rep, "cifar100/cifar_resnet32/dlb")
    assert dlb100["n"] == 2 and any(f.startswith("unfinished: 1 (seed 2 completed 3/4") for f in dlb100["flags"])
    assert rep["n_unfinished"] == 2 and rep["n_diverged"] == 1

    md = render_markdown(rep)
    assert "## Flags" in md and "## Skipped (2)" in md and "truncated" in md and "no_config" in md
    assert "7.20 ± 0.20" in md and "| unknown |" in md
    assert md.index("## Flags") < md.index("## Skipped")
    assert "## Ablation: cifar10 / cifar_resnet32 / dlb, swept method.alpha" in md and "mismatched" not in md


def test_explicit_seeds_flag_every_cell(runs_root):
    runs, skipped = collect_runs([runs_root])
    rep = build_report(runs, skipped, seeds=[0, 1, 2, 3])
    [ce] = _rows(rep, "cifar10/cifar_resnet32/ce")
    assert ce["flags"] == ["missing seeds: 3"]


def test_duplicate_seed_is_flagged_and_counted_once(tmp_path):
    write_run(tmp_path / "a", "seed0", [9.0, 8.0, 7.0, 7.0], seed=0)
    write_run(tmp_path / "b", "seed0", [9.0, 8.0, 6.0, 6.0], seed=0)  # a rerun elsewhere, same config
    runs, skipped = collect_runs([tmp_path / "a", tmp_path / "b", tmp_path / "a"])  # overlapping roots: read once
    [row] = build_report(runs, skipped)["rows"]
    assert len(runs) == 2 and row["n"] == 1 and row["best"]["mean"] == 7.0
    assert row["flags"][0].startswith("duplicate seeds: seed 0 x2")


def test_rate_zero_noise_and_experiment_label_do_not_split_a_cell(tmp_path):
    write_run(tmp_path, "table1/seed0", [9.0, 8.0, 7.0, 7.0], seed=0, config={
        **run_config(seed=0), "experiment_name": "table1_cifar10"})
    write_run(tmp_path, "noise/seed1", [9.0, 8.0, 7.4, 7.4], seed=1, config={
        **run_config(seed=1, noise="symmetric", rate=0.0), "experiment_name": "noise_cifar10"})
    [row] = build_report(*collect_runs([tmp_path]))["rows"]
    assert row["setting"] == "" and row["n"] == 2 and row["flags"] == []
    assert row["best"]["mean"] == pytest.approx(7.2)


def test_speed_settings_do_not_split_a_cell_but_ddp_does(tmp_path):
    """A rerun of one seed with other speed/placement settings (a resumed run rewrites its config) is the same cell;
    a DDP run trains with a world_size x larger global batch, so it is a variant."""
    speed = [{"trainer.compile": "default", "optim.fused": "true"}, {"trainer.jobs_per_gpu": 4},
             {"method.backward": "split"}]
    for seed, overrides in enumerate(speed):
        cfg = run_config(method="dlb", seed=seed)
        for key, value in overrides.items():
            group, name = key.split(".")
            cfg.setdefault(group, {})[name] = value
        write_run(tmp_path, f"dlb/seed{seed}", [9.0, 8.0, 7.0 + seed / 10, 7.5], config=cfg)
    ddp = run_config(method="dlb", seed=0)
    ddp["trainer"]["ddp"] = True
    write_run(tmp_path, "ddp/seed0", [9.0, 8.0, 6.0, 6.0], config=ddp)
    rows = build_report(*collect_runs([tmp_path]))["rows"]
    assert [(r["variant"], r["n"]) for r in rows] == [("trainer.ddp=<absent>", 3), ("trainer.ddp=true", 1)]
    assert rows[0]["best"]["mean"] == pytest.approx(7.1)


def test_dlb_minus_baseline_against_the_paper_range(runs_root):
    runs, skipped = collect_runs([runs_root])
    rep = build_report(runs, skipped, paper=report.load_paper(report.DEFAULT_PAPER))
    by = {(d["dataset"], d["base"], d["method"]): d for d in rep["deltas"]}
    d = by[("cifar10", "ce", "dlb")]  # paired by seed: seeds 0 and 1 (DLB has no seed 2), alpha=1 runs only
    assert d["best"]["seeds"] == [0, 1] and d["best"]["values"] == pytest.approx([0.5, 0.5])
    assert d["delta_best"] == pytest.approx(0.5) and d["check_best"] == "in range"  # CIFAR-10: 0.37-1.01
    assert d["last"]["values"] == pytest.approx([0.0, 0.1]) and d["check_last"] == "below"
    assert d["last"]["lo"] < 0 < d["last"]["hi"] and d["last"]["verdict"] == "INCONCLUSIVE"
    assert d["claim"]["min"] == 0.37 and d["claim"]["max"] == 1.01
    d100 = by[("cifar100", "ce", "dlb")]  # CE has one usable seed: one pair, no interval
    assert d100["delta_best"] == pytest.approx(30.0 - 28.0) and d100["check_best"] == "in range"
    assert d100["best"]["lo"] is None and d100["best"]["verdict"] == "INCONCLUSIVE"
    assert report.check(1.5, d["claim"]) == "above"


def test_augment_noise_and_ddgsd_pairs(tmp_path):
    root = tmp_path / "runs"
    for seed in (0, 1):
        write_run(root, f"a/ce{seed}", [20.0, 8.0], epochs=2, augment="cutout", seed=seed)
        write_run(root, f"a/dlb{seed}", [20.0, 7.5], epochs=2, augment="cutout", method="dlb", seed=seed)
        write_run(root, f"g/ddgsd{seed}", [20.0, 7.0], epochs=2, method="ddgsd", seed=seed)
        write_run(root, f"g/both{seed}", [20.0, 7.1], epochs=2, method="ddgsd_dlb", seed=seed)
        write_run(root, f"n/ce{seed}", [30.0, 15.0], epochs=2, noise="symmetric", rate=0.4, seed=seed)
        write_run(root, f"n/dlb{seed}", [30.0, 12.0], epochs=2, noise="symmetric", rate=0.4, method="dlb", seed=seed)
    runs, skipped = collect_runs([root])
    rep = build_report(runs, skipped, paper=report.load_paper(report.DEFAULT_PAPER))
    by = {(d["setting"], d["base"]): d for d in rep["deltas"]}
    assert by[("cutout", "ce")]["delta_best"] == pytest.approx(0.5) and by[("cutout", "ce")]["check_best"] == "gain"
    assert by[("", "ddgsd")]["delta_best"] == pytest.approx(-0.1) and by[("", "ddgsd")]["check_best"] == "no gain"
    assert by[("symmetric@0.4", "ce")]["check_last"] == "gain"
    papers = {(r["setting"], r["method"]): r["paper"]["status"] for r in rep["rows"]}
    assert papers[("cutout", "dlb")] == "unknown" and papers[("symmetric@0.4", "dlb")] == "unknown"
    assert papers[("", "ddgsd_dlb")] == "unknown"


def test_reference_file_holds_no_invented_numbers():
    ref = yaml.safe_load((REPO / "results" / "paper" / "reference.yaml").read_text())

    def leaves(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from leaves(v)
        else:
            yield x

    for name, table in ref["tables"].items():
        for dataset, backbones in table["cells"].items():
            for entries in backbones.values():
                assert set(leaves(entries)) == {"unknown"}, (name, dataset)
    assert len(ref["tables"]["main"]["cells"]["cifar100"]) == 6
    ranges = {k: (v["min"], v["max"]) for k, v in ref["claims"]["dlb_error_reduction"].items()}
    assert ranges == {"cifar10": (0.37, 1.01), "cifar100": (0.83, 2.50), "tinyimagenet": (0.81, 3.17)}


def _check_latex(tex: str):
    stripped = re.sub(r"\\[{}]", "", tex)
    assert stripped.count("{") == stripped.count("}")
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") >= 1
    for block in re.findall(r"\\begin\{tabular\}\{(\w+)\}(.*?)\\end\{tabular\}", tex, re.S):
        spec, body = block
        rows = [line for line in body.splitlines() if line.endswith(r"\\")]
        assert rows
        for row in rows:
            assert len(re.findall(r"(?<!\\)&", row)) == len(spec) - 1, row
        for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
            assert rule in body


def test_latex_is_balanced_and_escaped(runs_root):
    runs, skipped = collect_runs([runs_root])
    tex = render_latex(build_report(runs, skipped, paper=report.load_paper(report.DEFAULT_PAPER),
                                    command="python -m dlb.report x"))
    _check_latex(tex)
    assert r"cifar\_resnet32" in tex and "7.20 $\\pm$ 0.20" in tex
    assert report.latex_escape("a_b&c%d#e$f{g}h~i^j\\") == (r"a\_b\&c\%d\#e\$f\{g\}h\textasciitilde{}i"
                                                           r"\textasciicircum{}j\textbackslash{}")


def test_cli_writes_markdown_latex_json(runs_root, tmp_path, capsys):
    out = tmp_path / "results"
    assert report.main([str(runs_root), "--out", str(out), "--name", "table1", "--metric", "last"]) == 0
    md = (out / "table1.md").read_text()
    assert md.startswith("# DLB reproduction") and "--metric last" in md and "**12 runs**" in md
    assert md in capsys.readouterr().out
    _check_latex((out / "table1.tex").read_text())
    data = json.loads((out / "table1.json").read_text())
    assert data["metric"] == "last" and len(data["skipped"]) == 2
    assert {d["check_last"] for d in data["deltas"] if d["dataset"] == "cifar10"} == {"below"}


def test_cli_without_runs_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "no runs found" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


class FakeWandbRun:
    def __init__(self, run_id, config, summary, state="finished", history=()):
        self.id, self.config, self.summary, self.state = run_id, config, summary, state
        self._history = list(history)

    def scan_history(self):
        return iter(self._history)


class FakeApi:
    projects: dict = {}

    def runs(self, path):
        if path not in self.projects:
            raise ValueError(f"project {path} not found")
        return self.projects[path]


def test_wandb_project_through_mocked_api(monkeypatch, tmp_path):
    wandb = pytest.importorskip("wandb")

    def summary(method, seed, best, last, **kw):
        return {"status": "completed", "dataset": "cifar10", "backbone": "cifar_resnet32", "method": method,
                "seed": seed, "epochs": 4, "epochs_completed": 4, "best_test_err": best, "last_test_err": last,
                "_runtime": 12.0, **kw}

    cfg = lambda method, seed: {**run_config(method=method, seed=seed), "_wandb": {"cli_version": "0.31"}}  # noqa
    FakeApi.projects = {"me/dlb": [
        FakeWandbRun("a", cfg("ce", 0), summary("ce", 0, 7.0, 7.3), history=[{"epoch": 1, "test_err": 7.3}]),
        FakeWandbRun("b", cfg("ce", 1), summary("ce", 1, 7.4, 7.5)),
        FakeWandbRun("c", cfg("dlb", 0), summary("dlb", 0, 6.6, 6.9)),
        FakeWandbRun("d", cfg("dlb", 1), {"_step": 3}, state="running"),  # the trainer never wrote its summary
        FakeWandbRun("e", {"lr": 0.1}, {"status": "completed"}),  # not a dlb.train run
    ]}
    monkeypatch.setattr(wandb, "Api", FakeApi)
    runs, skipped = collect_wandb_runs("me/dlb")
    assert [r.path for r in runs] == ["wandb:me/dlb/a", "wandb:me/dlb/b", "wandb:me/dlb/c", "wandb:me/dlb/d"]
    assert runs[0].history() == [{"epoch": 1, "test_err": 7.3}]
    assert [s["path"] for s in skipped] == ["wandb:me/dlb/e"]
    assert runs[3].status == "running" and runs[3].state == "unfinished"

    out = tmp_path / "r"
    assert report.main(["--wandb", "me/dlb", "--out", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    ce = next(r for r in data["rows"] if r["method"] == "ce")
    assert ce["n"] == 2 and ce["best"]["mean"] == pytest.approx(7.2) and ce["flags"] == []
    dlb = next(r for r in data["rows"] if r["method"] == "dlb")
    assert dlb["n"] == 1 and dlb["flags"][0].startswith("unfinished: 1")
    assert data["sources"] == ["wandb:me/dlb"]

    _, skipped = collect_wandb_runs("me/nope")  # an API failure is a skipped entry, not a crash
    assert "could not list W&B runs" in skipped[0]["reason"]


# --- plots ----------------------------------------------------------------------------------------------------
def _dlb_rows(epoch):
    return {"train_kd": 0.5 / epoch, "train_consistency": 1 - 0.4 / epoch}


@pytest.fixture
def plot_root(tmp_path):
    root = tmp_path / "plots"
    for seed in (0, 1, 2):
        shift = 0.2 * seed
        write_run(root, f"ce/s{seed}", [60 - shift, 30 - shift, 12 - shift, 11.5 - shift], seed=seed)
        write_run(root, f"dlb/s{seed}", [58 - shift, 28 - shift, 11 - shift, 10.6 - shift], method="dlb",
                  seed=seed, extra_rows=_dlb_rows)
        for rate in (0.2, 0.4):
            write_run(root, f"noise{rate}/ce/s{seed}", [70, 40, 20 + 20 * rate, 21 + 20 * rate], noise="symmetric",
                      rate=rate, seed=seed)
            write_run(root, f"noise{rate}/dlb/s{seed}", [70, 40, 18 + 15 * rate, 19 + 15 * rate], method="dlb",
                      noise="symmetric", rate=rate, seed=seed, extra_rows=_dlb_rows)
    return root


def test_plots_are_png_files(plot_root, tmp_path):
    from dlb.analysis import plot as plot

    runs, _ = collect_runs([plot_root])
    out = tmp_path / "fig"
    notes = []
    files = plot.plot_all(runs, out, source="plots", notes=notes)
    names = {f.name for f in files}
    assert {"curves_cifar10_cifar_resnet32.png", "curves_cifar10_cifar_resnet32_symmetric-0.4.png",
            "noise_cifar10_cifar_resnet32.png", "dlb_dynamics_cifar10_cifar_resnet32.png"} <= names
    for f in files:
        data = f.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 1000, f
    assert notes == []


def test_plots_use_the_runs_the_table_averages(plot_root):
    """A duplicate seed (the same run found under a second root) is counted once in the plots, as in the table."""
    from dlb.analysis import plot as plot

    write_run(plot_root / "copy", "ce/s0", [99.0, 99.0, 99.0, 99.0], seed=0)  # same seed, a rerun elsewhere
    df = report.table(collect_runs([plot_root])[0])
    ce = df[(df["method"] == "ce") & (df["noise"] == "none")]
    [(_, _, used)] = list(plot._lines(ce))
    [row] = report.summarize(ce, [0, 1, 2])
    assert sorted(r.path for r in used) == sorted(row["runs"]) and len(used) == 3


def test_dynamics_without_the_keys_is_skipped_with_a_note(tmp_path, capsys, monkeypatch):
    from dlb.analysis import plot as plot

    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    root = tmp_path / "runs"
    write_run(root, "ce", [50.0, 40.0], epochs=2, seed=0)
    write_run(root, "dlb", [50.0, 39.0], epochs=2, method="dlb", seed=0)
    assert plot.main([str(root), "--out", str(tmp_path / "fig"), "--wandb"]) == 0
    out = capsys.readouterr().out
    assert "dlb_dynamics_cifar10_cifar_resnet32: skipped" in out
    assert "no project configured" in out  # --wandb without a project: a note, not a failure
    assert [p.name for p in (tmp_path / "fig").iterdir()] == ["curves_cifar10_cifar_resnet32.png"]


@pytest.fixture
def figures(monkeypatch):
    """The figure objects dlb.plot draws (kept open instead of closed after saving)."""
    from dlb.analysis import plot as plot

    kept = []
    monkeypatch.setattr(plot.plt, "close", kept.append)
    return kept


def _series_lines(ax) -> list:
    """The panel's named series (an errorbar's data line; not its caps and bars)."""
    return [h[0] if isinstance(h, tuple) else h for h in ax.get_legend_handles_labels()[0]]


def _series_looks(ax) -> list[tuple]:
    return [(str(line.get_color()), line.get_linestyle(), line.get_marker()) for line in _series_lines(ax)]


def test_figures_readable(plot_root, tmp_path, figures):
    """Legends below the panels (never over the data, none missing), markers on every line, every series of a
    panel distinct (DLB clean vs noisy), and no 'paper' panel without paper values."""
    from dlb.analysis import plot as plot

    write_run(plot_root, "short/s0", [50.0], epochs=1, dataset="cifar100", seed=0)  # a one-epoch run
    files = plot.plot_all(collect_runs([plot_root])[0], tmp_path / "fig", paper={})
    assert len(figures) == len(files) == 6  # curves: clean, 20%, 40%, cifar100; noise; dynamics
    for fig in figures:
        renderer = fig.canvas.get_renderer()
        assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
        legend_top = fig.legends[0].get_window_extent(renderer).y1
        assert all(legend_top <= ax.get_tightbbox(renderer).y0 + 1 for ax in fig.axes)  # below the panels
        for ax in fig.axes:
            assert all(line.get_marker() not in (None, "None", "") for line in _series_lines(ax))
            looks = _series_looks(ax)
            assert len(set(looks)) == len(looks), looks
            assert "paper" not in ax.get_title()
    dynamics = next(f for f, path in zip(figures, files) if path.name.startswith("dlb_dynamics"))
    assert len(dynamics.axes[0].get_lines()) == 3  # clean, 20% and 40% noise
    short = next(f for f, path in zip(figures, files) if path.name == "curves_cifar100_cifar_resnet32.png")
    assert [len(line.get_xdata()) for line in short.axes[0].get_lines()] == [1]


def test_noise_plot_shows_paper_values_only_where_known(plot_root, tmp_path, figures):
    from dlb.analysis import plot as plot

    paper = {"tables": {"noise": {"cells": {"cifar10": {"*": {"symmetric@0.4+dlb": {"value": 25.0},
                                                              "symmetric@0.2+ce": "unknown"}}}}}}
    [path] = plot.plot_noise(report.table(collect_runs([plot_root])[0]), tmp_path, "last", paper=paper)
    best, last = figures[0].axes
    assert "paper" not in best.get_title() and "paper" in last.get_title()
    [marks] = [line for line in last.get_lines() if line.get_marker() == "x"]
    assert list(marks.get_xdata()) == [40.0] and list(marks.get_ydata()) == [25.0]


def test_unfinished_run_shows_its_epochs(tmp_path):
    """A run at epoch 5 of 10 reads "running 5/10", from the summary or, where that is stale (written when the run
    started), from metrics.jsonl."""
    root = tmp_path / "runs"
    write_run(root, "fresh", [50.0] * 5, status="running", epochs=10, seed=0)
    stale = write_run(root, "stale", [50.0] * 5, status="running", epochs=10, seed=1)
    summary = json.loads((stale / "summary.json").read_text())
    (stale / "summary.json").write_text(json.dumps({**summary, "epochs_completed": 0}))
    runs, _ = collect_runs([root])
    assert {Path(r.path).name: r.epochs_done for r in runs} == {"fresh": 5, "stale": 5}
    [row] = build_report(runs, [])["rows"]
    assert "seed 0 running 5/10 epochs; seed 1 running 5/10 epochs" in row["flags"][0]


def test_cli_default_output_is_outside_results(runs_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert report.main([str(runs_root), "--name", "t1"]) == 0
    assert (tmp_path / "reports" / "t1" / "t1.md").is_file()


def test_sensitivity_heat_map_and_curves_keep_the_main_variant(tmp_path, figures):
    """A DLB T x alpha sweep: one heat map with each grid point's mean error; the curves show the main variant only."""
    from dlb.analysis import plot as plot

    root = tmp_path / "runs"
    errs = {(3.0, 1.0): [10.0, 10.4], (1.0, 1.0): [12.0], (3.0, 2.0): [11.0], (1.0, 2.0): [13.0], (6.0, 1.0): [14.0]}
    for (T, alpha), per_seed in errs.items():
        for seed, err in enumerate(per_seed):
            write_run(root, f"dlb/T{T}a{alpha}/s{seed}", [err + 5, err], epochs=2, method="dlb", seed=seed,
                      T=T, alpha=alpha, overrides=["method=dlb", f"method.T={T}", f"method.alpha={alpha}"])
    write_run(root, "ce/s0", [20.0, 15.0], epochs=2, seed=0)
    files = plot.plot_all(collect_runs([root])[0], tmp_path / "fig")
    [heat] = [f for f, path in zip(figures, files) if path.name.startswith("sensitivity_")]
    best_panel = heat.axes[0]
    assert best_panel.get_ylabel() == "method.T" and best_panel.get_xlabel() == "method.alpha"
    texts = {t.get_text() for t in best_panel.texts}
    # (3, 1) has seeds 0 and 1, the others seed 0: every point shows seed 0 only; (6, 2) was not run: no number
    assert {"10.00", "12.00", "11.00", "13.00", "14.00"} == texts
    [curves] = [f for f, path in zip(figures, files) if path.name.startswith("curves_")]
    assert len(curves.axes[0].get_lines()) == 2  # CE and DLB at its defaults (T=3, alpha=1)


def _ablation(root, with_ce=True, **kw):
    """`python -m dlb.train -m method=dlb method.T=2,4 method.alpha=0.5,1 seed=0,1,2` (and CE), as Hydra leaves it."""
    for seed in range(3):
        for T in (2.0, 4.0):
            for alpha in (0.5, 1.0):
                err = 10.0 - T / 4 - alpha / 2 + seed / 10
                write_run(root, f"dlb/T{T}a{alpha}/s{seed}", [err + 5, err], epochs=2, method="dlb", seed=seed,
                          T=T, alpha=alpha, overrides=["method=dlb", f"method.T={T}", f"method.alpha={alpha}",
                                                       f"seed={seed}"], **kw)
        if with_ce:
            write_run(root, f"ce/s{seed}", [16.0, 11.0 + seed / 10], epochs=2, seed=seed,
                      overrides=["method=ce", f"seed={seed}"], **kw)


def test_adhoc_ablation_is_reported_as_an_ablation(tmp_path, capsys):
    root = tmp_path / "sweep"
    _ablation(root)
    assert report.main([str(root), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert "mismatched" not in md and "main" not in md and "NO RUNS" not in md
    assert all(r["flags"] == [] for r in rep["rows"])
    assert [r["variant"] for r in rep["rows"] if r["method"] == "dlb"] == [
        "method.T=2.0, method.alpha=0.5", "method.T=2.0, method.alpha=1.0", "method.T=4.0, method.alpha=0.5",
        "method.T=4.0, method.alpha=1.0"]
    [ablation] = rep["ablations"]
    assert ablation["swept"] == ["method.T", "method.alpha"] and ablation["base"] == "ce"
    v = ablation["variants"][0]  # T=2, alpha=0.5: 10 - 0.5 - 0.25 = 9.25 (+ seed/10) vs CE 11 (+ seed/10)
    assert v["n"] == 3 and v["last"]["mean"] == pytest.approx(9.35)
    assert v["vs_base"]["last"]["values"] == pytest.approx([1.75] * 3) and v["vs_base"]["last"]["verdict"] == "HOLDS"
    assert "## Ablation: cifar10 / cifar_resnet32 / dlb, swept method.T, method.alpha" in md
    assert re.search(r"\| method\.T +\| method\.alpha +\| n +\| seeds", md)
    # No variant at DLB's defaults (T=3, alpha=1): nothing compared, said once; claims without runs in one line.
    assert rep["deltas"] == [] and "no single variant at the method's defaults" in md
    assert "## Claims" in md and "Claims without runs" not in md and "No claim has runs of both its cells" in md
    assert md.count("### Claim") == 0


def test_a_key_that_differs_without_being_swept_is_flagged(tmp_path):
    """The T x alpha sweep, but the T=4 runs also trained for other epochs (set elsewhere, not on the command line);
    and without recorded overrides, a key confounded with the swept one."""
    root = tmp_path / "sweep"
    _ablation(root, with_ce=False)
    for summary in root.glob("dlb/T4.0*/*/summary.json"):
        cfg_path = summary.parent / ".hydra" / "config.yaml"
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg["trainer"]["epochs"] = 8
        cfg_path.write_text(yaml.safe_dump(cfg))
    rows = build_report(*collect_runs([root]))["rows"]
    assert {r["swept"] for r in rows} == {"method.T, method.alpha"}
    assert all(any(f.startswith("mismatched config: the runs differ in trainer.epochs") for f in r["flags"])
               for r in rows)
    for overrides in root.rglob("overrides.yaml"):  # hand-made folders: the full-grid rule decides
        overrides.unlink()
    rows = build_report(*collect_runs([root]))["rows"]
    assert {r["swept"] for r in rows} == {"method.T, method.alpha"}  # T x alpha is a full grid; epochs follows T
    assert all(any("trainer.epochs" in f for f in r["flags"]) for r in rows)
    data = root / "dlb/T2.0a0.5/s0/summary.json"  # a run trained on other data is never a swept variant
    data.write_text(json.dumps({**json.loads(data.read_text()), "data": {"train_sha256": "x", "test_sha256": "y"}}))
    rows = build_report(*collect_runs([root]))["rows"]
    assert any("data.test_sha256, data.train_sha256" in f for r in rows for f in r["flags"])
