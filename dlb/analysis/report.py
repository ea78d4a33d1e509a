"""Aggregate finished runs into the paper's tables: mean ± std over seeds per cell, the paper's value beside ours,
DLB − baseline deltas checked against the paper's claims, and every reason a number might not be trustworthy.

    python -m dlb.report outputs multirun [--wandb ENTITY/PROJECT] [--seeds 0,1,2] [--out reports/x] [--name report]

Writes <out>/<name>.md, .tex and .json (default out: reports/<name>/) and prints the Markdown. A run is a folder with summary.json and
.hydra/config.yaml (written by dlb/trainer.py and Hydra), found anywhere under the roots, or a W&B run.
Nothing is averaged silently: runs of one cell whose configs differ become separate variants, unfinished and
diverged runs are left out of the means and flagged, and files that can't be read are listed as skipped.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dlb.analysis import claims as claims_view
from dlb.run import folder as runfiles
from dlb.run import identity as runid
from dlb.methods import METHODS, comparisons, label, ordered

from dlb import REPO  # noqa: E402
DEFAULT_PAPER = REPO / "results" / "paper" / "reference.yaml"

# Row order of the paper's tables; names not listed sort after these, alphabetically. Methods: their `order`.
ORDER = {
    "dataset": ("cifar10", "cifar100", "tinyimagenet"),
    "backbone": ("cifar_vgg16", "cifar_vgg19", "cifar_resnet32", "cifar_resnet110", "cifar_wrn20_8",
                 "cifar_densenet40_12"),
    "augment": ("none", "cutout", "cutmix"),
}
# Summary fields a cost claim can name (results/paper/reference.yaml, claims: limits).
CLAIM_COSTS = ("num_params", "train_time_s", "peak_memory_bytes")
UNFINISHED = "unfinished"
DIVERGED = "diverged"
OK = "ok"


class SkipRun(ValueError):
    """A run whose files can't be used; the message is the reason shown in the report."""


def _sort_key(kind: str, name: str):
    if kind == "method":
        return ordered(METHODS).index(name) if name in METHODS else len(METHODS), name
    order = ORDER[kind]
    return (order.index(name), "") if name in order else (len(order), name)


def _number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


# --- runs -----------------------------------------------------------------------------------------------------
@dataclass
class Run:
    path: str  # folder, or wandb:<entity>/<project>/<id>
    summary: dict
    config: dict
    history_fn: Callable[[], list[dict]] = field(repr=False, compare=False)
    dataset: str = ""
    backbone: str = ""
    method: str = ""
    augment: str = "none"
    noise: str = "none"
    noise_rate: float = 0.0
    seed: int = 0
    status: str = ""
    state: str = OK  # ok | unfinished | diverged
    best_err: float | None = None
    last_err: float | None = None

    @property
    def cell(self) -> tuple:
        return self.dataset, self.backbone, self.method, self.augment, self.noise, self.noise_rate

    @property
    def run_config(self) -> dict:
        """What a run computes, seed aside (dlb/run/identity.py), and the data it saw where its summary says."""
        cfg = {k: v for k, v in runid.identity(self.config).items() if k != "seed"}  # (rate 0: no noise keys)
        data = self.summary.get("data")
        if isinstance(data, dict):
            cfg.update({f"data.{k}": data.get(k) for k in ("train_sha256", "test_sha256")})
        return cfg

    @property
    def epochs_done(self) -> int | None:
        """Finished epochs: the summary's count, or more where metrics.jsonl already holds later epochs (a summary
        written at the start of a run, or by a trainer that updates it only at the end)."""
        done = self.summary.get("epochs_completed")
        done = done if isinstance(done, int) and not isinstance(done, bool) else None
        if self.state == UNFINISHED:
            logged = [row["epoch"] for row in self.history() if isinstance(row.get("epoch"), int)]
            if logged and (done is None or max(logged) > done):
                done = max(logged)
        return done

    def history(self) -> list[dict]:
        """metrics.jsonl rows (one per epoch); [] when they can't be read."""
        try:
            return self.history_fn()
        except Exception:
            return []


