"""Training throughput (each method's rows, paired ratios, the performance targets), the speed switches alone, and
several runs sharing one device."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from dlb.device.speed import native_bf16

from .measure import base_config, method_spec, run_concurrent, run_interleaved, run_pair
from .tables import backbone_timm_name, device_label, fmt, machine, mb, partial_tables, publish, update_throughput


def main_table(rows: list[dict], pairs: dict, m: dict, a) -> str:
    """Absolute figures from each method's own processes; the ratios between configurations from paired runs."""
    cuda = m.get("gpu") and a.device != "cpu"
    mem_head = "peak CUDA alloc MB" if cuda else "peak RSS MB (process)"
    lines = ["| method | step img/s | loop img/s | pipeline efficiency | epoch time vs CE (paired) | PIL loop img/s "
             f"(paired) | device loop / PIL loop (paired) | eval img/s | {mem_head} | saved for backward MB | "
             "peak held for backward MB | method state MB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | error: {r['error'][:80]} |" + " |" * 11)
            continue
        vs_ce = pairs.get(f"ce/{r['method']}", {}).get("loop_ratio")
        pil = pairs.get(f"{r['method']}/pil", {})
        mem = r.get("peak_cuda_allocated_bytes") if cuda else r.get("peak_rss_bytes")
        lines.append(f"| {r['method']} | {fmt(r['step_img_per_s'])} | {fmt(r['loop_img_per_s'])} | "
                     f"{fmt(r['pipeline_efficiency'], 3)} | {fmt(1 / vs_ce if vs_ce else None, 2)} | "
                     f"{fmt(pil.get('loop_img_per_s', [None, None])[1])} | "
                     f"{fmt(1 / pil['loop_ratio'] if 'loop_ratio' in pil else None, 2)} | "
                     f"{fmt(r.get('eval_img_per_s'))} | {mb(mem)} | {mb(r.get('saved_activation_bytes'))} | "
                     f"{mb(r.get('peak_saved_activation_bytes'))} | {mb(r.get('method_state_bytes'))} |")
    return "\n".join(lines) + "\n"


def check(target: str, measured: float, bound: float, at_most: bool = False, unit: str | None = None) -> dict:
    met = measured <= bound if at_most else measured >= bound
    return {"target": target, "measured": measured, "bound": bound, "met": met} | ({"unit": unit} if unit else {})


def targets(rows: list[dict], pairs: dict, a) -> tuple[str, list[dict]]:
    """The performance targets (docs/performance.md) this run can judge, each as the measured figure against its
    bound (never hard-coded): pipeline efficiency >= 0.9 per method; each DLB entry's epoch time <= 2.1 x CE
    (paired; from the separate rows with --no-pairs); its memory <= 1.1 x CE's + one batch (B float32 views at the
    dataset's size), memory being the peak bytes held for backward plus the bytes the method keeps between steps.
    That tensor measure is the training memory on any device (the CUDA peak allocation also holds the
    device-resident dataset, and misses what CUDA graphs use inside their private pools); it needs an eager model,
    so compiled runs leave the memory target to an eager run."""
    ok_rows = {r["method"]: r for r in rows if "error" not in r}
    checks = [check(f"{name}: pipeline efficiency >= 0.9", r["pipeline_efficiency"], 0.9)
              for name, r in ok_rows.items()]
    ce = ok_rows.get("ce")
    batch_bytes = a.batch_size * 3 * 32 * 32 * 4  # one float32 view of the benchmark's 32x32 synthetic batch

    def memory(r):
        held = r.get("peak_saved_activation_bytes")
        return None if held is None else held + r.get("method_state_bytes", 0)

    for name, r in ok_rows.items():
        if method_spec(name)[0] != "dlb" or ce is None:
            continue
        ratio, how = pairs.get(f"ce/{name}", {}).get("loop_ratio"), ""
        if not ratio and a.no_pairs:
            ratio, how = r["loop_img_per_s"] / ce["loop_img_per_s"], " (separate runs, not paired)"
        if ratio:
            checks.append(check(f"{name}: epoch time <= 2.1 x CE{how}", 1 / ratio, 2.1, at_most=True))
        pil = pairs.get(f"{name}/pil", {}).get("loop_ratio")
        if pil:
            checks.append(check(f"{name}: device loop >= 3 x the PIL path (GPU target)", 1 / pil, 3.0))
        if ce.get("eval_img_per_s"):  # evaluation is the same forward for every method: measured on the first
            full_run_min = 240 * (50000 / r["loop_img_per_s"] + 10000 / ce["eval_img_per_s"]) / 60
            checks.append(check(f"{name}: 240 CIFAR epochs (50k train + 10k eval each) <= 10 min, extrapolated from "
                                f"{a.steps} measured steps (GPU target)", full_run_min, 10.0, at_most=True, unit="min"))
        mine, base = memory(r), memory(ce)
        if mine is not None and base is not None:
            checks.append(check(f"{name}: memory (peak held for backward + method state) <= 1.1 x CE + one batch",
                                mine, 1.1 * base + batch_bytes, at_most=True, unit="bytes"))
    lines = ["| target | measured | bound | met |", "|---|---|---|---|"]
    for c in checks:
        num = {"bytes": lambda x: f"{x / 2**20:,.1f} MB", "min": lambda x: f"{x:,.1f} min"}.get(
            c.get("unit"), lambda x: f"{x:.3f}")
        lines.append(f"| {c['target']} | {num(c['measured'])} | {num(c['bound'])} | {'yes' if c['met'] else 'NO'} |")
    if a.compile != "none":
        lines.append("\nMemory target: not judged here (a compiled model hides its saved tensors); see an eager run.")
    return "\n### Targets (measured in this run)\n\n" + "\n".join(lines) + "\n", checks


