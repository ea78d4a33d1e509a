"""Finished runs (run folders or W&B runs) as one DataFrame row each, with each cell's variants and swept keys
(docs/statistics.md). The report, the claims and the figures read only this table."""
from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import yaml
from omegaconf import OmegaConf

from dlb.metrics import METRICS
from dlb.methods import METHODS
from dlb.run import folder as runfiles
from dlb.run import identity as runid

SETTING = ("dataset", "backbone", "augment", "noise", "rate")  # what a comparison holds fixed
CELL = SETTING + ("method",)
COSTS = ("num_params", "train_time_s", "peak_memory_bytes")  # summary fields a cost claim can name
UNFINISHED, DIVERGED, OK = "unfinished", "diverged", "ok"
ABSENT = "<absent>"  # a key a run's config does not have (a run older than the key)
# Row order of the paper's tables; names not listed sort after these, alphabetically. Methods: their `order`.
ORDER = {
    "dataset": ("cifar10", "cifar100", "tinyimagenet"),
    "backbone": ("cifar_vgg16", "cifar_vgg19", "cifar_resnet32", "cifar_resnet110", "cifar_wrn20_8",
                 "cifar_densenet40_12"),
    "augment": ("none", "cutout", "cutmix"),
}
WANDB_STATUS = {"finished": "completed", "running": "running", "crashed": "failed", "failed": "failed",
                "killed": "failed"}


class SkipRun(ValueError):
    """A run whose files can't be used; the message is the reason shown in the report."""


def _number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _int(x) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) else None


def setting_name(augment: str, noise: str, rate: float) -> str:
    """What sets a setting apart from plain training: "", "cutout", "symmetric@0.4", "cutout, symmetric@0.4"."""
    return ", ".join(([augment] if augment != "none" else []) + ([f"{noise}@{rate:g}"] if noise != "none" else []))


@dataclass
class Run:
    path: str  # folder, or wandb:<entity>/<project>/<id>
    summary: dict
    config: dict
    history_fn: Callable[[], list[dict]] = field(repr=False, compare=False)
    cell: dict = field(default_factory=dict)  # the CELL keys
    seed: int = 0
    status: str = ""
    state: str = OK  # ok | unfinished | diverged
    overrides: dict | None = None  # the command line's overrides (.hydra/overrides.yaml) {key: value}; None: unknown

    @property
    def epochs_done(self) -> int | None:
        """Finished epochs: the summary's count, or more where metrics.jsonl already logs later ones."""
        done = _int(self.summary.get("epochs_completed"))
        logged = [r["epoch"] for r in self.history() if isinstance(r.get("epoch"), int)] if self.state == UNFINISHED \
            else []
        return max(([] if done is None else [done]) + logged, default=None)

    def history(self) -> list[dict]:
        """metrics.jsonl rows (one per epoch); [] when they can't be read."""
        try:
            return self.history_fn()
        except Exception:
            return []


def _get(config: dict, group: str, key: str = "name"):
    return config[group].get(key) if isinstance(config.get(group), dict) else None


def make_run(path: str, summary, config, history_fn: Callable[[], list[dict]] = list) -> Run:
    """Check a summary/config pair and build a Run, or raise SkipRun with the reason."""
    try:
        fields = runfiles.Summary.from_dict(summary)
    except (TypeError, ValueError) as e:
        raise SkipRun(str(e)) from None
    if not isinstance(config, dict):
        raise SkipRun("config is not a mapping")
    run = Run(path, summary, config, functools.cache(history_fn))  # the figures read a run's history twice
    for name in ("dataset", "backbone", "method"):
        value = getattr(fields, name) or _get(config, name)
        if not isinstance(value, str) or not value:
            raise SkipRun(f"no {name} name in summary or config")
        run.cell[name] = value
    noise, rate = str(_get(config, "noise") or "none"), _number(_get(config, "noise", "rate")) or 0.0
    if not runid.has_noise(noise, rate):  # a rate of 0 is clean training
        noise, rate = "none", 0.0
    run.cell.update(augment=str(_get(config, "augment") or "none"), noise=noise, rate=rate)
    run.seed, run.status = _int(fields.seed if fields.seed is not None else config.get("seed")), fields.status
    if run.seed is None:
        raise SkipRun("no integer seed in summary or config")
    if not isinstance(run.status, str):
        raise SkipRun("no status in summary")
    epochs, done = fields.epochs, fields.epochs_completed
    if run.status == "diverged":
        run.state = DIVERGED
    elif run.status != "completed" or (isinstance(epochs, int) and isinstance(done, int) and done < epochs):
        run.state = UNFINISHED
    elif _number(fields.best_test_err) is None or _number(fields.last_test_err) is None:
        raise SkipRun("completed run without numeric best_test_err/last_test_err")
    return run