def make_run(path: str, summary, config, history_fn: Callable[[], list[dict]] = list) -> Run:
    """Check a summary/config pair and build a Run, or raise SkipRun with the reason."""
    try:
        fields = runfiles.Summary.from_dict(summary)
    except (TypeError, ValueError) as e:
        raise SkipRun(str(e)) from None
    if not isinstance(config, dict):
        raise SkipRun("config is not a mapping")
    cfg = lambda *keys: _get(config, keys)  # noqa: E731
    run = Run(path, summary, config, history_fn)
    for name, keys in (("dataset", ("dataset", "name")), ("backbone", ("backbone", "name")),
                       ("method", ("method", "name"))):
        value = getattr(fields, name) or cfg(*keys)
        if not isinstance(value, str) or not value:
            raise SkipRun(f"no {name} name in summary or config")
        setattr(run, name, value)
    run.augment = str(cfg("augment", "name") or "none")
    run.noise = str(cfg("noise", "name") or "none")
    rate = _number(cfg("noise", "rate"))
    run.noise_rate = 0.0 if run.noise == "none" else (rate if rate is not None else 0.0)
    if not runid.has_noise(run.noise, run.noise_rate):  # a rate of 0 is clean training
        run.noise, run.noise_rate = "none", 0.0
    seed = fields.seed if fields.seed is not None else cfg("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SkipRun("no integer seed in summary or config")
    run.seed = seed
    run.status = fields.status
    if not isinstance(run.status, str):
        raise SkipRun("no status in summary")
    run.best_err, run.last_err = _number(fields.best_test_err), _number(fields.last_test_err)
    epochs, done = fields.epochs, fields.epochs_completed
    if run.status == "diverged":
        run.state = DIVERGED
    elif run.status != "completed" or (isinstance(epochs, int) and isinstance(done, int) and done < epochs):
        run.state = UNFINISHED
    elif run.best_err is None or run.last_err is None:
        raise SkipRun("completed run without numeric best_test_err/last_test_err")
    return run


def _get(d: dict, keys: tuple):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def load_config(path: Path) -> dict:
    """The run's config as a plain dict; interpolations resolved where they can be outside Hydra."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # e.g. ${hydra:...}: compare the interpolation strings as written instead
        return OmegaConf.to_container(cfg, resolve=False)


def load_run_dir(run_dir: Path) -> Run:
    try:
        summary = json.loads((run_dir / runfiles.SUMMARY).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SkipRun(f"unreadable summary.json ({type(e).__name__}: {e})") from None
    # config.json is what the trainer ran with (written after its checks); .hydra/config.yaml can belong to a
    # later command that was refused, so it is only the fallback (older runs, hand-made folders).
    config_path = run_dir / runfiles.CONFIG
    if not config_path.is_file():
        config_path = run_dir / ".hydra" / "config.yaml"
    if not config_path.is_file():
        raise SkipRun("no config.json or .hydra/config.yaml next to summary.json")
    try:
        config = json.loads(config_path.read_text()) if config_path.suffix == ".json" else load_config(config_path)
    except Exception as e:
        raise SkipRun(f"unreadable {config_path.relative_to(run_dir)} ({type(e).__name__}: {e})") from None
    return make_run(str(run_dir), summary, config, lambda: runfiles.read_metrics(run_dir))


def collect_runs(roots) -> tuple[list[Run], list[dict]]:
    """Every run folder (a summary.json) under the roots. Returns (runs, skipped), skipped = [{path, reason}].
    A root "wandb:ENTITY/PROJECT" reads that W&B project instead."""
    runs, skipped, seen = [], [], set()
    for root in roots:
        if str(root).startswith("wandb:"):
            r, s = collect_wandb_runs(str(root)[len("wandb:"):])
            runs, skipped = runs + r, skipped + s
            continue
        root = Path(root)
        if not root.exists():
            skipped.append({"path": str(root), "reason": "root does not exist"})
            continue
        for summary_path in sorted(root.rglob("summary.json")):
            run_dir = summary_path.parent
            if run_dir.resolve() in seen:  # overlapping roots
                continue
            seen.add(run_dir.resolve())
            try:
                runs.append(load_run_dir(run_dir))
            except SkipRun as e:
                skipped.append({"path": str(run_dir), "reason": str(e)})
    return runs, skipped


WANDB_STATUS = {"finished": "completed", "running": "running", "crashed": "failed", "failed": "failed",
                "killed": "failed"}


def collect_wandb_runs(project: str, api=None) -> tuple[list[Run], list[dict]]:
    """Runs of a W&B project ("entity/project"): run.config is the resolved config, run.summary the summary."""
    try:
        if api is None:
            import wandb

            api = wandb.Api()
        wandb_runs = list(api.runs(project))
    except Exception as e:
        return [], [{"path": f"wandb:{project}", "reason": f"could not list W&B runs ({type(e).__name__}: {e})"}]
    runs, skipped = [], []
    for wr in wandb_runs:
        where = f"wandb:{project}/{getattr(wr, 'id', '?')}"
        try:
            summary = getattr(wr.summary, "_json_dict", None) or dict(wr.summary)
            summary = {k: v for k, v in summary.items() if not k.startswith("_")}
            if "status" not in summary:  # the trainer never wrote its summary: judge by the W&B state
                summary["status"] = WANDB_STATUS.get(getattr(wr, "state", ""), "failed")
            config = {k: v for k, v in dict(wr.config).items() if not k.startswith("_")}
            runs.append(make_run(where, summary, config, lambda wr=wr: [dict(r) for r in wr.scan_history()]))
        except SkipRun as e:
            skipped.append({"path": where, "reason": str(e)})
        except Exception as e:
            skipped.append({"path": where, "reason": f"unreadable W&B run ({type(e).__name__}: {e})"})
    return runs, skipped


# --- cells ----------------------------------------------------------------------------------------------------
@dataclass
class Variant:
    label: str  # the config keys that set it apart from the cell's other variants; "" when there are none
    runs: list[Run]


@dataclass
class Cell:
    dataset: str
    backbone: str
    method: str
    augment: str
    noise: str
    noise_rate: float
    variants: list[Variant]  # the first is the main one: most usable runs
    diff_keys: list[str]

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.backbone}/{self.method}"

    @property
    def setting(self) -> str:
        """What sets the cell apart from plain training: "", "cutout", "symmetric@0.4", "cutout, symmetric@0.4"."""
        parts = [self.augment] if self.augment != "none" else []
        return ", ".join(parts + ([f"{self.noise}@{self.noise_rate:g}"] if self.noise != "none" else []))

    @property
    def setting_kind(self) -> str:
        return "noise" if self.noise != "none" else "augment" if self.augment != "none" else "clean"

    @property
    def paper_key(self) -> str:
        """The cell's key in the reference file: "dlb", "cutout+dlb", "symmetric@0.4+dlb"."""
        parts = [self.augment] if self.augment != "none" else []
        parts += [f"{self.noise}@{self.noise_rate:g}"] if self.noise != "none" else []
        return "+".join(parts + [self.method])


def _fmt_value(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def group_cells(runs: list[Run]) -> list[Cell]:
    """Runs grouped by table cell, each cell split into variants of identical config (seed and run-free keys
    aside). Sorted in the paper's order."""
    by_cell: dict[tuple, list[Run]] = {}
    for run in runs:
        by_cell.setdefault(run.cell, []).append(run)
    cells = []
    for key, cell_runs in by_cell.items():
        by_config: dict[str, list[Run]] = {}
        configs = {}
        for run in sorted(cell_runs, key=lambda r: (r.seed, r.path)):
            cfg = run.run_config
            frozen = json.dumps(cfg, sort_keys=True, default=str)
            by_config.setdefault(frozen, []).append(run)
            configs[frozen] = cfg
        all_keys = sorted(set().union(*configs.values()))
        diff_keys = [k for k in all_keys if len({json.dumps(c.get(k, "<absent>"), default=str)
                                                 for c in configs.values()}) > 1]
        variants = []
        for frozen, vruns in by_config.items():
            cfg = configs[frozen]
            label = ", ".join(f"{k}={_fmt_value(cfg.get(k, '<absent>'))}" for k in diff_keys[:4])
            if len(diff_keys) > 4:
                label += f", ... (+{len(diff_keys) - 4} keys)"
            variants.append(Variant(label, vruns))
        variants.sort(key=lambda v: (-sum(r.state == OK for r in v.runs), -len(v.runs), v.label))
        cells.append(Cell(*key, variants=variants, diff_keys=diff_keys))
    cells.sort(key=lambda c: (_sort_key("dataset", c.dataset), _sort_key("backbone", c.backbone),
                              _sort_key("augment", c.augment), c.noise, c.noise_rate, _sort_key("method", c.method)))
    return cells


# --- numbers --------------------------------------------------------------------------------------------------
def mean_std(values: list[float]) -> dict:
    """mean and sample std (ddof=1); None where undefined (no values; std of one value)."""
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) >= 2 else None, "values": values}


