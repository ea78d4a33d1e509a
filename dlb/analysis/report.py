"""Aggregate finished runs into the paper's tables: mean ± std over seeds per cell, the paper's value beside ours,
method − baseline differences paired by seed with their intervals, ablations by their swept keys, the paper's claims
judged, and every reason a number might not be trustworthy.

Writes <out>/<name>.md, .tex and .json and prints the Markdown. Nothing is averaged silently: variants stay apart,
unfinished/diverged runs are flagged, unreadable ones listed (docs/statistics.md).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import pandas as pd
import yaml

from dlb import REPO
from dlb.analysis import claims as claims_view
from dlb.analysis import stats
from dlb.analysis.claims import pair_columns, seeds_text
from dlb.analysis.runs import (CELL, DIVERGED, SETTING, UNFINISHED, collect_runs, compared, fmt_value, mean_std,
                               table)
from dlb.methods import METHODS, comparisons, label
from dlb.run.folder import RunFolder

DEFAULT_PAPER = REPO / "results" / "paper" / "reference.yaml"


def load_paper(path) -> dict | None:
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None


def paper_value(paper: dict | None, cell: dict) -> dict:
    """{"status": "value" | "unknown" | "absent", "value", "source", "table"} of a cell in the reference file."""
    noise = [f"{cell['noise']}@{cell['rate']:g}", f"{cell['noise']}@*"] if cell["noise"] != "none" else [None]
    augment = [cell["augment"]] if cell["augment"] != "none" else []
    keys = ["+".join(augment + ([n] if n else []) + [cell["method"]]) for n in noise]
    for table_name, ref in ((paper or {}).get("tables") or {}).items():
        backbones = ((ref or {}).get("cells") or {}).get(cell["dataset"]) or {}
        for entries in (backbones.get(cell["backbone"]) or {}, backbones.get("*") or {}):
            for entry in (entries[key] for key in keys if key in entries):
                value = entry.get("value") if isinstance(entry, dict) else None
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    return {"status": "value", "value": float(value),
                            "source": entry.get("source") or ref.get("source"), "table": table_name}
                return {"status": "unknown", "value": None, "source": ref.get("source"), "table": table_name}
    return {"status": "absent", "value": None, "source": None, "table": None}


# --- cells ----------------------------------------------------------------------------------------------------
def _flags(variant: pd.DataFrame, expected: list[int]) -> list[str]:
    missing = sorted(set(expected) - set(variant["seed"]))
    unfinished = [f"seed {r.seed} {r.status} {'?' if r.run.epochs_done is None else r.run.epochs_done}/"
                  f"{r.run.summary.get('epochs', '?')} epochs"
                  for r in variant[variant["state"] == UNFINISHED].itertuples()]
    diverged = list(variant[variant["state"] == DIVERGED]["seed"])
    duplicates = [f"seed {s} x{len(g) + 1}, used {g['duplicate_of'].iloc[0]}"
                  for s, g in variant[variant["duplicate_of"].notna()].groupby("seed")]
    unswept = variant["unswept"].iloc[0]
    return [flag for flag, found in (
        (f"missing seeds: {', '.join(map(str, missing))}", missing),
        (f"unfinished: {len(unfinished)} (" + "; ".join(unfinished) + ")", unfinished),
        (f"diverged: {len(diverged)} (seed {', '.join(map(str, diverged))})", diverged),
        ("duplicate seeds: " + "; ".join(duplicates), duplicates),
        (f"mismatched config: the runs differ in {unswept}, which the cell's runs do not sweep as a grid", unswept),
    ) if found]


def _numbers(used: pd.DataFrame) -> dict:
    return {"n": len(used), "seeds": sorted(int(s) for s in used["seed"]), "best": mean_std(used["best_err"]),
            "last": mean_std(used["last_err"])}


def summarize(df: pd.DataFrame, expected: list[int], paper: dict | None = None) -> list[dict]:
    """One row per cell variant: numbers over usable runs, and every flag."""
    rows = []
    for (*cell, variant), g in df.groupby([*CELL, "variant"], sort=False):
        cell, used = dict(zip(CELL, cell)), g[g["usable"]]
        rows.append({**cell, "setting": g["setting"].iloc[0], "kind": g["kind"].iloc[0], "variant": variant,
                     "swept": g["swept"].iloc[0], **_numbers(used), "paper": paper_value(paper, cell),
                     "flags": _flags(g, expected), "runs": list(used["path"]), "all_runs": list(g["path"])})
    return rows


# --- method vs base -------------------------------------------------------------------------------------------
def _claim_for(paper: dict | None, dataset: str, base: str, method: str, kind: str) -> dict | None:
    claims = (paper or {}).get("claims") or {}
    r = (claims.get("dlb_error_reduction") or {}).get(dataset)
    if (base, method, kind) == ("ce", "dlb", "clean") and isinstance(r, dict):
        return {"kind": "range", "min": r["min"], "max": r["max"], "source": r.get("source"),
                "text": f"{r['min']:.2f} to {r['max']:.2f}"}
    for name, claim in claims.items():
        if name != "dlb_error_reduction" and isinstance(claim, dict) and claim.get("kind") != "cost" and dataset in (
                claim.get("datasets") or []) and any((p.get("base"), p.get("method"), p.get("setting")) == (
                    base, method, kind) for p in claim.get("pairs") or []):
            return {"kind": "gain", "name": name, "statement": claim.get("statement"), "source": claim.get("source"),
                    "text": f"gain ({name})"}
    return None


def check(delta: float | None, claim: dict | None) -> str:
    """The paired mean difference against the paper's claim for the comparison."""
    if delta is None or claim is None:
        return "n/a" if delta is None else "no claim"
    if claim["kind"] == "range":
        return "below" if delta < claim["min"] else "above" if delta > claim["max"] else "in range"
    return "gain" if delta > 0 else "no gain"