def run_throughput(a, command: str) -> None:
    """Each method's rows (interleaved runs), then the paired ratios: CE vs each method, device loader vs PIL."""
    m = machine(a.device, a.threads)
    methods = a.methods.split(",")
    base = base_config(a)
    configs = [{**base, "method": method, "eval": method == methods[0]}  # evaluation is the method's: measured once
               for method in methods]
    rows, pairs = [], {}

    def render(final: bool) -> None:
        target_md, checks = targets(rows, pairs, a)
        publish(a, m, command, f"Training throughput: {a.backbone}, batch {a.batch_size}",
                "- paired: both configurations in one process, their timed blocks alternating (a b, b a, ...); the "
                "figure is the median of the per-repeat ratios, robust to a machine whose load drifts\n\n"
                + main_table(rows, pairs, m, a) + target_md, {"rows": rows, "pairs": pairs, "targets": checks}, final)

    def got_rows(so_far):
        rows[:] = so_far
        render(False)

    with partial_tables(render):  # a time limit's SIGTERM: keep what was measured
        got_rows(run_interleaved(configs, a.repeats, on_result=got_rows))
        # Ratios from paired runs: both configurations in one process, timed blocks alternating seconds apart.
        for method in methods[1:] if methods[0] == "ce" and not a.no_pairs else []:
            pairs[f"ce/{method}"] = run_pair({**base, "method": "ce"}, {**base, "method": method}, f"ce vs {method}")
            render(False)
        # PIL pairs for plain ce/dlb entries only (an entry with settings, dlb:backward=split, loads data the same way)
        for method in [] if a.no_pil else [x for x in methods if x in a.pil_methods.split(",")]:
            c = {**base, "method": method}
            pairs[f"{method}/pil"] = run_pair(c, {**c, "loader": "torch"}, f"{method}: device loader vs PIL")
            render(False)
    m["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    render(True)
    if a.throughput_file and any("error" not in r for r in rows):
        update_throughput(Path(a.throughput_file), device_label(m, a.device), rows, backbone_timm_name(a.backbone),
                          command, m)


SPLIT_VARIANT = "DLB split backward (method.backward=split; DLB only)"


def speed_variants(cuda: bool) -> list[tuple[str, dict]]:
    plain = {"fused": "false", "compile": "none", "precision": "fp32", "channels_last": False, "sync_per_step": False}
    v = [("baseline: plain SGD loop, eager, fp32", plain),
         ("fused SGD (optim.fused=auto)", {**plain, "fused": "auto"}),
         ("torch.compile default", {**plain, "compile": "default"}),
         ("host sync per step (loss.item(); the trainer has none)", {**plain, "sync_per_step": True}),
         ("channels_last", {**plain, "channels_last": True}),
         (SPLIT_VARIANT, {**plain, "method": "dlb:backward=split"})]
    if not cuda:
        everything = {**plain, "fused": "auto", "channels_last": True, "compile": "default"}
        bf16 = [("bf16 autocast (trainer.precision=bf16: opt-in, changes the numerics)",
                 {**plain, "precision": "bf16"}),
                ("all (CPU) + bf16 autocast", {**everything, "precision": "bf16"})]
        return v + [("all (CPU): fused + channels_last + compile default", everything)] + (
            bf16 if native_bf16(torch.device("cpu")) else [])
    # CUDA: its own switches first (a time-limited run keeps the rows that finished)
    cuda_only = [("bf16 autocast", {**plain, "precision": "bf16"}),
                 ("torch.compile reduce-overhead (CUDA graphs)", {**plain, "compile": "reduce-overhead"}),
                 ("all: fused + bf16 + channels_last + reduce-overhead",
                  {"fused": "auto", "compile": "reduce-overhead", "precision": "bf16", "channels_last": True})]
    return v[:1] + cuda_only + v[1:]


def run_speed(a, command: str) -> None:
    m = machine(a.device, a.threads)
    cuda = bool(m.get("gpu")) and a.device != "cpu"
    (_, plain), *variants = speed_variants(cuda)
    lines = ["| method | switch | step img/s before → after | step ratio | loop img/s before → after | "
             "loop ratio |", "|---|---|---|---|---|---|"]
    results = []

    def render(final: bool) -> None:
        publish(a, m, command, f"Speed switches: {a.backbone}, batch {a.batch_size}",
                "- each switch alone against the baseline (plain SGD loop, eager, fp32, contiguous), both in one "
                "process, their timed blocks alternating (a b, b a, ...); ratio = median of the per-repeat "
                "after/before ratios (> 1: faster); compile time is in the warm-up, not in the figures\n\n"
                + "\n".join(lines) + "\n", {"rows": results}, final)

    with partial_tables(render):
        for method in a.methods.split(","):
            base = {**base_config(a), "method": method, **plain}
            for name, change in variants:
                wanted = not a.variants or any(x in name for x in a.variants.split(","))
                if not wanted or (name == SPLIT_VARIANT and method != "dlb"):
                    continue
                r = run_pair(base, {**base, **change}, f"{method}: {name}")
                results.append({"method": method, "variant": name, **r})
                if "error" in r:
                    lines.append(f"| {method} | {name} | error: {r['error'][:80]} | | | |")
                else:
                    st, lo = r["step_img_per_s"], r["loop_img_per_s"]
                    lines.append(f"| {method} | {name} | {fmt(st[0])} → {fmt(st[1])} | {fmt(r['step_ratio'], 3)} | "
                                 f"{fmt(lo[0])} → {fmt(lo[1])} | {fmt(r['loop_ratio'], 3)} |")
                render(False)
    m["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    render(True)


def run_jobs(a, command: str) -> None:
    """N concurrent runs of one method on the device, for each N in --jobs. Total img/s = all jobs' timed images over
    the wall-clock span from the first job's loop start to the last one's end (each job's own img/s is also shown;
    their sum would overstate the total when the loops do not fully overlap)."""
    m = machine(a.device, a.threads)
    method = a.methods.split(",")[0]
    lines = ["| jobs on the device | loop img/s per job (each) | total img/s | total vs 1 job |", "|---|---|---|---|"]
    results, one = [], None

    def render(final: bool) -> None:
        publish(a, m, command, f"Runs sharing one device: {a.backbone} {method}, batch {a.batch_size}",
                "- all jobs warm up first, then time their loops together (file barrier)\n\n" + "\n".join(lines)
                + "\n", {"rows": results}, final)

    with partial_tables(render):
        for n in [int(x) for x in a.jobs.split(",")]:
            got = run_concurrent(a, method, n)
            ok = [g for g in got if "error" not in g]
            rates = [g["loop_img_per_s"] for g in ok]
            span = max(g["loop_wall_s"][1] for g in ok) - min(g["loop_wall_s"][0] for g in ok) if ok else None
            total = sum(g["loop_images"] for g in ok) / span if ok else None
            one = one or total
            failed = len(got) - len(ok)
            results.append({"jobs": n, "failed": failed, "loop_img_per_s": rates, "total_img_per_s": total})
            lines.append(f"| {n}{f' ({failed} failed)' if failed else ''} | {', '.join(fmt(x) for x in rates)} | "
                         f"{fmt(total)} | {fmt(total / one if total and one else None, 2)} |")
            render(False)
    render(True)