def load_paper(path) -> dict | None:
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None


def paper_value(paper: dict | None, cell: Cell) -> dict:
    """{"status": "value" | "unknown" | "absent", "value", "source", "table"} for the cell in the reference."""
    absent = {"status": "absent", "value": None, "source": None, "table": None}
    if not paper:
        return absent
    any_rate = cell.paper_key.replace(f"@{cell.noise_rate:g}", "@*")
    for table_name, table in (paper.get("tables") or {}).items():
        backbones = ((table or {}).get("cells") or {}).get(cell.dataset) or {}
        for backbone in (cell.backbone, "*"):
            entries = backbones.get(backbone) or {}
            for key in (cell.paper_key, any_rate):
                if key in entries:
                    entry = entries[key]
                    if isinstance(entry, dict) and _number(entry.get("value")) is not None:
                        return {"status": "value", "value": float(entry["value"]),
                                "source": entry.get("source") or table.get("source"), "table": table_name}
                    return {"status": "unknown", "value": None, "source": table.get("source"), "table": table_name}
    return absent


def one_run_per_seed(runs: list[Run]) -> tuple[dict[int, Run], dict[int, list[str]]]:
    """The usable runs the numbers come from, the first per seed ({seed: run}), and the duplicates ({seed: paths,
    the used one first}). The table and the plots both count this way."""
    used: dict[int, Run] = {}
    duplicates: dict[int, list[str]] = {}
    for r in runs:
        if r.state != OK:
            continue
        if r.seed in used:
            duplicates.setdefault(r.seed, [used[r.seed].path]).append(r.path)
        else:
            used[r.seed] = r
    return used, duplicates


