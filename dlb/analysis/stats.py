"""Paired statistics on per-seed differences (docs/statistics.md); Student's t from the regularized incomplete beta
function (Numerical Recipes' continued fraction), so the analysis needs no scipy."""
from __future__ import annotations

import bisect
import itertools
import math
import statistics
from enum import Enum

import pandas as pd

LEVEL = 0.95  # confidence of every interval; two-sided tests at 1 - LEVEL
MIN_PAIRS = 2  # no comparison is judged on one seed
MAX_SEEDS = 1000  # the seeds-needed search stops here


class Verdict(str, Enum):
    holds = "HOLDS"
    fails = "DOES NOT HOLD"
    inconclusive = "INCONCLUSIVE"


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    h = d = 1 / (d if abs(d) > tiny else tiny)
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1 - front * _beta_fraction(b, a, 1 - x) / b


def t_sf2(t: float, df: int) -> float:
    """Two-sided tail probability P(|T| >= |t|) of Student's t with df degrees of freedom."""
    return betainc(df / 2, 0.5, df / (df + t * t)) if math.isfinite(t) else 0.0


def t_quantile(p: float, df: int) -> float:
    """The t value with P(T <= t) = p, for p in (0.5, 1): bisection on the tail probability."""
    lo, hi = 0.0, 1.0
    while t_sf2(hi, df) > 2 * (1 - p):
        hi *= 2
    for _ in range(64):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_sf2(mid, df) > 2 * (1 - p) else (lo, mid)
    return (lo + hi) / 2


def seeds_needed(mean: float, sd: float, alpha: float = 1 - LEVEL) -> str:
    """Smallest n with t_{1-alpha/2, n-1} * sd / sqrt(n) < |mean|: the seeds that would decide the comparison."""
    if mean == 0:
        return "none: mean is 0"
    if sd == 0:
        return str(MIN_PAIRS)
    decided = lambda n: t_quantile(1 - alpha / 2, n - 1) * sd / math.sqrt(n) < abs(mean)  # noqa: E731
    # the half-width shrinks with n: bisect for the first n that decides
    n = bisect.bisect_left(range(MIN_PAIRS, MAX_SEEDS + 1), True, key=decided) + MIN_PAIRS
    return f"over {MAX_SEEDS}" if n > MAX_SEEDS else str(n)


def paired(diffs: list[float]) -> dict:
    """Mean, sample std, LEVEL t interval and two-sided paired-t p-value; below MIN_PAIRS the mean only."""
    n = len(diffs)
    out = {"n": n, "values": list(diffs), "mean": statistics.fmean(diffs) if diffs else None, "std": None,
           "lo": None, "hi": None, "p": None, "seeds_needed": None}
    if n < MIN_PAIRS:
        return out
    mean, sd = out["mean"], statistics.stdev(diffs)
    half = t_quantile(1 - (1 - LEVEL) / 2, n - 1) * sd / math.sqrt(n)
    p = (1.0 if mean == 0 else 0.0) if sd == 0 else t_sf2(mean / (sd / math.sqrt(n)), n - 1)
    return {**out, "std": sd, "lo": mean - half, "hi": mean + half, "p": p, "seeds_needed": seeds_needed(mean, sd)}


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values (None stays None and does not count towards the comparisons)."""
    known = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    steps = (min(1.0, (len(known) - rank) * p) for rank, (p, _) in enumerate(known))
    adjusted = dict(zip((i for _, i in known), itertools.accumulate(steps, max)))  # step-down: never below the last
    return [adjusted.get(i) for i in range(len(p_values))]


def verdict(stats: dict, p_adjusted: float | None = None) -> Verdict:
    """HOLDS / DOES NOT HOLD by the sign of the mean where the (adjusted) p < 1 - LEVEL; else INCONCLUSIVE."""
    p = stats["p"] if p_adjusted is None else p_adjusted
    if p is None or p >= 1 - LEVEL:
        return Verdict.inconclusive
    return Verdict.holds if stats["mean"] > 0 else Verdict.fails


def overall(verdicts: list[Verdict]) -> str:
    """A claim's verdict over its comparisons: the common verdict, else how many hold."""
    n = sum(v == Verdict.holds for v in verdicts)
    return verdicts[0].value if len(set(verdicts)) == 1 else f"HOLDS IN {n} OF {len(verdicts)}"


def fmt_interval(s: dict, spec: str = "+.2f") -> str:
    """'+0.60 [+0.10, +1.10]'; the mean alone below MIN_PAIRS; '—' without pairs."""
    if s["mean"] is None:
        return "—"
    return f"{s['mean']:{spec}} " + ("(1 pair)" if s["lo"] is None else f"[{s['lo']:{spec}}, {s['hi']:{spec}}]")


def fmt_p(p: float | None) -> str:
    return "—" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_decision(s: dict, verdict: Verdict) -> str:
    """The verdict, and for an inconclusive one the seeds that would decide it."""
    need = s["seeds_needed"] or f"unknown: fewer than {MIN_PAIRS} pairs"
    return verdict.value + (f" (seeds needed: {need})" if verdict == Verdict.inconclusive else "")


def markdown_table(rows: list[dict]) -> list[str]:
    """The rows (dicts of one shape) as a Markdown table, cells as text; | escaped."""
    cells = [{k: str(v).replace("|", "\\|").replace("\n", " ") for k, v in r.items()} for r in rows]
    return pd.DataFrame(cells).to_markdown(index=False, disable_numparse=True).splitlines()