def load_run_dir(run_dir: Path) -> Run:
    folder = runfiles.RunFolder(run_dir)
    try:
        summary = json.loads(folder.summary.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SkipRun(f"unreadable {folder.SUMMARY} ({type(e).__name__}: {e})") from None
    # config.json is what the trainer ran with (written after its checks); Hydra's config.yaml can belong to a
    # later command that was refused, so it is only the fallback (older runs, hand-made folders).
    path = folder.config if folder.config.is_file() else folder.hydra_config
    if not path.is_file():
        raise SkipRun(f"no {folder.CONFIG} or {folder.hydra_config.relative_to(run_dir)} next to {folder.SUMMARY}")
    try:
        if path.suffix == ".json":
            config = json.loads(path.read_text())
        else:  # interpolations resolved where they can be outside Hydra; else (${hydra:...}) compared as written
            try:
                config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
            except Exception:
                config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:
        raise SkipRun(f"unreadable {path.relative_to(run_dir)} ({type(e).__name__}: {e})") from None
    run = make_run(str(run_dir), summary, config, folder.read_metrics)
    with contextlib.suppress(OSError, yaml.YAMLError):  # command-line overrides: "+method.T=2" -> {"method.T": "2"}
        pairs = [str(o).lstrip("+~").partition("=") for o in yaml.safe_load(folder.hydra_overrides.read_text()) or []
                 if "=" in str(o)]
        run.overrides = {k: v for k, _, v in pairs if not k.startswith("hydra.")}
    return run


def collect_runs(roots) -> tuple[list[Run], list[dict]]:
    """(runs, skipped [{path, reason}]) of every run folder under the roots; a root "wandb:E/P": that W&B project."""
    runs, skipped, seen = [], [], set()
    for root in roots:
        if str(root).startswith("wandb:"):
            r, s = collect_wandb_runs(str(root)[len("wandb:"):])
            runs, skipped = runs + r, skipped + s
            continue
        if not Path(root).exists():
            skipped.append({"path": str(root), "reason": "root does not exist"})
        for summary_path in sorted(Path(root).rglob(runfiles.RunFolder.SUMMARY)):
            run_dir = summary_path.parent
            if run_dir.resolve() in seen:  # overlapping roots
                continue
            seen.add(run_dir.resolve())
            try:
                runs.append(load_run_dir(run_dir))
            except SkipRun as e:
                skipped.append({"path": str(run_dir), "reason": str(e)})
    return runs, skipped


def collect_wandb_runs(project: str) -> tuple[list[Run], list[dict]]:
    """(runs, skipped) of a W&B project "entity/project"."""
    try:
        import wandb

        wandb_runs = list(wandb.Api().runs(project))
    except Exception as e:
        return [], [{"path": f"wandb:{project}", "reason": f"could not list W&B runs ({type(e).__name__}: {e})"}]
    runs, skipped = [], []
    for wr in wandb_runs:
        where = f"wandb:{project}/{getattr(wr, 'id', '?')}"
        try:
            summary = {k: v for k, v in (getattr(wr.summary, "_json_dict", None) or dict(wr.summary)).items()
                       if not k.startswith("_")}
            if "status" not in summary:  # the trainer never wrote its summary: judge by the W&B state
                summary["status"] = WANDB_STATUS.get(getattr(wr, "state", ""), "failed")
            config = {k: v for k, v in dict(wr.config).items() if not k.startswith("_")}
            runs.append(make_run(where, summary, config, lambda wr=wr: [dict(r) for r in wr.scan_history()]))
        except Exception as e:  # a SkipRun says why itself
            reason = str(e) if isinstance(e, SkipRun) else f"unreadable W&B run ({type(e).__name__}: {e})"
            skipped.append({"path": where, "reason": reason})
    return runs, skipped


# --- variants -------------------------------------------------------------------------------------------------
def _text(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def swept_keys(configs: list[dict], overrides: list[dict] | None = None) -> tuple[list[str], list[str]]:
    """(swept, unswept) among the keys the variants' configs differ in (rule: docs/statistics.md); grid ties go to
    the set that separates most variants, then by name."""
    keys = sorted({k for c in configs for k in c})
    values = {k: {_text(c.get(k, ABSENT)) for c in configs} for k in keys}
    differing = [k for k in keys if len(values[k]) > 1]
    swept = []
    if overrides:
        set_keys = {k for o in overrides for k in o}
        groups = {k for k in set_keys if "." not in k and len({o.get(k) for o in overrides}) > 1}
        swept = [k for k in differing if not k.startswith("data.") and (k in set_keys or k.split(".")[0] in groups)]
    else:
        candidates = [k for k in differing if not k.startswith("data.")][:12]  # grids of more keys are not searched
        for size in range(len(candidates), 0, -1):
            grids = [(len(points), list(subset)) for subset in itertools.combinations(candidates, size)
                     if len(points := {tuple(_text(c.get(k, ABSENT)) for k in subset) for c in configs})
                     == math.prod(len(values[k]) for k in subset)]
            if grids:
                swept = max(grids, key=lambda g: g[0])[1]  # the first of the largest
                break
    return swept, [k for k in differing if k not in swept]


@functools.cache
def _composed_defaults(method: str) -> dict:
    try:
        from dlb.config import compose  # Hydra's composition, only where a variant needs the defaults
        return runid.flatten(OmegaConf.to_container(compose([f"method={method}"]), resolve=False))
    except Exception:
        return {}


def at_defaults(method: str, values: dict) -> bool:
    """Do these values equal the method's defaults (Method.Config; other keys: `dlb.train method=<method>`'s)?"""
    own = {f"method.{k}": v for k, v in vars(METHODS[method].Config()).items()} if method in METHODS else {}
    for key, value in values.items():
        default = own[key] if key in own else _composed_defaults(method).get(key, ABSENT)
        same = value == default or (_number(value) is not None and _number(default) is not None
                                    and float(value) == float(default))
        # A key older runs lack computed what its off value does (dlb/run/identity.py, NEUTRAL).
        if not same and not (value == ABSENT and default in (None, False, 0)):
            return False
    return True


# --- the table ------------------------------------------------------------------------------------------------
def sort_key(kind: str, name):
    if kind == "method":  # `Method.order`, then name; unregistered names last
        return name not in METHODS, METHODS[name].order if name in METHODS else 0, name
    order = ORDER.get(kind)
    return name if order is None else (order.index(name), "") if name in order else (len(order), name)


def _order(v) -> tuple:
    """Variants in order of their values: numbers by size, then everything else by text."""
    return (0, float(v), "") if _number(v) is not None else (1, 0.0, fmt_value(v))


def fmt_value(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def table(runs: list[Run]) -> pd.DataFrame:
    """One row per run (the columns below); usable: ok and the first run of its seed in its variant."""
    columns = [*CELL, "setting", "kind", "variant", "values", "swept", "unswept", "seed", "status", "state", "usable",
               "duplicate_of", "best_err", *(f"last_{m.name}" for m in METRICS), *COSTS, "device", "path", "run"]
    if not runs:
        return pd.DataFrame(columns=columns)
    records = []
    for run in runs:
        s, c = run.summary, run.cell
        # What a run computes, seed aside (dlb/run/identity.py), and the data it saw where its summary says.
        config = {k: v for k, v in runid.identity(run.config).items() if k != "seed"}
        if isinstance(s.get("data"), dict):
            config.update({f"data.{k}": s["data"].get(k) for k in ("train_sha256", "test_sha256")})
        records.append({**c, "setting": setting_name(c["augment"], c["noise"], c["rate"]),
                        "kind": "noise" if c["noise"] != "none" else "augment" if c["augment"] != "none" else "clean",
                        "seed": run.seed, "status": run.status, "state": run.state,
                        "best_err": _number(s.get("best_test_err")),
                        **{f"last_{m.name}": _number(s.get(f"last_test_{m.name}")) for m in METRICS},
                        **{k: _number(s.get(k)) for k in COSTS}, "device": str(s.get("device") or ""),
                        "path": run.path, "run": run, "config": config})
    df = pd.DataFrame(records)
    df["variant"], df["values"], df["swept"], df["unswept"], df["variant_rank"] = "", None, "", "", 0
    for _, cell in df.groupby(list(CELL), sort=False):
        configs = list({_text(c): c for c in cell["config"]}.values())
        swept, unswept = swept_keys(configs, [r.overrides for r in cell["run"] if r.overrides is not None])
        points = sorted({tuple(_order(c.get(k, ABSENT)) for k in swept + unswept) for c in configs})
        for i, config in zip(cell.index, cell["config"]):
            values = {k: config.get(k, ABSENT) for k in swept + unswept}
            df.at[i, "values"] = values
            df.at[i, "variant"] = ", ".join(f"{k}={fmt_value(v)}" for k, v in values.items())
            df.at[i, "variant_rank"] = points.index(tuple(_order(v) for v in values.values()))
        df.loc[cell.index, "swept"], df.loc[cell.index, "unswept"] = ", ".join(swept), ", ".join(unswept)
    df = df.sort_values(["seed", "path"], kind="stable")
    same_seed = [*CELL, "variant", "seed"]
    ok = df[df["state"] == OK]
    first = ok[~ok.duplicated(same_seed)]
    df["usable"] = df.index.isin(first.index)
    used = first.set_index(same_seed)["path"].to_dict()
    df["duplicate_of"] = [used.get(tuple(r)) if state == OK and not usable else None
                          for r, state, usable in zip(df[same_seed].itertuples(index=False), df["state"], df["usable"])]
    df = df.sort_values([*CELL, "variant_rank"], key=lambda col: col.map(lambda v: sort_key(col.name, v)),
                        kind="stable")  # the paper's order
    return df[columns]


def mean_std(values) -> dict:
    """mean and sample std (ddof=1); None where undefined."""
    s = pd.Series([float(v) for v in values if v is not None and not pd.isna(v)], dtype=float)
    return {"mean": float(s.mean()) if len(s) else None, "std": float(s.std(ddof=1)) if len(s) >= 2 else None,
            "values": s.tolist()}


def compared(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The usable runs comparisons and claims use (one variant per cell), and a note per cell left out."""
    keep, notes = [], []
    for cell, runs in df[df["usable"]].groupby(list(CELL), sort=False):
        variants = runs["variant"].unique()
        swept = runs["swept"].iloc[0].split(", ")
        if len(variants) > 1:  # the one at the defaults in the swept keys; none where unswept keys split it
            variants = [v for v in variants if at_defaults(cell[-1], {
                k: x for k, x in runs[runs["variant"] == v]["values"].iloc[0].items() if k in swept})]
        if len(variants) == 1:
            keep.append(runs[runs["variant"] == variants[0]])
            continue
        where = "/".join(str(c) for c in (cell[0], cell[1], cell[-1])) + f" [{setting_name(*cell[2:5])}]"
        unswept = runs["unswept"].iloc[0]
        notes.append(where.replace(" []", "") + (f" (its runs differ in {unswept}, not swept)" if unswept and not
                                                 swept[0] else " (no single variant at the method's defaults)"))
    return (pd.concat(keep) if keep else df.iloc[:0]), notes