def summarize(cells: list[Cell], expected_seeds: list[int], paper: dict | None = None) -> list[dict]:
    """One row per cell variant (main variant first): numbers over usable runs, and every flag."""
    rows = []
    for cell in cells:
        for i, variant in enumerate(cell.variants):
            used, duplicates = one_run_per_seed(variant.runs)
            unfinished = [r for r in variant.runs if r.state == UNFINISHED]
            diverged = [r for r in variant.runs if r.state == DIVERGED]
            missing = sorted(set(expected_seeds) - {r.seed for r in variant.runs})
            flags = []
            if missing:
                flags.append(f"missing seeds: {', '.join(map(str, missing))}")
            if unfinished:
                flags.append(f"unfinished: {len(unfinished)} (" + "; ".join(
                    f"seed {r.seed} {r.status} {'?' if r.epochs_done is None else r.epochs_done}/{r.summary.get('epochs', '?')}"
                    " epochs" for r in unfinished) + ")")
            if diverged:
                flags.append(f"diverged: {len(diverged)} (seed {', '.join(str(r.seed) for r in diverged)})")
            if duplicates:
                flags.append("duplicate seeds: " + "; ".join(f"seed {s} x{len(p)}, used {p[0]}"
                                                              for s, p in duplicates.items()))
            if len(cell.variants) > 1:
                flags.append(f"mismatched config: {len(cell.variants)} variants differ in "
                             f"{', '.join(cell.diff_keys)}" + ("" if i == 0 else "; not the main row"))
            runs = list(used.values())
            rows.append({
                "cell": cell.name, "dataset": cell.dataset, "backbone": cell.backbone, "method": cell.method,
                "augment": cell.augment, "noise": cell.noise, "noise_rate": cell.noise_rate, "setting": cell.setting,
                "setting_kind": cell.setting_kind, "variant": variant.label, "main": i == 0,
                "n": len(runs), "seeds": sorted(used),
                "best": mean_std([r.best_err for r in runs]), "last": mean_std([r.last_err for r in runs]),
                "paper": paper_value(paper, cell), "flags": flags, "missing_seeds": missing,
                "unfinished": [r.path for r in unfinished], "diverged": [r.path for r in diverged],
                "runs": [r.path for r in runs], "all_runs": [r.path for r in variant.runs],
                # what the claims view pairs by seed (dlb/analysis/claims.py)
                "per_seed": {r.seed: {"best": r.best_err, "last": r.last_err, "device": r.summary.get("device"),
                                      **{k: r.summary.get(k) for k in CLAIM_COSTS}} for r in runs},
            })
    return rows


