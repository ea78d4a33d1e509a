"""The paper's claims, judged on paired seeds: the report's "Claims" view.

A claim (results/paper/reference.yaml, `claims:`) names (base, method, setting) pairs. For each setting where the
report has both cells (main variants), the runs are paired by seed and each pair gives one difference:

  * error claims: base error − method error, in points (positive: the method is better);
  * cost claims: method / base for each measured cost (parameters, training time, peak memory), against the
    claim's limit for that cost.

A comparison HOLDS when every seed pair agrees with the claim, DOES NOT HOLD when every pair disagrees, and is
INCONCLUSIVE when the pairs disagree with each other or there are fewer than MIN_SEEDS of them: no claim is judged on
one seed. A claim with `grows: noise_rate` also judges whether the method's advantage grows from the lowest to the
highest rate of each (dataset, backbone), per seed. Nothing here knows the dataset or the scale: the same view
reads a CPU proxy grid or a CIFAR grid.
"""
from __future__ import annotations

import statistics
from enum import Enum

MIN_SEEDS = 2
SETTINGS = ("clean", "augment", "noise")  # a pair's setting: a report row's setting_kind


class Verdict(str, Enum):
    holds = "HOLDS"
    fails = "DOES NOT HOLD"
    inconclusive = "INCONCLUSIVE"


def verdict(agrees: list[bool]) -> Verdict:
    """One seed pair per entry: does it agree with the claim?"""
    if len(agrees) < MIN_SEEDS or len(set(agrees)) > 1:
        return Verdict.inconclusive
    return Verdict.holds if agrees[0] else Verdict.fails


def overall(verdicts: list[Verdict]) -> str:
    """A claim's verdict over its comparisons: the common verdict, else how many hold."""
    if not verdicts:
        return "NO RUNS"
    if len(set(verdicts)) == 1:
        return verdicts[0].value
    held = sum(v == Verdict.holds for v in verdicts)
    return f"HOLDS IN {held} OF {len(verdicts)}"


