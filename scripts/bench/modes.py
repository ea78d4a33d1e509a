"""The benchmark's modes on the in-memory data: training throughput (each method's rows, paired ratios, the
performance targets), the speed switches alone, several runs sharing one device, and the measurements behind the
trainer's auto settings: eval batch size, compile cost, keep heap."""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from dlb.config import compose
from dlb.device.speed import CPU_COMPILE_MIN_STEPS, native_bf16
from dlb.models import build_model

from .measure import base_config, method_spec, run_child, run_concurrent, run_interleaved, run_pair, sync
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


def run_eval_batch(a, command: str) -> None:
    """Forward-only img/s of each backbone at each eval batch size (no grad, eval mode, channels_last as the speed
    defaults), in this process, the sizes interleaved over --repeats rounds, the best round each (the least disturbed
    by other load)."""
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    m = machine(a.device, a.threads)
    sizes = [int(x) for x in a.eval_batch_sizes.split(",")]
    n = max(sizes) * 2
    rows = []
    for backbone in a.backbone.split(","):
        model = build_model(compose([f"backbone={backbone}", "dataset=cifar100"]), 100).to(device)
        model = model.to(memory_format=torch.channels_last).eval()
        x = torch.randn(n, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
        best = {bs: float("inf") for bs in sizes}
        with torch.no_grad():
            model(x[:sizes[0]])  # warm-up
            for _ in range(a.repeats):
                for bs in sizes:
                    sync(device)
                    t0 = time.perf_counter()
                    for i in range(0, n, bs):
                        model(x[i:i + bs])
                    sync(device)
                    best[bs] = min(best[bs], time.perf_counter() - t0)
        rows.append({"backbone": backbone, "img_per_s": {bs: n / t for bs, t in best.items()}})
    top = [max(r["img_per_s"].values()) for r in rows]
    lines = ["| backbone | " + " | ".join(f"batch {bs}" for bs in sizes) + " |", "|---|" + "---|" * len(sizes)]
    lines += [f"| {r['backbone']} | " + " | ".join(f"{r['img_per_s'][bs]:,.0f} ({r['img_per_s'][bs] / t:.2f})"
                                                     for bs in sizes) + " |" for r, t in zip(rows, top)]
    body = (f"- forward-only img/s over {n} images per round, eval mode, no grad, channels_last, best of {a.repeats} "
            "interleaved rounds; in brackets: the fraction of the backbone's fastest size\n"
            "- trainer.eval_batch_size=auto uses dlb.device.speed.EVAL_BATCH per device kind\n\n" + "\n".join(lines)
            + "\n")
    publish(a, m, command, f"Evaluation speed by eval batch size, {a.device}", body, {"rows": rows}, True,
            settings=f"torch threads {m['torch_threads']}")


def run_compile_cost(a, command: str) -> None:
    m = machine(a.device, a.threads)
    base = {**base_config(a), "channels_last": True, "fused": "true", "compile_cost": True}
    rows = [run_child({**base, "method": method}) for method in a.methods.split(",")]
    lines = ["| method | compile s | eager s/step | compiled s/step | step ratio | repaid after steps |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} |||||")
            continue
        lines.append(f"| {r['method']} | {r['compile_s']:.1f} | {r['eager_s_per_step']:.3f} | "
                     f"{r['compiled_s_per_step']:.3f} | {r['eager_s_per_step'] / r['compiled_s_per_step']:.2f} | "
                     f"{fmt(r['repaid_after_steps'])} |")
    body = (f"- Trainer.train_epoch on {a.train_size} images ({a.train_size // a.batch_size} steps per epoch), "
            "channels_last and fused SGD, eager vs compile default; compile s = (epoch 0 - epoch 1) compiled minus the "
            "same difference eager (a cold compile: an empty inductor cache; later runs reuse cached kernels and "
            "compile faster); s/step from epoch 1; one run per method (a fresh process)\n"
            f"- trainer.compile=auto compiles on CPU from {CPU_COMPILE_MIN_STEPS} optimizer steps per run\n\n"
            + "\n".join(lines) + "\n")
    publish(a, m, command, f"Compile cost on CPU: {a.backbone}, batch {a.batch_size}", body, {"rows": rows}, True,
            settings=f"{a.backbone}, batch {a.batch_size}, synthetic CIFAR-shaped data in memory, torch threads "
            f"{a.threads or 'default'}")
def run_keep_heap(a, command: str) -> None:
    """glibc's heap kept (trainer.keep_heap=true) or handed back to the OS (false): the setting is process-wide, so
    every run is a fresh process, on and off interleaved; per run the step and loop img/s and the minor page faults
    per loop step."""
    m = machine(a.device, a.threads)
    configs = [{**base_config(a), "method": method, "keep_heap": heap}
               for method in a.methods.split(",") for heap in (True, False)]
    name = lambda c: f"{c['method']} trainer.keep_heap={str(c['keep_heap']).lower()}"  # noqa: E731

    def render(rows: list[dict], final: bool) -> None:
        lines = ["| method | trainer.keep_heap | step img/s | loop img/s | minor page faults per step, each run | "
                 "loop ratio on / off |", "|---|---|---|---|---|---|"]
        loop = {(r["method"], r.get("keep_heap")): r.get("loop_img_per_s") for r in rows}
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['method']} | {r.get('keep_heap')} | failed: {r['error']} ||||")
                continue
            on, off = loop.get((r["method"], True)), loop.get((r["method"], False))
            faults = ", ".join(fmt(f) for f in r["minor_faults_per_step_runs"])
            lines.append(f"| {r['method']} | {str(r['keep_heap']).lower()} | {fmt(r['step_img_per_s'], 1)} | "
                         f"{fmt(r['loop_img_per_s'], 1)} | {faults} | "
                         f"{fmt(on / off, 3) if r['keep_heap'] and on and off else ''} |")
        body = ("- each run a fresh process (mallopt is process-wide), on and off interleaved; img/s medians over the "
                "runs; page faults counted with getrusage over the timed loop\n\n" + "\n".join(lines) + "\n")
        publish(a, m, command, f"Kept heap on CPU: {a.backbone}, batch {a.batch_size}", body, {"rows": rows}, final)

    render(run_interleaved(configs, a.repeats, label=name, on_result=lambda so_far: render(so_far, False)), True)