def _claim_for(paper: dict | None, dataset: str, base: str, method: str, kind: str) -> dict | None:
    claims = (paper or {}).get("claims") or {}
    ranges = claims.get("dlb_error_reduction") or {}
    if (base, method, kind) == ("ce", "dlb", "clean") and isinstance(ranges.get(dataset), dict):
        r = ranges[dataset]
        return {"kind": "range", "min": r["min"], "max": r["max"], "source": r.get("source"),
                "text": f"{r['min']:.2f} to {r['max']:.2f}"}
    for name, claim in claims.items():
        if name == "dlb_error_reduction" or not isinstance(claim, dict) or claim.get("kind") == "cost":
            continue
        if dataset in (claim.get("datasets") or []) and any(
                p.get("base") == base and p.get("method") == method and p.get("setting") == kind
                for p in claim.get("pairs") or []):
            return {"kind": "gain", "name": name, "statement": claim.get("statement"), "source": claim.get("source"),
                    "text": f"gain ({name})"}
    return None


def check(delta: float | None, claim: dict | None) -> str:
    if delta is None:
        return "n/a"
    if claim is None:
        return "no claim"
    if claim["kind"] == "range":
        return "below" if delta < claim["min"] else "above" if delta > claim["max"] else "in range"
    return "gain" if delta > 0 else "no gain"


def compare(rows: list[dict], paper: dict | None = None) -> list[dict]:
    """base − method error (positive: the method is better) for each comparison (a method's `compared_with`) present
    in one setting, over the main variants, with the paper's claim for it."""
    main = {(r["dataset"], r["backbone"], r["augment"], r["noise"], r["noise_rate"], r["method"]): r
            for r in rows if r["main"]}
    out, pairs = [], comparisons()
    for key, row in main.items():
        for base, method in pairs:
            if key[-1] != method or key[:-1] + (base,) not in main:
                continue
            b = main[key[:-1] + (base,)]
            delta = {m: (b[m]["mean"] - row[m]["mean"]) if b[m]["mean"] is not None and row[m]["mean"] is not None
                     else None for m in ("best", "last")}
            claim = _claim_for(paper, row["dataset"], base, method, row["setting_kind"])
            out.append({"dataset": row["dataset"], "backbone": row["backbone"], "setting": row["setting"],
                        "setting_kind": row["setting_kind"], "base": base, "method": method,
                        "n_base": b["n"], "n_method": row["n"], "delta_best": delta["best"],
                        "delta_last": delta["last"], "claim": claim, "check_best": check(delta["best"], claim),
                        "check_last": check(delta["last"], claim),
                        "flagged": bool(b["flags"] or row["flags"])})
    pair_order = {p: i for i, p in enumerate(pairs)}
    out.sort(key=lambda d: (_sort_key("dataset", d["dataset"]), _sort_key("backbone", d["backbone"]),
                            d["setting_kind"] != "clean", d["setting"], pair_order[(d["base"], d["method"])]))
    return out


def build_report(runs: list[Run], skipped: list[dict], *, seeds: list[int] | None = None, paper=None,
                 metric: str = "best", sources=(), command: str = "") -> dict:
    expected = sorted(set(seeds) if seeds is not None else {r.seed for r in runs})
    rows = summarize(group_cells(runs), expected, paper)
    return {"command": command, "sources": list(sources), "metric": metric, "expected_seeds": expected,
            "seeds_from": "--seeds" if seeds is not None else "the seeds seen in the runs",
            "n_runs": len(runs), "n_used": sum(r["n"] for r in rows),
            "n_unfinished": sum(r.state == UNFINISHED for r in runs),
            "n_diverged": sum(r.state == DIVERGED for r in runs),
            "paper_units": (paper or {}).get("units"), "rows": rows, "deltas": compare(rows, paper),
            "claims": claims_view.judge(paper, rows, metric),
            "skipped": skipped}


# --- rendering ------------------------------------------------------------------------------------------------
def fmt_err(stat: dict, pm: str = " ± ", dash: str = "—") -> str:
    if stat["mean"] is None:
        return dash
    return f"{stat['mean']:.2f}{pm}" + (f"{stat['std']:.2f}" if stat["std"] is not None else dash)