def _paired(b: pd.DataFrame, m: pd.DataFrame) -> dict:
    return {e: {**s, "verdict": stats.verdict(s)} for e, s in claims_view.paired_errors(b, m).items()}


def compare(runs: pd.DataFrame, paper: dict | None = None) -> list[dict]:
    """Per setting, each comparison (a method's `compared_with`) with its paired statistics and the paper's claim."""
    out = []
    pairs = [{"base": base, "method": method} for base, method in comparisons()]
    for where, base, method, b, m in claims_view.pairs_of(runs, pairs):
        kind = b["kind"].iloc[0]
        claim = _claim_for(paper, where["dataset"], base, method, kind)
        d = {**where, "kind": kind, "base": base, "method": method, "n_base": len(b), "n_method": len(m),
             **_paired(b, m), "claim": claim}
        for epoch in claims_view.EPOCHS:
            d[f"delta_{epoch}"], d[f"check_{epoch}"] = d[epoch]["mean"], check(d[epoch]["mean"], claim)
        out.append(d)
    return out


def ablations(df: pd.DataFrame, runs: pd.DataFrame) -> list[dict]:
    """Per cell with swept keys: one row per variant, paired against the method's first baseline in the setting."""
    out = []
    for cell, g in df[df["swept"] != ""].groupby(list(CELL), sort=False):
        where = dict(zip(CELL, cell))
        same = runs[(runs[list(SETTING)] == pd.Series(where)[list(SETTING)]).all(axis=1)]
        bases = [b for b in (METHODS[where["method"]].compared_with if where["method"] in METHODS else ())
                 if b in set(same["method"])]
        base = same[same["method"] == bases[0]].set_index("seed") if bases else None
        variants = [{"values": v["values"].iloc[0], **_numbers(v[v["usable"]]), **({} if base is None else {
            "vs_base": _paired(base, v[v["usable"]].set_index("seed"))})} for _, v in g.groupby("variant", sort=False)]
        out.append({**where, "setting": g["setting"].iloc[0], "swept": g["swept"].iloc[0].split(", "),
                    "unswept": g["unswept"].iloc[0], "base": bases[0] if bases else None, "variants": variants})
    return out


def build_report(runs, skipped: list[dict], *, seeds: list[int] | None = None, paper=None, metric: str = "best",
                 sources=(), command: str = "") -> dict:
    df = table(runs)
    expected = sorted(set(seeds) if seeds is not None else {int(s) for s in df["seed"]})
    used, notes = compared(df)
    return {"command": command, "sources": list(sources), "metric": metric, "expected_seeds": expected,
            "seeds_from": "--seeds" if seeds is not None else "the seeds seen in the runs",
            "n_runs": len(df), "n_used": int(df["usable"].sum()),
            "n_unfinished": int((df["state"] == UNFINISHED).sum()), "n_diverged": int((df["state"] == DIVERGED).sum()),
            "paper_units": (paper or {}).get("units"), "rows": summarize(df, expected, paper),
            "deltas": compare(used, paper), "ablations": ablations(df, used), "claims": claims_view.judge(paper, used),
            "not_compared": notes, "skipped": skipped}


