"""The report's Claims view (dlb/analysis/claims.py) and its statistics (dlb/analysis/stats.py) on run folders written
by hand: the paired t interval decides each verdict (held, not held, inconclusive with the seeds it would need),
Holm over a claim's comparisons, last vs best epoch named where they disagree, the noise-growth check, a cost claim."""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO
from dlb.analysis import report as report
from dlb.analysis import stats
from dlb.analysis.stats import Verdict
from test_report import write_run as _write_run


def write_run(root, rel, errs, **kw):
    return _write_run(root, rel, errs, epochs=len(errs), **kw)  # a finished run

PAPER = yaml.safe_load((REPO / "results" / "paper" / "reference.yaml").read_text())


def build(root, paper=PAPER):
    runs, skipped = report.collect_runs([root])
    assert not skipped
    return report.build_report(runs, skipped, paper=paper)


def claim(rep, number):
    return next(c for c in rep["claims"] if c["number"] == number)


def test_t_distribution_against_known_values():
    assert stats.t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-6)
    assert stats.t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-6)
    assert stats.t_quantile(0.975, 1) == pytest.approx(12.706205, abs=1e-6)
    assert stats.t_quantile(0.995, 10) == pytest.approx(3.169273, abs=1e-6)
    assert stats.t_sf2(2.0, 5) == pytest.approx(0.101939, abs=1e-6)
    assert stats.t_sf2(0.0, 3) == pytest.approx(1.0)
    assert stats.betainc(2, 3, 0.4) == pytest.approx(0.5248)  # 1 - sum_{k<2} C(4,k) 0.4^k 0.6^(4-k)


def test_paired_interval_p_and_seeds_needed():
    s = stats.paired([1.0, 1.5, 0.5])  # mean 1, sd 0.5: t = 3.46 on 2 df
    assert s["mean"] == 1.0 and s["std"] == pytest.approx(0.5)
    half = 4.302653 * 0.5 / 3 ** 0.5
    assert (s["lo"], s["hi"]) == pytest.approx((1 - half, 1 + half))
    assert s["p"] == pytest.approx(0.0742, abs=1e-4)
    assert stats.verdict(s) == Verdict.inconclusive
    assert s["seeds_needed"] == "4"  # t_{0.975,3} 0.5 / 2 = 0.80 < 1, t_{0.975,2} 0.5 / sqrt 3 = 1.24 > 1
    assert stats.verdict(stats.paired([1.0, 1.1, 0.9, 1.0])) == Verdict.holds
    assert stats.verdict(stats.paired([-1.0, -1.1, -0.9, -1.0])) == Verdict.fails
    assert stats.paired([0.5, -0.5])["seeds_needed"] == "none: mean is 0"
    one = stats.paired([2.0])  # never judged on one seed
    assert one["lo"] is None and stats.verdict(one) == Verdict.inconclusive
    adjusted = stats.holm([0.01, 0.04, 0.03, None])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and adjusted[3] is None
    assert stats.overall([Verdict.holds, Verdict.fails, Verdict.inconclusive]) == "HOLDS IN 1 OF 3"


def _pairs(root, base, method, base_errs, method_errs, **kw):
    for seed, (b, m) in enumerate(zip(base_errs, method_errs)):
        write_run(root, f"c/r/{base}/seed{seed}", b if isinstance(b, list) else [b], method=base, seed=seed, **kw)
        write_run(root, f"c/r/{method}/seed{seed}", m if isinstance(m, list) else [m], method=method, seed=seed, **kw)


def test_interval_decides_held_not_held_inconclusive(tmp_path):
    """Claim 2, four baselines, 4 seeds: DLB beats LSR clearly, loses to PS-KD clearly; against CS-KD the pairs
    agree in sign but spread too much; Tf-KD has one seed only."""
    root = tmp_path / "runs"
    dlb = [9.0, 9.5, 10.0, 9.2]
    base = {"lsr": [d + g for d, g in zip(dlb, (1.0, 1.1, 0.9, 1.0))],
            "pskd": [d - g for d, g in zip(dlb, (1.0, 1.1, 0.9, 1.0))],
            "cskd": [d + g for d, g in zip(dlb, (0.1, 2.0, 0.2, 1.9))]}
    for seed, err in enumerate(dlb):
        write_run(root, f"c/r/dlb/seed{seed}", [err], method="dlb", seed=seed)
        for method, errs in base.items():
            write_run(root, f"c/r/{method}/seed{seed}", [errs[seed]], method=method, seed=seed)
    write_run(root, "c/r/tfkd_self/seed0", [9.8], method="tfkd_self", seed=0)
    rep = build(root)
    c2 = claim(rep, 2)
    by_base = {c["base"]: c["last"] for c in c2["comparisons"]}
    assert by_base["lsr"]["verdict"] == Verdict.holds and by_base["lsr"]["lo"] > 0
    assert by_base["pskd"]["verdict"] == Verdict.fails and by_base["pskd"]["hi"] < 0
    cskd = by_base["cskd"]
    assert all(d > 0 for d in cskd["values"]) and cskd["lo"] < 0 and cskd["verdict"] == Verdict.inconclusive
    assert int(cskd["seeds_needed"]) > 4
    assert by_base["tfkd_self"]["seeds"] == [0] and by_base["tfkd_self"]["verdict"] == Verdict.inconclusive
    assert c2["verdict"] == {"last": "HOLDS IN 1 OF 4", "best": "HOLDS IN 1 OF 4"}
    md = report.render_markdown(rep)
    assert "### Claim 2: DLB beats" in md and "last epoch **HOLDS IN 1 OF 4**" in md
    assert f"INCONCLUSIVE (seeds needed: {cskd['seeds_needed']})" in md
    assert "INCONCLUSIVE (seeds needed: unknown: fewer than 2 pairs)" in md
    assert "Claims without runs of both their cells: 1, 3, 4, 5." in md and "### Claim 1" not in md
    json.dumps(rep, default=str)  # the JSON report holds the claims too


