"""The paper's claims (results/paper/reference.yaml, `claims:`) judged on runs paired by seed: the report's "Claims"
view. The rule, for error, cost and growth claims: docs/statistics.md."""
from __future__ import annotations

import pandas as pd

from dlb.analysis import stats
from dlb.analysis.runs import COSTS, SETTING
from dlb.analysis.stats import Verdict
from dlb.methods import label

EPOCHS = {"last": "last_err", "best": "best_err"}  # verdict epoch -> run-table column
# On the CPU, summary.json's peak_memory_bytes is the process's peak RSS (data, libraries and all), not what training
# holds: not a measure of a method's memory, so cost claims leave it out there (results/method_costs.md measures
# the activation memory on any device).
NOT_ON_CPU = ("peak_memory_bytes",)


def pairs_of(runs: pd.DataFrame, pairs):
    """(setting dict, base, method, {seed: base row}, {seed: method row}) per setting, in table order, and pair
    {base, method, setting: kind or None for any} with both cells."""
    for setting, group in runs.groupby(list(SETTING), sort=False):
        for pair in pairs:
            b, m = group[group["method"] == pair["base"]], group[group["method"] == pair["method"]]
            if len(b) and len(m) and pair.get("setting") in (None, group["kind"].iloc[0]):
                where = {**{k: getattr(v, "item", lambda: v)() for k, v in zip(SETTING, setting)},
                         "setting": group["setting"].iloc[0]}
                yield where, pair["base"], pair["method"], b.set_index("seed"), m.set_index("seed")


def paired_errors(b: pd.DataFrame, m: pd.DataFrame) -> dict:
    """Per epoch: the paired statistics of base − method error over the seeds both have a number for."""
    diffs = {epoch: (b[column] - m[column]).dropna().sort_index() for epoch, column in EPOCHS.items()}
    return {epoch: {**stats.paired(d.tolist()), "seeds": [int(s) for s in d.index]} for epoch, d in diffs.items()}


def growth_comparisons(comparisons: list[dict]) -> list[dict]:
    """Per (dataset, backbone, augment, base, method): the advantage at the highest noise rate minus the one at the
    lowest (a clean comparison is rate 0), seed by seed."""
    by_key: dict[tuple, dict[float, dict]] = {}
    for c in comparisons:
        by_key.setdefault((c["dataset"], c["backbone"], c["augment"], c["base"], c["method"]), {})[c["rate"]] = c
    out = []
    for (dataset, backbone, _, base, method), by_rate in by_key.items():
        if len(by_rate) < 2:
            continue
        low, high = by_rate[min(by_rate)], by_rate[max(by_rate)]
        g = {"dataset": dataset, "backbone": backbone, "base": base, "method": method, "rates": sorted(by_rate)}
        for epoch in EPOCHS:
            lo, hi = (dict(zip(c[epoch]["seeds"], c[epoch]["values"])) for c in (low, high))
            seeds = sorted(set(lo) & set(hi))
            g[epoch] = {**stats.paired([hi[s] - lo[s] for s in seeds]), "seeds": seeds,
                        "by_rate": {r: by_rate[r][epoch]["mean"] for r in sorted(by_rate)}}
        out.append(g)
    return out


def cost_comparisons(claim: dict, runs: pd.DataFrame) -> list[dict]:
    """Per pair, setting and cost of the claim's limits: method / base per seed against the limit."""
    limits = {cost: limit for cost, limit in (claim.get("limits") or {}).items() if cost in COSTS}
    out = []
    for pair in claim.get("pairs") or []:
        for where, _, _, b, m in pairs_of(runs, [pair]):
            for cost, limit in limits.items():
                cpu = b["device"].str.startswith("cpu") | m["device"].reindex(b.index).fillna("").str.startswith("cpu")
                base_cost = b[cost].where(~cpu) if cost in NOT_ON_CPU else b[cost]
                ratios = (m[cost] / base_cost[base_cost > 0]).dropna().sort_index()
                within = [r <= limit for r in ratios]
                verdict = (Verdict.inconclusive if len(within) < stats.MIN_PAIRS or len(set(within)) > 1
                           else Verdict.holds if within[0] else Verdict.fails)
                out.append({**where, "base": pair["base"], "method": pair["method"], "cost": cost, "limit": limit,
                            "seeds": [int(s) for s in ratios.index], "ratio": stats.paired(ratios.tolist()),
                            "verdict": verdict})
    return out


def judge(paper: dict | None, runs: pd.DataFrame) -> list[dict]:
    """Every claim of the reference file that names pairs, judged on `runs` (runs.compared()), in claim order."""
    claims = [(name, c) for name, c in ((paper or {}).get("claims") or {}).items()
              if isinstance(c, dict) and c.get("pairs")]
    out = []
    for name, claim in sorted(claims, key=lambda nc: nc[1].get("number", 99)):
        entry = {"name": name, "number": claim.get("number"), "statement": claim.get("statement"),
                 "source": claim.get("source"), "kind": claim.get("kind", "error"), "growth": []}
        if entry["kind"] == "cost":
            comparisons = cost_comparisons(claim, runs)
            verdict = stats.overall([c["verdict"] for c in comparisons]) if comparisons else None
            out.append({**entry, "comparisons": comparisons, "verdict": {"last": verdict, "best": verdict}})
            continue
        comparisons = [{**where, "base": base, "method": method, **paired_errors(b, m)}
                       for where, base, method, b, m in pairs_of(runs, claim["pairs"])]
        if claim.get("grows") == "noise_rate":  # clean comparisons count as rate 0 where there are noisy ones
            noisy = {(c["dataset"], c["backbone"], c["augment"]) for c in comparisons if c["rate"] > 0}
            comparisons = [c for c in comparisons if (c["dataset"], c["backbone"], c["augment"]) in noisy]
            entry["growth"] = growth_comparisons(comparisons)
        judged = comparisons + entry["growth"]
        for epoch in EPOCHS:  # Holm over the claim's p-values of this epoch, then each comparison's verdict
            adjusted = stats.holm([c[epoch]["p"] for c in judged])
            family = sum(p is not None for p in adjusted)
            for s, p in zip((c[epoch] for c in judged), adjusted):
                s["p_holm"], s["verdict"] = p, stats.verdict(s, p)
                if p is not None and family > 1:  # enough seeds to hold at Holm's strictest step (Bonferroni)
                    s["seeds_needed"] = stats.seeds_needed(s["mean"], s["std"], (1 - stats.LEVEL) / family)
        out.append({**entry, "comparisons": comparisons, "verdict": {
            e: stats.overall([c[e]["verdict"] for c in judged]) if judged else None for e in EPOCHS}})
    return out