# --- rendering ------------------------------------------------------------------------------------------------
def fmt_err(stat: dict, pm: str = " ± ", dash: str = "—") -> str:
    return dash if stat["mean"] is None else f"{stat['mean']:.2f}{pm}" + (
        dash if stat["std"] is None else f"{stat['std']:.2f}")


def fmt_paper(p: dict, dash: str = "—") -> str:
    return f"{p['value']:.2f}" if p["status"] == "value" else "unknown" if p["status"] == "unknown" else dash


def _paired_columns(x: dict) -> dict:
    return {f"{e} Δ [95% CI]": stats.fmt_interval(x[e]) for e in ("last", "best")} | {
        "p (last)": stats.fmt_p(x["last"]["p"]), "verdict (last)": stats.fmt_decision(x["last"], x["last"]["verdict"]),
        "verdict (best)": x["best"]["verdict"].value}


def render_markdown(report: dict) -> str:
    sources = ", ".join(f"`{s}`" for s in report["sources"]) or "(none)"
    lines = [
        "# DLB reproduction: results", "",
        f"Aggregated from {sources}: **{report['n_runs']} runs** ({report['n_used']} in the means, "
        f"{report['n_unfinished']} unfinished, {report['n_diverged']} diverged), "
        f"{len(report['skipped'])} skipped (listed at the end).", "",
        f"Command: `{report['command']}`", "",
        f"Expected seeds: {', '.join(map(str, report['expected_seeds'])) or 'none'} ({report['seeds_from']}). "
        "Numbers are top-1 test error (%), mean ± sample std (ddof=1) over seeds, — where undefined; "
        "*last* = the last epoch (no selection on the test set), *best* = the best epoch, selected on the test set "
        "as the paper and the official code do (optimistic). Unfinished and diverged runs are not in the means. "
        "Comparisons pair runs by seed: Δ = base error − method error (positive = the method is better), mean with "
        "its 95 % Student-t interval; HOLDS / DOES NOT HOLD where the paired t-test's p < 0.05 (with several "
        "comparisons in a claim: Holm–Bonferroni adjusted), INCONCLUSIVE otherwise, with the seeds the observed "
        "spread would need (docs/statistics.md). Paper: the reference file's value "
        "(unknown = the paper has the cell but the number is not available offline; — = not in the paper). "
        f"The LaTeX table's check column uses the {report['metric']} epoch.", "",
        *claims_view.render_markdown(report["claims"]), "## Cells", "",
        *stats.markdown_table([{
            "dataset": r["dataset"], "backbone": r["backbone"], "method": label(r["method"]),
            "setting": r["setting"] or "—", "variant": r["variant"] or "—", "n": r["n"],
            "seeds": seeds_text(r["seeds"]), "last err": fmt_err(r["last"]), "best err": fmt_err(r["best"]),
            "paper": fmt_paper(r["paper"]), "flags": "; ".join(f.split(":")[0] for f in r["flags"])}
            for r in report["rows"]])]
    if report["deltas"]:
        lines += ["", "## Method vs base (base error − method error per seed, points; positive = the method is "
                      "better)", ""]
        lines += stats.markdown_table([{
            **pair_columns(d), "seeds": seeds_text(d["last"]["seeds"]), **_paired_columns(d),
            "paper claim": d["claim"]["text"] if d["claim"] else "—", "check (best)": d["check_best"]}
            for d in report["deltas"]])
    for a in report["ablations"]:
        where = f"{a['dataset']} / {a['backbone']} / {label(a['method'])}" + (f" [{a['setting']}]" * bool(a["setting"]))
        lines += ["", f"## Ablation: {where}, swept {', '.join(a['swept'])}", "",
                  f"Δ = {label(a['base'])} error − variant error, per seed." if a["base"] else
                  "No baseline of this setting for a paired difference."]
        lines += [f"Flagged: the runs also differ in {a['unswept']} (not swept)."] * bool(a["unswept"]) + [""]
        lines += stats.markdown_table([{
            **{k: fmt_value(v) for k, v in x["values"].items()}, "n": x["n"], "seeds": seeds_text(x["seeds"]),
            "last err": fmt_err(x["last"]), "best err": fmt_err(x["best"]),
            **(_paired_columns(x["vs_base"]) if a["base"] else {})} for x in a["variants"]])
    if report["not_compared"]:
        lines += ["", "Left out of the comparisons and claims: " + "; ".join(report["not_compared"]) + "."]
    lines += ["", "## Flags", ""]
    for r in report["rows"]:
        where = f" [{r['setting']}]" * bool(r["setting"]) + f" ({r['variant']})" * bool(r["variant"])
        lines += [f"- `{r['dataset']}/{r['backbone']}/{r['method']}{where}`:"] * bool(r["flags"])
        lines += [f"  - {f}" for f in r["flags"]]
    lines += [] if any(r["flags"] for r in report["rows"]) else ["None."]
    lines += ["", f"## Skipped ({len(report['skipped'])})", ""]
    lines += [f"- `{s['path']}`: {s['reason']}" for s in report["skipped"]] or ["None."]
    return "\n".join(lines) + "\n"