def test_holm_over_a_claims_comparisons(tmp_path):
    """Two comparisons each significant on its own (p 0.029 and 0.038) but not after Holm over the claim's two."""
    root = tmp_path / "runs"
    gains = {"lsr": (1.0, 1.3, 0.7), "pskd": (1.0, 1.35, 0.65)}
    for seed in range(3):
        write_run(root, f"c/r/dlb/seed{seed}", [10.0], method="dlb", seed=seed)
        for method, gain in gains.items():
            write_run(root, f"c/r/{method}/seed{seed}", [10.0 + gain[seed]], method=method, seed=seed)
    c2 = claim(build(root), 2)
    lsr, pskd = ({c["base"]: c["last"] for c in c2["comparisons"]}[b] for b in ("lsr", "pskd"))
    assert 0.025 < lsr["p"] < pskd["p"] < 0.05 and stats.verdict(lsr) == stats.verdict(pskd) == Verdict.holds
    assert lsr["p_holm"] == pytest.approx(2 * lsr["p"]) and pskd["p_holm"] == pytest.approx(2 * lsr["p"])
    assert lsr["verdict"] == pskd["verdict"] == Verdict.inconclusive and c2["verdict"]["last"] == "INCONCLUSIVE"
    # seeds needed at 0.05 / 2: more than the 3 that decide each comparison on its own
    assert stats.seeds_needed(lsr["mean"], lsr["std"]) == "3" and int(lsr["seeds_needed"]) > 3


def test_last_and_best_epoch_verdicts_disagree_in_words(tmp_path):
    """DLB's best epoch (chosen on the test set) beats CE on every seed; its last epoch does not."""
    root = tmp_path / "runs"
    _pairs(root, "ce", "dlb", [[10.0, 10.0]] * 3,
           [[9.0, 10.2], [9.1, 9.7], [8.9, 10.1]])  # best 9.0/9.1/8.9: +1.0; last: -0.2 +0.3 -0.1
    c1 = claim(build(root), 1)
    (cmp,) = c1["comparisons"]
    assert cmp["best"]["verdict"] == Verdict.holds and cmp["last"]["verdict"] == Verdict.inconclusive
    assert c1["verdict"] == {"last": "INCONCLUSIVE", "best": "HOLDS"}
    md = report.render_markdown(build(root))
    assert ("The two epochs disagree: dlb vs ce (cifar10/cifar_resnet32): inconclusive on the last epoch, holds on "
            "the test-selected best epoch.") in md


def test_claims_pair_by_seed_not_by_mean(tmp_path):
    """Means favour DLB, but only because of one seed: the paired interval spans 0 -> inconclusive."""
    root = tmp_path / "runs"
    _pairs(root, "ce", "dlb", [20.0, 10.0, 10.0], [10.0, 10.5, 10.5])
    c1 = claim(build(root), 1)
    assert c1["comparisons"][0]["last"]["mean"] > 0 and c1["verdict"]["last"] == "INCONCLUSIVE"


def test_noise_claim_and_its_growth(tmp_path):
    root = tmp_path / "runs"
    advantage = {0.0: [0.2, 0.3, 0.25], 0.2: [0.5, 0.4, 0.45], 0.6: [1.5, 2.0, 1.8]}  # DLB's advantage, growing
    for rate, adv in advantage.items():
        noise = "none" if rate == 0 else "symmetric"
        for seed, a in enumerate(adv):
            tag = "" if rate == 0 else f"+symmetric{rate:g}"
            write_run(root, f"c/r/ce{tag}/seed{seed}", [20.0], method="ce", seed=seed, noise=noise, rate=rate)
            write_run(root, f"c/r/dlb{tag}/seed{seed}", [20.0 - a], method="dlb", seed=seed, noise=noise, rate=rate)
    c4 = claim(build(root), 4)
    assert [c["rate"] for c in c4["comparisons"]] == [0.0, 0.2, 0.6]
    assert all(c["last"]["verdict"] == Verdict.holds for c in c4["comparisons"])
    (g,) = c4["growth"]
    assert g["rates"] == [0.0, 0.2, 0.6] and g["last"]["values"] == pytest.approx([1.3, 1.7, 1.55])
    assert g["last"]["verdict"] == Verdict.holds and c4["verdict"]["last"] == "HOLDS"
    # the advantage shrinking at 60%: it still holds at every rate, its growth does not
    for d in root.rglob("summary.json"):
        s = json.loads(d.read_text())
        if s["method"] == "dlb" and "symmetric0.6" in str(d):
            s["last_test_err"] = s["best_test_err"] = 20.0 - 0.1 + 0.01 * s["seed"]
            d.write_text(json.dumps(s))
    c4 = claim(build(root), 4)
    assert c4["growth"][0]["last"]["verdict"] == Verdict.fails and c4["verdict"]["last"] == "HOLDS IN 3 OF 4"