def _stats(values: list[float]) -> dict:
    return {"values": values, "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) >= 2 else None}


# On the CPU, summary.json's peak_memory_bytes is the process's peak RSS (data, libraries and all), not what training
# holds: not a measure of a method's memory, so cost claims leave it out there (results/method_costs.md measures
# the activation memory on any device).
NOT_ON_CPU = ("peak_memory_bytes",)


def _paired(base: dict, method: dict, key: str) -> dict[int, tuple[float, float]]:
    """{seed: (base value, method value)} over the seeds both rows have a number for."""
    out = {}
    for seed in sorted(set(base["per_seed"]) & set(method["per_seed"])):
        b, m = base["per_seed"][seed].get(key), method["per_seed"][seed].get(key)
        if key in NOT_ON_CPU and "cpu" in (base["per_seed"][seed].get("device"), method["per_seed"][seed].get("device")):
            continue
        if isinstance(b, (int, float)) and isinstance(m, (int, float)):
            out[seed] = (float(b), float(m))
    return out


def _context(row: dict) -> tuple:
    return row["dataset"], row["backbone"], row["augment"], row["noise"], row["noise_rate"]


def _pairs_of(claim: dict, rows: list[dict]):
    """(pair, base row, method row) for every setting holding both cells, in the report's row order."""
    main = {(_context(r), r["method"]): r for r in rows if r["main"]}
    for (context, method), row in main.items():
        for pair in claim.get("pairs") or []:
            base = main.get((context, pair["base"]))
            if method == pair["method"] and row["setting_kind"] == pair["setting"] and base is not None:
                yield pair, base, row


def _where(row: dict) -> dict:
    return {"dataset": row["dataset"], "backbone": row["backbone"], "setting": row["setting"],
            "augment": row["augment"], "noise_rate": row["noise_rate"]}


def error_comparisons(claim: dict, rows: list[dict], metric: str) -> list[dict]:
    out = []
    for pair, base, row in _pairs_of(claim, rows):
        paired = _paired(base, row, metric)
        diffs = {s: b - m for s, (b, m) in paired.items()}
        out.append({**_where(row), "base": pair["base"], "method": pair["method"], "seeds": list(diffs),
                    "diff": _stats(list(diffs.values())), "verdict": verdict([d > 0 for d in diffs.values()])})
    return out


def _key(c: dict) -> tuple:
    """A comparison's place but for its noise rate."""
    return c["dataset"], c["backbone"], c["augment"], c["base"], c["method"]


def growth_comparisons(comparisons: list[dict]) -> list[dict]:
    """Per (dataset, backbone, base, method): does the advantage at the highest noise rate exceed the one at the lowest
    (a clean comparison is rate 0), seed by seed?"""
    by_key: dict[tuple, dict[float, dict]] = {}
    for c in comparisons:
        by_key.setdefault(_key(c), {})[c["noise_rate"]] = c
    out = []
    for (dataset, backbone, _, base, method), by_rate in by_key.items():
        if len(by_rate) < 2:
            continue
        low, high = by_rate[min(by_rate)], by_rate[max(by_rate)]
        lo = dict(zip(low["seeds"], low["diff"]["values"]))
        hi = dict(zip(high["seeds"], high["diff"]["values"]))
        growth = {s: hi[s] - lo[s] for s in sorted(set(lo) & set(hi))}
        out.append({"dataset": dataset, "backbone": backbone, "base": base, "method": method,
                    "rates": sorted(by_rate), "advantage_by_rate": {r: by_rate[r]["diff"]["mean"] for r in sorted(by_rate)},
                    "seeds": list(growth), "growth": _stats(list(growth.values())),
                    "verdict": verdict([g > 0 for g in growth.values()])})
    return out


def cost_comparisons(claim: dict, rows: list[dict]) -> list[dict]:
    out = []
    for pair, base, row in _pairs_of(claim, rows):
        for cost, limit in (claim.get("limits") or {}).items():
            paired = _paired(base, row, cost)
            ratios = {s: m / b for s, (b, m) in paired.items() if b > 0}
            out.append({**_where(row), "base": pair["base"], "method": pair["method"], "cost": cost, "limit": limit,
                        "seeds": list(ratios), "ratio": _stats(list(ratios.values())),
                        "verdict": verdict([r <= limit for r in ratios.values()])})
    return out


def judge(paper: dict | None, rows: list[dict], metric: str = "best") -> list[dict]:
    """Every claim of the reference file that names pairs, with its comparisons and verdicts, in claim order."""
    claims = [(name, c) for name, c in ((paper or {}).get("claims") or {}).items()
              if isinstance(c, dict) and c.get("pairs")]
    out = []
    for name, claim in sorted(claims, key=lambda nc: nc[1].get("number", 99)):
        entry = {"name": name, "number": claim.get("number"), "statement": claim.get("statement"),
                 "source": claim.get("source"), "kind": claim.get("kind", "error")}
        if entry["kind"] == "cost":
            entry["comparisons"] = cost_comparisons(claim, rows)
            verdicts = [c["verdict"] for c in entry["comparisons"]]
        else:
            entry["comparisons"] = error_comparisons(claim, rows, metric)
            verdicts = [c["verdict"] for c in entry["comparisons"]]
            if claim.get("grows") == "noise_rate":  # clean comparisons count as rate 0 where there are noisy ones
                noisy = {_key(c) for c in entry["comparisons"] if c["noise_rate"] > 0}
                entry["comparisons"] = [c for c in entry["comparisons"] if _key(c) in noisy]
                verdicts = [c["verdict"] for c in entry["comparisons"]]
                entry["growth"] = growth_comparisons(entry["comparisons"])
                verdicts += [g["verdict"] for g in entry["growth"]]
        entry["verdict"] = overall(verdicts)
        entry["summary"] = summary_line(entry)
        out.append(entry)
    return out


def _against(c: dict) -> str:
    where = f"{c['backbone']}" + (f", {c['setting']}" if c["setting"] else "")
    return f"{c['base']} ({where})" if c.get("cost") is None else f"{c['cost']} vs {c['base']} ({where})"


def summary_line(entry: dict) -> str:
    """'holds against lsr, cskd; does not hold against pskd; inconclusive against tfkd_self' and the growth part."""
    parts = []
    for v in Verdict:
        names = list(dict.fromkeys(_against(c) for c in entry["comparisons"] if c["verdict"] == v))
        if names:
            parts.append(f"{v.value.lower()}: {', '.join(names)}")
    for g in entry.get("growth", []):
        parts.append(f"advantage grows {g['rates'][0]:g} -> {g['rates'][-1]:g} ({g['backbone']}): "
                     f"{g['verdict'].value.lower()}")
    return "; ".join(parts) or "no setting has both cells"


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def render_markdown(claims: list[dict], metric: str, label) -> list[str]:
    """The "Claims" section: a heading per claim with its verdict, a table of its paired comparisons."""
    if not claims:
        return []
    lines = ["## Claims", "",
             f"Each comparison pairs runs by seed (main variants, {metric} epoch). Error claims: base error − method "
             "error, points, positive = the method is better. Cost claims: method / base per seed, against the "
             f"claim's limit. HOLDS = every seed pair agrees, DOES NOT HOLD = every pair disagrees, INCONCLUSIVE = the "
             f"pairs disagree or there are fewer than {MIN_SEEDS}.", ""]
    for c in claims:
        lines += [f"### Claim {c['number']}: {c['statement']} — **{c['verdict']}**", "",
                  f"Source: {c['source']}. {c['summary']}.", ""]
        if c["kind"] == "cost":
            lines += ["| dataset | backbone | setting | cost | base → method | seeds | method / base per seed | "
                      "mean ± std | limit | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
            lines += [f"| {x['dataset']} | {x['backbone']} | {x['setting'] or '—'} | {x['cost']} | "
                      f"{label(x['base'])} → {label(x['method'])} | {','.join(map(str, x['seeds'])) or '—'} | "
                      f"{' '.join(f'{v:.3f}' for v in x['ratio']['values']) or '—'} | "
                      f"{_fmt(x['ratio']['mean'], '.3f')} ± {_fmt(x['ratio']['std'], '.3f')} | ≤ {x['limit']:g} | "
                      f"{x['verdict'].value} |" for x in c["comparisons"]]
        else:
            lines += ["| dataset | backbone | setting | base → method | seeds | diff per seed | mean ± std | verdict |",
                      "|---|---|---|---|---|---|---|---|"]
            lines += [f"| {x['dataset']} | {x['backbone']} | {x['setting'] or '—'} | "
                      f"{label(x['base'])} → {label(x['method'])} | {','.join(map(str, x['seeds'])) or '—'} | "
                      f"{' '.join(f'{v:+.2f}' for v in x['diff']['values']) or '—'} | "
                      f"{_fmt(x['diff']['mean'], '+.2f')} ± {_fmt(x['diff']['std'], '.2f')} | {x['verdict'].value} |"
                      for x in c["comparisons"]]
        if c.get("growth"):
            lines += ["", "Does the advantage grow with the noise rate (highest rate − lowest, per seed)?", "",
                      "| dataset | backbone | base → method | mean advantage by rate | growth per seed | mean ± std | "
                      "verdict |", "|---|---|---|---|---|---|---|"]
            lines += [f"| {g['dataset']} | {g['backbone']} | {label(g['base'])} → {label(g['method'])} | "
                      + ", ".join(f"{r:g}: {_fmt(a, '+.2f')}" for r, a in g["advantage_by_rate"].items())
                      + f" | {' '.join(f'{v:+.2f}' for v in g['growth']['values']) or '—'} | "
                      f"{_fmt(g['growth']['mean'], '+.2f')} ± {_fmt(g['growth']['std'], '.2f')} | {g['verdict'].value} |"
                      for g in c["growth"]]
        lines.append("")
    return lines