def fmt_delta(x: float | None, dash: str = "—") -> str:
    return dash if x is None else f"{x:+.2f}"


def fmt_paper(p: dict, dash: str = "—") -> str:
    return f"{p['value']:.2f}" if p["status"] == "value" else "unknown" if p["status"] == "unknown" else dash


def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]


def render_markdown(report: dict) -> str:
    m = report["metric"]
    sources = ", ".join(f"`{s}`" for s in report["sources"]) or "(none)"
    lines = [
        "# DLB reproduction: results", "",
        f"Aggregated from {sources}: **{report['n_runs']} runs** ({report['n_used']} in the means, "
        f"{report['n_unfinished']} unfinished, {report['n_diverged']} diverged), "
        f"{len(report['skipped'])} skipped (listed at the end).", "",
        f"Command: `{report['command']}`", "",
        f"Expected seeds: {', '.join(map(str, report['expected_seeds'])) or 'none'} ({report['seeds_from']}). "
        "Numbers are top-1 test error (%), mean ± sample std (ddof=1) over seeds, — where undefined; "
        "*best* = the best epoch (what the official code reports), *last* = the last epoch. Unfinished and "
        "diverged runs are not in the means. Paper: the reference file's value "
        "(unknown = the paper has the cell but the number is not available offline; — = not in the paper). "
        f"The LaTeX table's check column uses the {m} epoch.", "",
    ]
    lines += claims_view.render_markdown(report["claims"], m, label)
    lines += ["## Cells", ""]
    lines += _md_table(
        ["dataset", "backbone", "method", "setting", "variant", "n", "seeds", "best err", "last err", "paper", "flags"],
        [[r["dataset"], r["backbone"], label(r["method"]), r["setting"] or "—",
          (r["variant"] + ("" if r["main"] else " (not main)")) if r["variant"] else "—", r["n"],
          ",".join(map(str, r["seeds"])) or "—", fmt_err(r["best"]), fmt_err(r["last"]), fmt_paper(r["paper"]),
          "; ".join(f.split(":")[0] for f in r["flags"]) or ""] for r in report["rows"]])
    lines += ["", "## Method vs base (base error − method error, points; positive = the method is better)", ""]
    if report["deltas"]:
        lines += _md_table(
            ["dataset", "backbone", "setting", "base → method", "n", "paper claim", "Δ best", "check best",
             "Δ last", "check last", "cells flagged"],
            [[d["dataset"], d["backbone"], d["setting"] or "—", f"{label(d['base'])} → {label(d['method'])}",
              f"{d['n_base']}/{d['n_method']}", d["claim"]["text"] if d["claim"] else "—",
              fmt_delta(d["delta_best"]), d["check_best"], fmt_delta(d["delta_last"]), d["check_last"],
              "yes" if d["flagged"] else ""] for d in report["deltas"]])
    else:
        lines.append("No setting has both a base and its method.")
    lines += ["", "## Flags", ""]
    flagged = [r for r in report["rows"] if r["flags"]]
    for r in flagged:
        name = r["cell"] + (f" [{r['setting']}]" if r["setting"] else "")
        name += f" ({r['variant']})" if r["variant"] else ""
        lines += [f"- `{name}`:"] + [f"  - {_md(f)}" for f in r["flags"]]
    if not flagged:
        lines.append("None.")
    lines += ["", f"## Skipped ({len(report['skipped'])})", ""]
    lines += [f"- `{s['path']}`: {_md(s['reason'])}" for s in report["skipped"]] or ["None."]
    return "\n".join(lines) + "\n"


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text) -> str:
    return "".join(LATEX_SPECIAL.get(c, c) for c in str(text))


def _tex_table(spec: str, header: list[str], rows: list[list], groups: list) -> list[str]:
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    for i, row in enumerate(rows):
        if i and groups[i] != groups[i - 1]:
            lines.append(r"\midrule")
        lines.append(" & ".join(row) + r" \\")
    return lines + [r"\bottomrule", r"\end{tabular}"]


def _tex_claim(claim: dict | None, dash: str) -> str:
    if claim is None:
        return dash
    return f"{claim['min']:.2f}--{claim['max']:.2f}" if claim["kind"] == "range" else "gain"