def test_cost_claim(tmp_path):
    root = tmp_path / "runs"
    _pairs(root, "ce", "dlb", [10.0] * 3, [9.0] * 3)
    for d in root.rglob("summary.json"):  # DLB: same parameters, 1.9x the training time, 1.2x the process memory
        s = json.loads(d.read_text())
        s["train_time_s"] = 19.0 if s["method"] == "dlb" else 10.0
        s["peak_memory_bytes"], s["device"] = (1.2e9 if s["method"] == "dlb" else 1e9), "cpu"
        d.write_text(json.dumps(s))
    c5 = claim(build(root), 5)
    by_cost = {c["cost"]: c for c in c5["comparisons"]}
    assert by_cost["num_params"]["verdict"] == Verdict.holds and by_cost["num_params"]["ratio"]["mean"] == 1.0
    assert by_cost["train_time_s"]["verdict"] == Verdict.fails
    assert by_cost["train_time_s"]["ratio"]["values"] == pytest.approx([1.9] * 3)
    assert by_cost["peak_memory_bytes"]["seeds"] == []  # a CPU run's RSS is not training memory: not judged
    assert by_cost["peak_memory_bytes"]["verdict"] == Verdict.inconclusive
    assert "| ≤ 1.5   | DOES NOT HOLD |" in report.render_markdown(build(root))
    for d in root.rglob("summary.json"):  # the same on a GPU: max allocated memory, judged
        s = json.loads(d.read_text())
        d.write_text(json.dumps({**s, "device": "cuda"}))
    memory = next(c for c in claim(build(root), 5)["comparisons"] if c["cost"] == "peak_memory_bytes")
    assert memory["ratio"]["values"] == pytest.approx([1.2] * 3) and memory["verdict"] == Verdict.holds


def test_claims_compare_the_variant_at_the_defaults(tmp_path):
    """A DLB run with other hyper-parameters (a sensitivity sweep's) is not the DLB the claims compare: they take
    the variant at the method's defaults (T=3, alpha=1)."""
    root = tmp_path / "runs"
    _pairs(root, "ce", "dlb", [10.0, 10.2], [9.0, 9.2])
    write_run(root, "c/r/dlb/T6/seed0", [12.0], method="dlb", seed=0, T=6.0)
    (cmp,) = claim(build(root), 1)["comparisons"]
    assert cmp["last"]["values"] == pytest.approx([1.0, 1.0]) and cmp["last"]["verdict"] == Verdict.holds


def test_noise_claim_leaves_out_clean_comparisons_without_noisy_runs(tmp_path):
    """Claim 4 is about noise: a backbone trained clean only is claim 1's, not a noise comparison."""
    root = tmp_path / "runs"
    for seed in range(2):
        for backbone, rates in (("cifar_resnet8", (0.0, 0.4)), ("cifar_resnet20", (0.0,))):
            for rate in rates:
                noise, tag = ("none", "") if rate == 0 else ("symmetric", f"+symmetric{rate:g}")
                for method, err in (("ce", 20.0), ("dlb", 19.0)):
                    write_run(root, f"c/{backbone}/{method}{tag}/seed{seed}", [err], method=method, seed=seed,
                              backbone=backbone, noise=noise, rate=rate)
    c4 = claim(build(root), 4)
    assert {(c["backbone"], c["rate"]) for c in c4["comparisons"]} == {("cifar_resnet8", 0.0), ("cifar_resnet8", 0.4)}
    assert len(claim(build(root), 1)["comparisons"]) == 2


def test_a_claim_is_judged_on_any_dataset_the_runs_have(tmp_path):
    """The claims name the paper's datasets, but the view judges the runs it is given: a CPU proxy on Fashion-MNIST
    (results/cpu_claims) is judged like a CIFAR grid."""
    root = tmp_path / "runs"
    for seed, (ce, dlb) in enumerate([(16.0, 15.0), (16.5, 15.6), (15.8, 14.7)]):
        for method, err in (("ce", ce), ("dlb", dlb)):
            write_run(root, f"f/r/{method}/seed{seed}", [err], method=method, seed=seed, dataset="fashion_mnist")
    c1 = claim(build(root), 1)
    assert [c["dataset"] for c in c1["comparisons"]] == ["fashion_mnist"]
    assert c1["comparisons"][0]["last"]["verdict"] == Verdict.holds
