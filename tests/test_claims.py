"""The report's Claims view (dlb/analysis/claims.py) on run folders written by hand: a claim held on every seed, one that
fails on every seed, one whose seeds disagree, one seed only, the noise-growth check and a cost claim."""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO
from dlb.analysis import claims as claims
from dlb.analysis import report as report
from dlb.analysis.claims import Verdict
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


def test_verdict_rules():
    assert claims.verdict([True, True, True]) == Verdict.holds
    assert claims.verdict([False, False]) == Verdict.fails
    assert claims.verdict([True, False, True]) == Verdict.inconclusive  # the sign differs between seeds
    assert claims.verdict([True]) == Verdict.inconclusive  # never judged on one seed
    assert claims.verdict([]) == Verdict.inconclusive
    assert claims.overall([Verdict.holds, Verdict.holds]) == "HOLDS"
    assert claims.overall([Verdict.holds, Verdict.fails, Verdict.inconclusive]) == "HOLDS IN 1 OF 3"


@pytest.fixture
def grid(tmp_path):
    """CE, DLB, LSR, PS-KD, CS-KD on one backbone, 3 seeds (best errors below). DLB beats CE and LSR on every seed,
    loses to PS-KD on every seed, and against CS-KD the seeds disagree; Tf-KD has one seed only."""
    best = {"ce": [10.0, 11.0, 10.5], "dlb": [9.0, 9.5, 10.0], "lsr": [9.5, 10.0, 10.2], "pskd": [8.0, 8.5, 9.0],
            "cskd": [9.5, 9.0, 10.5], "tfkd_self": [9.8]}
    root = tmp_path / "runs"
    for method, errs in best.items():
        for seed, err in enumerate(errs):
            write_run(root, f"c/r/{method}/seed{seed}", [err + 5, err], method=method, seed=seed)
    return root


def test_claims_held_not_held_inconclusive(grid):
    rep = build(grid)
    c1 = claim(rep, 1)
    assert c1["verdict"] == "HOLDS"
    (cmp,) = c1["comparisons"]
    assert cmp["seeds"] == [0, 1, 2] and cmp["diff"]["values"] == pytest.approx([1.0, 1.5, 0.5])
    assert cmp["diff"]["mean"] == pytest.approx(1.0) and cmp["diff"]["std"] == pytest.approx(0.5)
    by_base = {c["base"]: c for c in claim(rep, 2)["comparisons"]}
    assert by_base["lsr"]["verdict"] == Verdict.holds
    assert by_base["pskd"]["verdict"] == Verdict.fails
    assert by_base["pskd"]["diff"]["values"] == pytest.approx([1.0 - 2, 1.0 - 2, 1.0 - 2])
    assert by_base["cskd"]["verdict"] == Verdict.inconclusive  # +0.5, -0.5, +0.5
    assert by_base["tfkd_self"]["verdict"] == Verdict.inconclusive and by_base["tfkd_self"]["seeds"] == [0]
    assert claim(rep, 2)["verdict"] == "HOLDS IN 1 OF 4"
    assert "does not hold: pskd" in claim(rep, 2)["summary"]
    md = report.render_markdown(rep)
    assert "### Claim 2: DLB beats" in md and "HOLDS IN 1 OF 4" in md and "| +1.00 +1.50 +0.50 |" in md
    json.dumps(rep)  # the JSON report holds the claims too


def test_claims_pair_by_seed_not_by_mean(tmp_path):
    """Means favour DLB, but only because of one seed: 2 of 3 seed pairs say otherwise -> inconclusive."""
    root = tmp_path / "runs"
    for seed, (ce, dlb) in enumerate([(20.0, 10.0), (10.0, 10.5), (10.0, 10.5)]):
        write_run(root, f"c/r/ce/seed{seed}", [ce], method="ce", seed=seed)
        write_run(root, f"c/r/dlb/seed{seed}", [dlb], method="dlb", seed=seed)
    c1 = claim(build(root), 1)
    assert c1["comparisons"][0]["diff"]["mean"] > 0 and c1["verdict"] == "INCONCLUSIVE"


def test_noise_claim_and_its_growth(tmp_path):
    root = tmp_path / "runs"
    advantage = {0.0: [0.2, 0.3], 0.2: [0.5, 0.4], 0.6: [1.5, 2.0]}  # DLB's advantage per seed, growing
    for rate, adv in advantage.items():
        noise = "none" if rate == 0 else "symmetric"
        for seed, a in enumerate(adv):
            tag = "" if rate == 0 else f"+symmetric{rate:g}"
            write_run(root, f"c/r/ce{tag}/seed{seed}", [20.0], method="ce", seed=seed, noise=noise, rate=rate)
            write_run(root, f"c/r/dlb{tag}/seed{seed}", [20.0 - a], method="dlb", seed=seed, noise=noise, rate=rate)
    c4 = claim(build(root), 4)
    assert [c["noise_rate"] for c in c4["comparisons"]] == [0.0, 0.2, 0.6]
    assert all(c["verdict"] == Verdict.holds for c in c4["comparisons"])
    (g,) = c4["growth"]
    assert g["rates"] == [0.0, 0.2, 0.6] and g["growth"]["values"] == pytest.approx([1.3, 1.7])
    assert g["verdict"] == Verdict.holds and c4["verdict"] == "HOLDS"
    # the same advantages shrinking with noise: the advantage holds at every rate, its growth does not
    for d in root.rglob("summary.json"):
        s = json.loads(d.read_text())
        if s["method"] == "dlb" and "symmetric0.6" in str(d):
            s["best_test_err"] = 20.0 - 0.1
            d.write_text(json.dumps(s))
    c4 = claim(build(root), 4)
    assert c4["growth"][0]["verdict"] == Verdict.fails and c4["verdict"] == "HOLDS IN 3 OF 4"


def test_cost_claim(tmp_path):
    root = tmp_path / "runs"
    for seed in range(3):
        write_run(root, f"c/r/ce/seed{seed}", [10.0], method="ce", seed=seed)
        write_run(root, f"c/r/dlb/seed{seed}", [9.0], method="dlb", seed=seed)
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
    assert "| ≤ 1.5 | DOES NOT HOLD |" in report.render_markdown(build(root))
    for d in root.rglob("summary.json"):  # the same on a GPU: max allocated memory, judged
        s = json.loads(d.read_text())
        d.write_text(json.dumps({**s, "device": "cuda"}))
    memory = next(c for c in claim(build(root), 5)["comparisons"] if c["cost"] == "peak_memory_bytes")
    assert memory["ratio"]["values"] == pytest.approx([1.2] * 3) and memory["verdict"] == Verdict.holds


def test_claims_skip_other_variants(tmp_path):
    """A DLB run with other hyper-parameters (a sensitivity sweep's) is not the DLB the claims compare."""
    root = tmp_path / "runs"
    for seed in range(2):
        write_run(root, f"c/r/ce/seed{seed}", [10.0], method="ce", seed=seed)
        write_run(root, f"c/r/dlb/seed{seed}", [9.0], method="dlb", seed=seed)
    write_run(root, "c/r/dlb/T6/seed0", [12.0], method="dlb", seed=0, T=6.0)
    (cmp,) = claim(build(root), 1)["comparisons"]
    assert cmp["diff"]["values"] == pytest.approx([1.0, 1.0]) and cmp["verdict"] == Verdict.holds


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
    assert {(c["backbone"], c["noise_rate"]) for c in c4["comparisons"]} == {("cifar_resnet8", 0.0),
                                                                              ("cifar_resnet8", 0.4)}
    assert len(claim(build(root), 1)["comparisons"]) == 2