# --- rendering ------------------------------------------------------------------------------------------------
def seeds_text(seeds: list[int]) -> str:
    return ",".join(map(str, seeds)) or "—"


def pair_columns(x: dict, setting: bool = True, **more) -> dict:
    """The columns that name a comparison: where (and `more`), then base → method."""
    return {"dataset": x["dataset"], "backbone": x["backbone"], **({"setting": x["setting"] or "—"} if setting else {}),
            **more, "base → method": f"{label(x['base'])} → {label(x['method'])}"}


def disagreements(entry: dict) -> list[str]:
    """The comparisons whose last-epoch and best-epoch verdicts differ, in words."""
    return [(f"growth of the advantage over {c['base']} ({c['backbone']}, rate {c['rates'][0]:g} -> {c['rates'][-1]:g})"
             if "rates" in c else f"{c['method']} vs {c['base']} ({c['dataset']}/{c['backbone']}"
             + f", {c['setting']}" * bool(c["setting"]) + ")")
            + f": {c['last']['verdict'].value.lower()} on the last epoch, {c['best']['verdict'].value.lower()} on the "
            "test-selected best epoch" for c in entry["comparisons"] + entry["growth"]
            if entry["kind"] != "cost" and c["last"]["verdict"] != c["best"]["verdict"]]


def _epoch_columns(c: dict) -> dict:
    return {f"{e}: {k}": t for e in EPOCHS for k, t in (
        ("mean [95% CI, unadjusted]", stats.fmt_interval(c[e])), ("p (Holm)", stats.fmt_p(c[e]["p_holm"])),
        ("verdict", stats.fmt_decision(c[e], c[e]["verdict"])))}


def render_markdown(claims: list[dict]) -> list[str]:
    """The "Claims" section: per claim with comparisons its verdicts and table; the others in one line."""
    if not claims:
        return []
    lines = ["## Claims", ""]
    if not any(c["comparisons"] for c in claims):
        return lines + [f"No claim has runs of both its cells (claims {', '.join(str(c['number']) for c in claims)})."
                        "", ""]
    lines += ["Error claims: base error − method error per seed (runs paired by seed), points, positive = the method "
              "is better; mean with its 95 % Student-t interval and the paired t-test's p-value, Holm–Bonferroni "
              "adjusted over the claim's comparisons (per epoch). HOLDS / DOES NOT HOLD where the adjusted p < 0.05, "
              "by the sign of the mean; INCONCLUSIVE otherwise, with the seeds the observed mean and spread would "
              "need to hold at Holm's strictest step (0.05 / the number of comparisons). The "
              "verdict is on the last epoch (no selection on the test set); the best epoch, selected on the test "
              "set as in the paper, is judged beside it. Cost claims: method / base per seed against the claim's "
              "limit. Rule: docs/statistics.md.", ""]
    for c in (c for c in claims if c["comparisons"]):
        v = c["verdict"]
        head = (f"**{v['last']}**" if c["kind"] == "cost" else
                f"last epoch **{v['last']}**; best epoch (test-selected, paper's protocol) **{v['best']}**")
        lines += [f"### Claim {c['number']}: {c['statement']} — {head}", "", f"Source: {c['source']}.", ""]
        if differ := disagreements(c):
            lines += ["The two epochs disagree: " + "; ".join(differ) + ".", ""]
        if c["kind"] == "cost":
            lines += stats.markdown_table([{
                **pair_columns(x, cost=x["cost"]), "seeds": seeds_text(x["seeds"]),
                "method / base per seed": " ".join(f"{r:.3f}" for r in x["ratio"]["values"]) or "—",
                "mean": "—" if x["ratio"]["mean"] is None else f"{x['ratio']['mean']:.3f}",
                "limit": f"≤ {x['limit']:g}", "verdict": x["verdict"].value} for x in c["comparisons"]])
        else:
            lines += stats.markdown_table([{
                **pair_columns(x), "seeds": seeds_text(x["last"]["seeds"]),
                "last: per seed": " ".join(f"{d:+.2f}" for d in x["last"]["values"]) or "—", **_epoch_columns(x)}
                for x in c["comparisons"]])
        if c["growth"]:
            lines += ["", "Does the advantage grow with the noise rate (highest rate − lowest, per seed)?", ""]
            lines += stats.markdown_table([{
                **pair_columns(g, setting=False),
                "last: mean advantage by rate": ", ".join(f"{r:g}: {a:+.2f}" for r, a in g["last"]["by_rate"].items()),
                "last: growth per seed": " ".join(f"{d:+.2f}" for d in g["last"]["values"]) or "—",
                **_epoch_columns(g)} for g in c["growth"]])
        lines.append("")
    if empty := [str(c["number"]) for c in claims if not c["comparisons"]]:
        lines += [f"Claims without runs of both their cells: {', '.join(empty)}.", ""]
    return lines