LATEX_SPECIAL = str.maketrans({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                               "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                               "^": r"\textasciicircum{}"})


def latex_escape(text) -> str:
    return str(text).translate(LATEX_SPECIAL)


def _tex(rows: list[dict], spec: str) -> list[str]:
    """A booktabs tabular of already escaped cells."""
    return pd.DataFrame(rows).style.hide(axis="index").to_latex(column_format=spec, hrules=True).splitlines()


def render_latex(report: dict) -> str:
    """booktabs tabulars (cells, then method-vs-base differences); needs \\usepackage{booktabs}."""
    e, pm, dash, m = latex_escape, r" $\pm$ ", "--", report["metric"]
    lines = [f"% Generated by: {report['command']}".replace("\n", " "),
             "% Top-1 test error (%), mean $\\pm$ sample std over seeds; last = last epoch, best = best epoch "
             "(selected on the test set, as the paper).", "% Needs \\usepackage{booktabs}."]
    lines += _tex([{"Dataset": e(r["dataset"]), "Backbone": e(r["backbone"]),
                    "Method": e(label(r["method"]) + (f" ({r['variant']})" if r["variant"] else ""))
                    + (r"$^\dagger$" if r["flags"] else ""), "Setting": e(r["setting"] or dash), "$n$": str(r["n"]),
                    "Last err.": fmt_err(r["last"], pm, dash), "Best err.": fmt_err(r["best"], pm, dash),
                    "Paper": e(fmt_paper(r["paper"], dash))} for r in report["rows"]], "llllrccl")
    lines.append(r"% $^\dagger$: flagged (missing seeds, unfinished/diverged runs or mismatched config), see the "
                 "Markdown report.")
    if report["deltas"]:
        ci = lambda s: e(stats.fmt_interval(s)).replace("[", "{[}").replace("]", "{]}")  # noqa: E731
        lines += ["", f"% Base error minus method error per seed (points), mean [95% t interval]; the check against "
                      f"the paper's claim uses the {m} epoch."]
        lines += _tex([{"Dataset": e(d["dataset"]), "Backbone": e(d["backbone"]), "Setting": e(d["setting"] or dash),
                        "Base $\\to$ method": e(label(d["base"])) + r" $\to$ " + e(label(d["method"])),
                        r"$\Delta$ last": ci(d["last"]), r"$\Delta$ best": ci(d["best"]),
                        "Paper claim": e(d["claim"]["text"] if d["claim"] else dash), "Check": e(d[f"check_{m}"])}
                       for d in report["deltas"]], "llllrrll")
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
    p.add_argument("roots", nargs="*", help=f"folders searched recursively for run folders ({RunFolder.SUMMARY})")
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

    sources = [*args.roots, *(f"wandb:{w}" for w in args.wandb)]
    runs, skipped = collect_runs(sources)
    if not runs:
        print(f"dlb.report: no runs found in {', '.join(sources)} (a run is a folder with {RunFolder.SUMMARY}, as "
              "dlb.train writes)", file=sys.stderr)
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
    for suffix, text in ((".md", markdown), (".tex", render_latex(report)),
                         (".json", json.dumps(report, indent=1, default=str) + "\n")):
        (out / f"{args.name}{suffix}").write_text(text)
    print(markdown)
    print(f"wrote {out / args.name}.md, .tex, .json", file=sys.stderr)
    return 0