def render_latex(report: dict) -> str:
    """booktabs tabulars (cells, then method-vs-base deltas); needs \\usepackage{booktabs}."""
    e, pm, dash = latex_escape, r" $\pm$ ", "--"
    m = report["metric"]
    rows = report["rows"]
    lines = [f"% Generated by: {report['command']}".replace("\n", " "),
             "% Top-1 test error (%), mean $\\pm$ sample std over seeds; best = best epoch, last = last epoch.",
             "% Needs \\usepackage{booktabs}."]
    lines += _tex_table(
        "llllrccl", ["Dataset", "Backbone", "Method", "Setting", "$n$", "Best err.", "Last err.", "Paper"],
        [[e(r["dataset"]), e(r["backbone"]),
          e(label(r["method"]) + (f" ({r['variant']})" if r["variant"] else ""))
          + (r"$^\dagger$" if r["flags"] else ""),
          e(r["setting"] or dash), str(r["n"]), fmt_err(r["best"], pm, dash), fmt_err(r["last"], pm, dash),
          e(fmt_paper(r["paper"], dash))] for r in rows],
        [r["dataset"] for r in rows])
    lines.append(r"% $^\dagger$: flagged (missing seeds, unfinished/diverged runs or mismatched config), see the "
                 "Markdown report.")
    if report["deltas"]:
        deltas = report["deltas"]
        lines += ["", f"% Base error minus method error (points); check against the paper's claim uses the {m} epoch."]
        lines += _tex_table(
            "llllrrll", ["Dataset", "Backbone", "Setting", "Base $\\to$ method", r"$\Delta$ best",
                         r"$\Delta$ last", "Paper claim", "Check"],
            [[e(d["dataset"]), e(d["backbone"]), e(d["setting"] or dash),
              e(label(d["base"])) + r" $\to$ " + e(label(d["method"])),
              fmt_delta(d["delta_best"], dash), fmt_delta(d["delta_last"], dash),
              _tex_claim(d["claim"], dash), e(d[f"check_{m}"])] for d in deltas],
            [d["dataset"] for d in deltas])
    return "\n".join(lines) + "\n"


# --- command line ---------------------------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    try:
        return sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m dlb.report", description=__doc__.split("\n\n")[0])
    p.add_argument("roots", nargs="*", help="folders searched recursively for run folders (summary.json)")
    p.add_argument("--wandb", action="append", default=[], metavar="ENTITY/PROJECT", help="also read this W&B project")
    p.add_argument("--out", default=None, help="output folder (default: reports/<name>; results/ holds the "
                   "committed tables)")
    p.add_argument("--name", default="report", help="output file stem (default: report)")
    p.add_argument("--paper", default=str(DEFAULT_PAPER), help="the paper's reference values (YAML)")
    p.add_argument("--seeds", type=parse_seeds, default=None, help="expected seeds, e.g. 0,1,2 (default: all seen)")
    p.add_argument("--metric", choices=("best", "last"), default="best",
                   help="the epoch whose check against the paper goes in the LaTeX table (default: best, as the "
                        "paper; the Markdown and JSON hold both)")
    args = p.parse_args(argv)
    if not args.roots and not args.wandb:
        p.error("give at least one ROOT folder or --wandb ENTITY/PROJECT")

    runs, skipped = collect_runs(args.roots)
    for project in args.wandb:
        r, s = collect_wandb_runs(project)
        runs, skipped = runs + r, skipped + s
    sources = [*args.roots, *(f"wandb:{w}" for w in args.wandb)]
    if not runs:
        print(f"dlb.report: no runs found in {', '.join(sources)} (a run is a folder with summary.json and "
              ".hydra/config.yaml, as dlb.train writes)", file=sys.stderr)
        for s in skipped:
            print(f"  skipped {s['path']}: {s['reason']}", file=sys.stderr)
        return 2
    paper = load_paper(args.paper)
    if paper is None:
        skipped.append({"path": args.paper, "reason": "paper reference file missing or unreadable; no paper column"})
    report = build_report(runs, skipped, seeds=args.seeds, paper=paper, metric=args.metric, sources=sources,
                          command=shlex.join(["python", "-m", "dlb.report", *argv]))
    out = Path(args.out or Path("reports") / args.name)
    out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(report)
    (out / f"{args.name}.md").write_text(markdown)
    (out / f"{args.name}.tex").write_text(render_latex(report))
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(markdown)
    print(f"wrote {out / args.name}.md, .tex, .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
