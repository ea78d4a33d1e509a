"""The training-speed benchmark: measuring (in child processes), tables, results files.

scripts/benchmark.py and scripts/method_costs.py are its command lines; docs/performance.md says what each figure
means. Each measurement runs in a fresh child process, `python -m dlb.bench <configuration as JSON>`, which prints
one result line (so a method's peak memory is its own).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dlb import REPO  # noqa: E402
RESULT_TAG = "BENCH_RESULT "
THROUGHPUT_FILE = REPO / "results" / "bench" / "throughput.json"
PIL_METHODS = ("ce", "dlb")
STOPPED: list[str] = []  # the signal that stopped this run (stop_on_sigterm), named in the partial tables


# --- the measurement (runs in a child process) ---------------------------------------------------------------------


def synthetic_data(n_train: int, n_test: int, classes: int = 100):
    """CIFAR-shaped uint8 images and labels, in memory (the speed of a step does not depend on pixel values)."""
    import torch

    from dlb.data.datasets import CIFAR100_MEAN, CIFAR100_STD, ArrayDataset

    g = torch.Generator().manual_seed(0)

    def ds(n):
        return ArrayDataset(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                            torch.randint(0, classes, (n,), generator=g), classes, CIFAR100_MEAN, CIFAR100_STD,
                            "cifar100")

    return ds(n_train), ds(n_test)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def method_state_bytes(method) -> int:
    """Bytes of the tensors a method keeps between steps: its parameters/buffers (a teacher, PS-KD's memory) and the
    tensors in its attributes (DLB's last batch), each storage counted once."""
    import torch

    seen: dict[int, int] = {}

    def add(x):
        if isinstance(x, torch.Tensor):
            seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        elif isinstance(x, dict):
            for v in x.values():
                add(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                add(v)

    for t in list(method.parameters()) + list(method.buffers()):
        add(t)
    for k, v in vars(method).items():
        if not k.startswith("_"):
            add(v)
    return sum(seen.values())


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def method_spec(spec: str) -> tuple[str, list[str]]:
    """'dlb:backward=split:alpha=0.5' -> ('dlb', ['method.backward=split', 'method.alpha=0.5']): a --methods entry
    is a method name, optionally with its own settings (the entry is also the row's label)."""
    name, *settings = spec.split(":")
    return name, [f"method.{kv}" for kv in settings]


def make_trainer(c: dict, out_dir: str, data, loader: str = "device"):
    import torch
    from omegaconf import OmegaConf

    from dlb.config import compose, validate
    from dlb.models import build_model
    from dlb.trainer import Trainer

    method, method_settings = method_spec(c["method"])
    overrides = ["dataset=cifar100", "dataset.root=unused", f"dataset.loader={loader}",
                 f"dataset.num_workers={c['pil_workers']}", f"backbone={c['backbone']}", f"method={method}",
                 f"trainer.batch_size={c['batch_size']}", f"trainer.eval_batch_size={c['eval_batch_size']}",
                 f"trainer.device={c['device']}", f"trainer.precision={c['precision']}",
                 f"trainer.channels_last={str(c['channels_last']).lower()}", f"trainer.compile={c['compile']}",
                 f"optim.fused={c['fused']}", f"trainer.keep_heap={str(c.get('keep_heap', 'auto')).lower()}",
                 "trainer.progress=false", "trainer.save_best=false", *method_settings]
    if method == "tfkd_self":  # a random-init teacher of the same architecture: same cost as a trained one
        path = Path(out_dir) / "teacher.pt"
        torch.save({"model": build_model(compose(overrides[:6]), 100).state_dict()}, path)
        overrides.append(f"method.teacher={path}")
    cfg = compose(overrides)
    validate(cfg)
    OmegaConf.set_struct(cfg, False)
    return Trainer(cfg, out_dir, data=data), cfg


def make_step(trainer, c: dict):
    """(step, timed_steps): Trainer.train_step on one fixed batch made once by the trainer's loader (what
    Trainer.train_epoch does per batch, minus the loader and the metrics), and c["steps"] of them timed -> img/s."""
    batch = next(iter(trainer.train_loader))
    trainer.model.train()
    trainer.method.train()
    trainer.method.on_epoch_start(1, 240)  # PS-KD: past epoch 0, so its memory is read

    def step() -> int:
        logits, loss, _ = trainer.train_step(batch)
        if c["sync_per_step"]:
            loss.item()  # what a per-step host sync (printing or logging a float each step) costs
        return logits.shape[0]

    def timed_steps() -> float:
        t0 = time.perf_counter()
        rows = sum(step() for _ in range(c["steps"]))
        _sync(trainer.device)
        return rows / (time.perf_counter() - t0)

    return step, timed_steps


def measure_pair(ca: dict, cb: dict) -> dict:
    """Configuration a and b in one process, their timed blocks alternating (a b, b a, a b, ...), so each repeat's b/a
    ratio compares two measurements seconds apart: the before/after of one switch, robust to a drifting load."""
    import torch
    from omegaconf import OmegaConf

    if ca.get("threads"):
        torch.set_num_threads(ca["threads"])
    data = synthetic_data(ca["train_size"], ca["test_size"])
    res: dict = {"a": ca, "b": cb, "step": [[], []], "loop": [[], []]}
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for i, c in enumerate((ca, cb)):
            torch.manual_seed(0)  # same initial weights
            trainer, cfg = make_trainer(c, f"{tmp}/{i}", data, loader=c.get("loader", "device"))
            step, timed = make_step(trainer, c)
            for _ in range(c["warmup"]):
                step()
            OmegaConf.update(cfg, "trainer.limit_train_batches", c["warmup"])
            trainer.train_epoch(0)
            OmegaConf.update(cfg, "trainer.limit_train_batches", c["steps"])
            runs.append((trainer, timed))
        for r in range(ca["repeats"]):
            order = (0, 1) if r % 2 == 0 else (1, 0)
            for i in order:
                if (ca, cb)[i].get("loader", "device") == "device":  # the PIL path has no model-only figure of its own
                    res["step"][i].append(runs[i][1]())
            for i in order:
                res["loop"][i].append(runs[i][0].train_epoch(1 + r)[0]["train_img_per_s"])
    for key in ("step", "loop"):
        a, b = res[key]
        if a and b:
            res[f"{key}_img_per_s"] = [statistics.median(a), statistics.median(b)]
            res[f"{key}_ratio_runs"] = [y / x for x, y in zip(a, b)]
            res[f"{key}_ratio"] = statistics.median(res[f"{key}_ratio_runs"])
    res["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return res


def measure(c: dict) -> dict:
    import torch
    from omegaconf import OmegaConf

    from dlb.metrics import evaluate
    from dlb.device.memory import saved_for_backward_bytes

    if c.get("threads"):
        torch.set_num_threads(c["threads"])
    torch.manual_seed(0)
    data = synthetic_data(c["train_size"], c["test_size"])
    res: dict = {"method": c["method"], "keep_heap": c.get("keep_heap", "auto")}
    with tempfile.TemporaryDirectory() as tmp:
        trainer, cfg = make_trainer(c, tmp, data)
        dev = trainer.device
        res["device"] = str(dev)
        rss_before = _rss_bytes()
        step, timed_steps = make_step(trainer, c)
        # (a) the model-only step
        for _ in range(c["warmup"]):
            step()
        _sync(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)

        # Step, loop, step again (A B A): the loop is compared with the steps around it, so a drift in the machine's
        # load during the run cancels to first order.
        res["step_img_per_s_runs"] = [timed_steps() for _ in range(c["repeats"])]
        if c["compile"] == "none":
            saved = saved_for_backward_bytes(step, exclude=trainer.model.parameters())
            res["saved_activation_bytes"], res["peak_saved_activation_bytes"] = saved["total"], saved["peak"]
        res["method_state_bytes"] = method_state_bytes(trainer.method)

        # (b) the full loop: Trainer.train_epoch, each repeat a new epoch of `steps` steps
        if c.get("barrier"):
            _wait_barrier(*c["barrier"])
        OmegaConf.update(cfg, "trainer.limit_train_batches", c["warmup"])
        trainer.train_epoch(0)
        OmegaConf.update(cfg, "trainer.limit_train_batches", c["steps"])
        wall_start, faults = time.time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        epochs = [trainer.train_epoch(1 + r)[0] for r in range(c["repeats"])]  # (stats, loss terms)
        # minor page faults: memory the process gets (back) from the OS as fresh zeroed pages (trainer.keep_heap)
        res["minor_faults_per_step"] = ((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
                                        / (c["repeats"] * c["steps"]))
        # Wall-clock span and images of the timed loops: --jobs sums the images of all jobs over their joint span.
        res["loop_wall_s"], res["loop_images"] = [wall_start, time.time()], sum(e["train_images"] for e in epochs)
        loops = [e["train_img_per_s"] for e in epochs]
        res["loop_img_per_s_runs"], res["loop_img_per_s"] = loops, statistics.median(loops)
        res["step_img_per_s_runs"] += [timed_steps() for _ in range(c["repeats"])]
        res["step_img_per_s"] = statistics.median(res["step_img_per_s_runs"])
        res["pipeline_efficiency"] = res["loop_img_per_s"] / res["step_img_per_s"]
        # Peak memory of training alone: read before evaluation (batch 1000) and the PIL path (a numpy copy of the
        # images) can raise it.
        if dev.type == "cuda":
            res["peak_cuda_allocated_bytes"] = torch.cuda.max_memory_allocated(dev)
        res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        res["rss_growth_bytes"] = res["peak_rss_bytes"] - rss_before

        # (f) evaluation throughput
        if c["eval"]:
            evaluate(trainer.model, trainer.test_loader, 1, trainer.autocast)  # warm-up
            evals = []
            for _ in range(c["repeats"]):
                _sync(dev)
                t0 = time.perf_counter()
                n = evaluate(trainer.model, trainer.test_loader, c["eval_batches"], trainer.autocast)["test_n"]
                _sync(dev)
                evals.append(n / (time.perf_counter() - t0))
            res["eval_img_per_s_runs"], res["eval_img_per_s"] = evals, statistics.median(evals)

        res["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return res


def _wait_barrier(path: str, n: int, timeout_s: float = 600) -> None:
    """--jobs: every job finishes its set-up and warm-up before any starts timing, so the timed loops overlap. The
    parent marks a job that died as ready, so the others never wait for it; timeout_s bounds the rest."""
    d = Path(path)
    (d / f"ready-{os.getpid()}").touch()
    start = time.monotonic()
    while len(list(d.glob("ready-*"))) < n and time.monotonic() - start < timeout_s:
        time.sleep(0.05)


# --- the parent: configurations, subprocesses, tables ----------------------------------------------------------------


def machine(device: str, threads: int | None = None) -> dict:
    import torch

    from dlb.run.record import cpu_model, git_info

    info = {"host": platform.node(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": threads or torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}
    info.update(git_info())  # the code that was measured
    if device != "cpu" and torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return info


def device_label(m: dict, device: str) -> str:
    if device != "cpu" and m.get("gpu"):
        return m["gpu"]
    return f"cpu: {m['cpu']} ({m['torch_threads']} threads)"


def child_command(c: dict) -> list[str]:
    return [sys.executable, "-m", "dlb.bench", json.dumps(c)]


def child_env(c: dict) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    if c.get("threads"):  # before torch starts its thread pool
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(c["threads"])
    if c.get("compile_cost"):  # a cold compile, as a first run pays it: no kernels cached by earlier runs
        env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="dlb-inductor-")
    return env


def run_child(c: dict) -> dict:
    r = subprocess.run(child_command(c), cwd=REPO, env=child_env(c), capture_output=True, text=True)
    for line in r.stdout.splitlines()[::-1]:
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
    print(f"benchmark: {c['method']} failed: {' | '.join(tail)}", file=sys.stderr)
    return {"method": c["method"], "error": " | ".join(tail)[-500:]}


def combine(runs: list[dict]) -> dict:
    """One configuration's runs (one timed run each) -> medians; pipeline efficiency as the median of each run's own
    loop/step ratio (the two phases of one run are close in time); memory as the largest seen."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    out = dict(ok[0])
    for key in ("step", "loop", "pil_loop", "eval"):
        vals = [v for r in ok for v in r.get(f"{key}_img_per_s_runs", [])]
        if vals:
            out[f"{key}_img_per_s_runs"], out[f"{key}_img_per_s"] = vals, statistics.median(vals)
    out["pipeline_efficiency_runs"] = [r["pipeline_efficiency"] for r in ok]  # each run's loop / its own steps
    out["minor_faults_per_step_runs"] = [r.get("minor_faults_per_step") for r in ok]
    out["pipeline_efficiency"] = statistics.median(out["pipeline_efficiency_runs"])
    for key in ("peak_rss_bytes", "peak_cuda_allocated_bytes", "rss_growth_bytes", "saved_activation_bytes",
                "peak_saved_activation_bytes",
                "method_state_bytes"):
        vals = [r[key] for r in ok if r.get(key) is not None]
        if vals:
            out[key] = max(vals)
    out["load_avg_1m"] = [r.get("load_avg_1m") for r in ok]
    out["failed_runs"] = len(runs) - len(ok)
    return out


def run_interleaved(configs: list[dict], repeats: int, label=lambda c: c["method"], on_result=None) -> list[dict]:
    """Each configuration `repeats` times, one timed run per fresh subprocess, in round-robin order (A B C A B C ...):
    a shared machine's load drifts over minutes, and interleaving spreads that drift over every configuration alike,
    so the ratios between them stay fair. on_result(rows so far) is called after each run (partial tables)."""
    got: list[list[dict]] = [[] for _ in configs]
    for r in range(repeats):
        for i, c in enumerate(configs):
            print(f"benchmark: {label(c)} (run {r + 1}/{repeats}) ...", flush=True)
            got[i].append(run_child({**c, "repeats": 1}))
            if on_result:
                on_result([combine(runs) for runs in got if runs])
    return [combine(runs) for runs in got]


def base_config(a) -> dict:
    return {"backbone": a.backbone, "batch_size": a.batch_size, "device": a.device, "precision": a.precision,
            "channels_last": a.channels_last, "compile": a.compile, "fused": a.fused, "steps": a.steps,
            "warmup": a.warmup, "repeats": a.repeats, "train_size": a.train_size, "test_size": a.test_size,
            "eval_batch_size": 1000, "eval_batches": a.eval_batches, "pil_workers": a.pil_workers, "eval": False,
            "sync_per_step": False, "threads": a.threads}


def fmt(x, digits: int = 0) -> str:
    if x is None:
        return "–"
    return f"{x:,.{digits}f}" if isinstance(x, (int, float)) else str(x)


def mb(x) -> str:
    return "–" if x is None else f"{x / 2**20:,.1f}"


def header(m: dict, a, command: str, title: str, settings: str | None = None) -> str:
    """The table's first lines: command, machine and its load at start, code; `settings` replaces the line describing
    the in-memory step/loop measurement."""
    dev = device_label(m, a.device)
    busy = (" (other jobs were running: absolute CPU figures are pessimistic, ratios within one run are the "
            "comparable numbers)" if m["load_avg_1m_at_start"] >= 0.5 * (m["cpu_count"] or 1) else "")
    if settings is None:
        settings = (f"{a.backbone}, batch {a.batch_size}, synthetic CIFAR-shaped data ({a.train_size} train / "
                    f"{a.test_size} test images, 100 classes), {a.steps} timed steps after {a.warmup} warm-up, median "
                    f"of {a.repeats} interleaved runs (a fresh process each); precision {a.precision}, channels_last "
                    f"{a.channels_last}, compile {a.compile}, optim.fused {a.fused}; PIL path: {a.pil_workers} "
                    "DataLoader workers")
    return (f"## {title}\n\n"
            f"- command: `{command}`\n- machine: {m['host']}, {m['cpu']} ({m['cpu_count']} cores, torch threads "
            f"{m['torch_threads']}){', GPU ' + m['gpu'] if m.get('gpu') else ''}; load average "
            f"{m['load_avg_1m_at_start']} at start{busy}\n"
            f"- device: {dev}; torch {m['torch']}{', CUDA ' + m['cuda'] if m.get('cuda') else ''}; {m['date']}; "
            f"code {m.get('git_commit', 'unknown')[:10]}{' (uncommitted changes)' if m.get('git_dirty') else ''}\n"
            f"- settings: {settings}\n")


def run_pair(ca: dict, cb: dict, label: str) -> dict:
    print(f"benchmark: {label} (paired, one process) ...", flush=True)
    return run_child({"pair": [ca, cb], "method": label, "threads": ca.get("threads")})


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


def targets(rows: list[dict], pairs: dict, a) -> tuple[str, list[dict]]:
    """The performance targets (docs/performance.md) this run can judge, each as the measured figure against its
    bound (never hard-coded): pipeline efficiency >= 0.9 per method; each DLB entry's epoch time <= 2.1 x CE
    (paired; from the separate rows with --no-pairs); its memory <= 1.1 x CE's + one batch (B float32 views at the
    dataset's size), memory being the peak bytes held for backward plus the bytes the method keeps between steps.
    That tensor measure is the training memory on any device (the CUDA peak allocation also holds the
    device-resident dataset, and misses what CUDA graphs use inside their private pools); it needs an eager model,
    so compiled runs leave the memory target to an eager run."""
    ok_rows = {r["method"]: r for r in rows if "error" not in r}
    checks = [{"target": f"{name}: pipeline efficiency >= 0.9", "measured": r["pipeline_efficiency"],
               "bound": 0.9, "met": r["pipeline_efficiency"] >= 0.9} for name, r in ok_rows.items()]
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
            checks.append({"target": f"{name}: epoch time <= 2.1 x CE{how}", "measured": 1 / ratio, "bound": 2.1,
                           "met": 1 / ratio <= 2.1})
        pil = pairs.get(f"{name}/pil", {}).get("loop_ratio")
        if pil:
            checks.append({"target": f"{name}: device loop >= 3 x the PIL path (GPU target)", "measured": 1 / pil,
                           "bound": 3.0, "met": 1 / pil >= 3.0})
        if ce.get("eval_img_per_s"):  # evaluation is the same forward for every method: measured on the first
            full_run_s = 240 * (50000 / r["loop_img_per_s"] + 10000 / ce["eval_img_per_s"])
            checks.append({"target": f"{name}: 240 CIFAR epochs (50k train + 10k eval each) <= 10 min, extrapolated "
                           f"from {a.steps} measured steps (GPU target)", "measured": full_run_s / 60, "bound": 10.0,
                           "met": full_run_s <= 600, "unit": "min"})
        mine, base = memory(r), memory(ce)
        if mine is not None and base is not None:
            bound = 1.1 * base + batch_bytes
            checks.append({"target": f"{name}: memory (peak held for backward + method state) <= 1.1 x CE + one "
                           "batch", "measured": mine,
                           "bound": bound, "met": mine <= bound, "unit": "bytes"})
    lines = ["| target | measured | bound | met |", "|---|---|---|---|"]
    for c in checks:
        num = {"bytes": lambda x: f"{x / 2**20:,.1f} MB", "min": lambda x: f"{x:,.1f} min"}.get(
            c.get("unit"), lambda x: f"{x:.3f}")
        lines.append(f"| {c['target']} | {num(c['measured'])} | {num(c['bound'])} | {'yes' if c['met'] else 'NO'} |")
    if a.compile != "none":
        lines.append("\nMemory target: not judged here (a compiled model hides its saved tensors); see an eager run.")
    return "\n### Targets (measured in this run)\n\n" + "\n".join(lines) + "\n", checks


def write_outputs(out: Path | None, md: str, payload: dict, quiet: bool = False) -> None:
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    if not quiet:
        print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


def publish(a, m: dict, command: str, title: str, body: str, payload: dict, final: bool,
            settings: str | None = None) -> None:
    """Write a mode's table (and print it when final). The modes call this after every finished run, so a time
    limit's SIGTERM (stop_on_sigterm turns it into SystemExit) leaves the rows measured so far, marked INCOMPLETE."""
    if STOPPED:
        m["stopped"] = STOPPED[0]
    md = (header(m, a, command, title, settings) + ("" if final else "- INCOMPLETE: written while measuring or stopped early "
                                          f"({m.get('stopped', 'still running')}): rows may be missing\n") + body)
    if final:
        print("\n" + md)
    write_outputs(a.out, md, {"machine": m, "settings": vars(a) | {"out": str(a.out)}, "command": command, **payload,
                              "complete": final}, quiet=not final)


def update_throughput(path: Path, device: str, rows: list[dict], backbone_name: str, command: str, m: dict) -> None:
    """dlb.sweep's training-time estimate reads {"device": ..., "img_per_s": {"<timm backbone>/<method>": img/s}}."""
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if table.get("device") != device:
        if table:
            print(f"{path}: held figures of {table.get('device')!r}; replaced by this device's")
        table = {"device": device, "img_per_s": {}}
    for r in rows:
        if "error" not in r:
            table["img_per_s"][f"{backbone_name}/{r['method']}"] = round(r["loop_img_per_s"], 1)
    table.setdefault("measured", {})
    table["measured"][backbone_name] = {"date": m["date"], "command": command,
                                        "what": "Trainer.train_epoch img/s, synthetic in-memory CIFAR-shaped data"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    print(f"updated {path}")


def backbone_timm_name(backbone: str) -> str:
    from dlb.config import compose

    return compose([f"backbone={backbone}"]).backbone.name


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

    try:
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
    except SystemExit:  # SIGTERM (a time limit): keep what was measured
        render(False)
        raise
    m["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    render(True)
    if a.throughput_file and any("error" not in r for r in rows):
        update_throughput(Path(a.throughput_file), device_label(m, a.device), rows, backbone_timm_name(a.backbone),
                          command, m)


# --- speed switches, each alone against the plain baseline, in one run --------------------------------------------

SPLIT_VARIANT = "DLB split backward (method.backward=split; DLB only)"


def speed_variants(cuda: bool) -> list[tuple[str, dict]]:
    import torch

    from dlb.device.speed import native_bf16

    plain = {"fused": "false", "compile": "none", "precision": "fp32", "channels_last": False,
             "sync_per_step": False}
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
             "loop ratio |",
             "|---|---|---|---|---|---|"]
    results = []

    def render(final: bool) -> None:
        publish(a, m, command, f"Speed switches: {a.backbone}, batch {a.batch_size}",
                "- each switch alone against the baseline (plain SGD loop, eager, fp32, contiguous), both in one "
                "process, their timed blocks alternating (a b, b a, ...); ratio = median of the per-repeat "
                "after/before ratios (> 1: faster); compile time is in the warm-up, not in the figures\n\n"
                + "\n".join(lines) + "\n", {"rows": results}, final)

    try:
        for method in a.methods.split(","):
            base = {**base_config(a), "method": method, **plain}
            for name, change in variants:
                if a.variants and not any(x in name for x in a.variants.split(",")):
                    continue
                if name == SPLIT_VARIANT and method != "dlb":
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
    except SystemExit:
        render(False)
        raise
    m["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    render(True)


# --- several runs sharing one device (sweep throughput per GPU) ---------------------------------------------------

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

    try:
        for n in [int(x) for x in a.jobs.split(",")]:
            got = _run_concurrent(a, method, n)
            ok = [g for g in got if "error" not in g]
            rates = [g["loop_img_per_s"] for g in ok]
            total = None
            if ok:
                span = max(g["loop_wall_s"][1] for g in ok) - min(g["loop_wall_s"][0] for g in ok)
                total = sum(g["loop_images"] for g in ok) / span
            if one is None and total:
                one = total
            failed = len(got) - len(ok)
            results.append({"jobs": n, "failed": failed, "loop_img_per_s": rates, "total_img_per_s": total})
            lines.append(f"| {n}{f' ({failed} failed)' if failed else ''} | {', '.join(fmt(x) for x in rates)} | "
                         f"{fmt(total)} | {fmt(total / one if total and one else None, 2)} |")
            render(False)
    except SystemExit:
        render(False)
        raise
    render(True)


def _run_concurrent(a, method: str, n: int) -> list[dict]:
    """n child processes of one configuration, released together by a file barrier. Their output goes to files (a
    chatty child can't block on a full pipe while the others wait), and a child that dies is marked ready at once."""
    with tempfile.TemporaryDirectory() as tmp:
        barrier = Path(tmp) / "barrier"
        barrier.mkdir()
        c = {**base_config(a), "method": method, "barrier": [str(barrier), n]}
        print(f"benchmark --jobs: {n} concurrent {method} runs ...", flush=True)
        procs = []
        for k in range(n):
            out, err = open(Path(tmp) / f"out{k}", "w+"), open(Path(tmp) / f"err{k}", "w+")
            procs.append((subprocess.Popen(child_command(c), cwd=REPO, env=child_env(c), stdout=out, stderr=err,
                                           text=True), out, err))
        try:
            while any(p.poll() is None for p, _, _ in procs):
                for p, _, _ in procs:
                    if p.poll() is not None:
                        (barrier / f"ready-{p.pid}").touch()
                time.sleep(0.2)
        finally:
            for p, _, _ in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        got = []
        for p, out, err in procs:
            out.seek(0)
            err.seek(0)
            found = [json.loads(x[len(RESULT_TAG):]) for x in out.read().splitlines() if x.startswith(RESULT_TAG)]
            if found:
                got.append(found[0])
            else:
                tail = err.read().strip().splitlines()[-3:]
                print(f"benchmark --jobs: a job failed: {' | '.join(tail)}", file=sys.stderr)
                got.append({"method": method, "error": " | ".join(tail)[-500:]})
            out.close()
            err.close()
        return got


# --- the method-cost table (scripts/method_costs.py) ---------------------------------------------------------------

def costs() -> dict:
    """Row name -> the method's Cost (dlb/methods/base.py): every method in table order, each followed by the other
    settings it names in cost_variants ("dlb:backward=split")."""
    from dlb.methods import METHODS, ordered

    rows = {}
    for name in ordered(METHODS):
        rows[name] = METHODS[name].cost
        rows.update({f"{name}:{setting}": cost for setting, cost in METHODS[name].cost_variants.items()})
    return rows


def epoch_time_vs_ce(ce: dict, r: dict) -> float | None:
    """Median over rounds of CE's loop img/s / the method's in the same round (the runs are interleaved, one round
    after another, so a round's runs are minutes apart while the rounds may be hours apart)."""
    a, b = ce.get("loop_img_per_s_runs", []), r.get("loop_img_per_s_runs", [])
    if not a or len(a) != len(b):  # a failed run breaks the pairing: fall back to the medians
        return ce["loop_img_per_s"] / r["loop_img_per_s"] if "loop_img_per_s" in ce else None
    return statistics.median(x / y for x, y in zip(a, b))


def method_costs_table(rows: dict, m: dict, a, command: str) -> tuple[str, dict]:
    """(Markdown, symbols) of the method-cost table: each method's cost by formula (its Cost) beside the measured
    rows (method -> combined run, run_interleaved), for benchmark settings `a`."""
    from dlb.config import compose
    from dlb.models import build_model

    name = backbone_timm_name(a.backbone)
    K, N, Bsz, img = 100, a.train_size, a.batch_size, 3 * 32 * 32 * 4
    P = sum(q.numel() for q in build_model(compose([f"backbone={a.backbone}"]), K).parameters())
    table = costs()
    ce = rows.get("ce", {})
    A = ce.get("saved_activation_bytes")
    A_peak = ce.get("peak_saved_activation_bytes")
    cuda = bool(m.get("gpu")) and a.device != "cpu"
    mem_key, mem_name = ("peak_cuda_allocated_bytes", "peak CUDA alloc MB") if cuda else ("peak_rss_bytes",
                                                                                        "peak RSS MB (process)")
    lines = [f"| method | images through the net per step (× B) | needs a teacher | extra memory vs CE (formula) | "
             f"formula, MB | measured: saved for backward MB (vs CE) | measured: peak held for backward MB (vs CE) | "
             f"measured: kept between steps MB | "
             f"step img/s | loop img/s | epoch time vs CE | {mem_name} |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, r in rows.items():
        cost = table[method]
        passes, teacher, formula, f = cost.passes, cost.teacher, cost.memory, cost.memory_bytes
        if "error" in r:
            lines.append(f"| {method} | {passes} | {teacher} | {formula} | error: {r['error'][:100]} |" + " |" * 7)
            continue
        fb = f(A, P, N, K, Bsz, img) if A is not None else None
        saved = r.get("saved_activation_bytes")
        held = r.get("peak_saved_activation_bytes")
        delta = f" ({(saved - A) / 2**20:+,.1f})" if saved is not None and A is not None else ""
        held_delta = f" ({(held - A_peak) / 2**20:+,.1f})" if held is not None and A_peak is not None else ""
        vs_ce = epoch_time_vs_ce(ce, r)
        lines.append(f"| {method} | {passes} | {teacher} | {formula} | {mb(fb)} | {mb(saved)}{delta} | "
                     f"{mb(held)}{held_delta} | {mb(r.get('method_state_bytes'))} | {fmt(r['step_img_per_s'])} | "
                     f"{fmt(r['loop_img_per_s'])} | {fmt(vs_ce, 2)} | {mb(r.get(mem_key))} |")
    notes = (f"- symbols: B = {Bsz} (batch), K = {K} classes, N = {N} training images, img = 3·32·32·4 = {img} "
             "bytes "
             f"(one float32 view), P = {P:,} parameters of {name}, A = CE's bytes saved for backward in one step "
             f"(measured: {mb(A)} MB)\n"
             "- images through the net: calls with gradient unless marked; DLB's two forwards are separate calls "
             "(BatchNorm statistics per half), DDGSD's two views are one call\n"
             "- img/s: training images consumed per second (B per step), so extra forwards show up as lower img/s; "
             "epoch time vs CE = CE loop img/s / the method's in the same round of runs, median over the rounds "
             "(every method takes N/B steps per epoch)\n"
             "- memory: 'saved for backward' is measured with saved-tensor hooks in one eager step (distinct "
             "storages, parameters excluded), 'peak held' is the most of it alive at once (DLB's split backward "
             "frees the first forward's before the second runs); 'kept between steps' sums the method's tensors "
             "(teacher weights, PS-KD memory, DLB's last batch); peak RSS is the whole process (Python, torch, the "
             "150 MB in-memory dataset), so differences between rows are what the methods add\n")
    md = (header(m, a, command, f"Method costs: {a.backbone}, batch {Bsz}, {a.device}") + notes + "\n"
          + "\n".join(lines) + "\n")
    return md, {"A": A, "P": P, "N": N, "K": K, "B": Bsz, "img": img}


# --- eval batch size: what trainer.eval_batch_size=auto picks per device ------------------------------------------------
def run_eval_batch(a, command: str) -> None:
    """Forward-only img/s of each backbone at each eval batch size (no grad, eval mode, channels_last as the speed
    defaults), in this process, the sizes interleaved over --repeats rounds, the best round each (the least disturbed
    by other load)."""
    import torch

    from dlb.config import compose
    from dlb.models import build_model

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
                    _sync(device)
                    t0 = time.perf_counter()
                    for i in range(0, n, bs):
                        model(x[i:i + bs])
                    _sync(device)
                    best[bs] = min(best[bs], time.perf_counter() - t0)
        rows.append({"backbone": backbone, "img_per_s": {bs: n / t for bs, t in best.items()}})
    top = [max(r["img_per_s"].values()) for r in rows]
    lines = ["| backbone | " + " | ".join(f"batch {bs}" for bs in sizes) + " |", "|---|" + "---|" * len(sizes)]
    lines += [f"| {r['backbone']} | " + " | ".join(f"{r['img_per_s'][bs]:,.0f} ({r['img_per_s'][bs] / t:.2f})"
                                                     for bs in sizes) + " |" for r, t in zip(rows, top)]
    body = (f"- forward-only img/s over {n} images per round, eval mode, no grad, channels_last, best of {a.repeats} "
            "interleaved rounds; in brackets: the fraction of the backbone's fastest size\n"
            "- trainer.eval_batch_size=auto uses dlb.device.speed.EVAL_BATCH per device kind\n\n" + "\n".join(lines) + "\n")
    publish(a, m, command, f"Evaluation speed by eval batch size, {a.device}", body, {"rows": rows}, True,
            settings=f"torch threads {m['torch_threads']}")


# --- compile cost: when torch.compile repays itself (trainer.compile=auto's rule) -------------------------------------


def measure_compile_cost(c: dict) -> dict:
    """Child: Trainer.train_epoch on c["train_size"] images, epoch 0 (compiles) then epoch 1 (compiled), eager and
    compiled (compile default; both with c's channels_last and fused). compile_s = the compiled run's extra first-epoch
    time over the eager run's; saved_s_per_step = the steady per-step time eager minus compiled; their ratio = the
    optimizer steps after which compiling has paid for itself."""
    import torch

    if c.get("threads"):
        torch.set_num_threads(c["threads"])
    data = synthetic_data(c["train_size"], c["test_size"])
    res: dict = {"method": c["method"]}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("none", "default"):
            torch.manual_seed(0)
            trainer, _ = make_trainer({**c, "compile": mode}, f"{tmp}/{mode}", data)
            walls = []
            for epoch in range(2):
                t0 = time.perf_counter()
                trainer.train_epoch(epoch)
                walls.append(time.perf_counter() - t0)
            res[mode] = {"epoch_s": walls, "steps": trainer.step // 2}
    steps = res["none"]["steps"]
    res["compile_s"] = (res["default"]["epoch_s"][0] - res["default"]["epoch_s"][1]) - (
        res["none"]["epoch_s"][0] - res["none"]["epoch_s"][1])
    res["eager_s_per_step"] = res["none"]["epoch_s"][1] / steps
    res["compiled_s_per_step"] = res["default"]["epoch_s"][1] / steps
    saved = res["eager_s_per_step"] - res["compiled_s_per_step"]
    res["repaid_after_steps"] = res["compile_s"] / saved if saved > 0 else None
    res["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return res


def run_compile_cost(a, command: str) -> None:
    from dlb.device.speed import CPU_COMPILE_MIN_STEPS

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
            "same difference eager (a cold compile: an empty inductor cache; later runs reuse cached kernels and compile "
            "faster); s/step from epoch 1; one run per method (a fresh process)\n"
            f"- trainer.compile=auto compiles on CPU from {CPU_COMPILE_MIN_STEPS} optimizer steps per run\n\n"
            + "\n".join(lines) + "\n")
    publish(a, m, command, f"Compile cost on CPU: {a.backbone}, batch {a.batch_size}", body, {"rows": rows}, True,
            settings=f"{a.backbone}, batch {a.batch_size}, synthetic CIFAR-shaped data in memory, torch threads "
            f"{a.threads or 'default'}")


# --- trainer.keep_heap on and off, each run a fresh process ------------------------------------------------------


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


# --- this repo's training command vs the official code, whole processes ------------------------------------------


def write_synthetic_cifar100(root: Path, n_train: int, n_test: int) -> dict:
    """CIFAR-100 python-pickle files of random images under root (tests/fakedata.py writes them), and the
    environment a child needs so that torchvision's md5 check accepts them (tests/subproc/sitecustomize.py)."""
    sys.path.insert(0, str(REPO))
    from tests.fakedata import subprocess_env_for_fake_cifar, write_fake_cifar

    md5s = write_fake_cifar(root, "cifar100", n_train=n_train, n_test=n_test)
    return subprocess_env_for_fake_cifar({"cifar100": md5s}, root)


OFFICIAL_WORKERS = 16  # the official scripts' --num_workers default (dlb.py/base.py L22)
# --contenders: every row by default
CONTENDERS = ("official", "official-workers", "ours", "ours-full", "ours-heap-off", "faithful", "ours-bf16")


def vs_official_commands(official: Path, root: Path, method: str, epochs: int, workers: int,
                         contenders=CONTENDERS) -> dict:
    """{contender: (row name, command)} for `epochs` epochs: the official script with its README's settings, at its
    own defaults (16 DataLoader workers) and with `workers` workers, and ours (python -m dlb.train) at its defaults, at
    the settings its full-length run resolves, those with glibc's default heap trimming, with trainer.faithful=true,
    and with bf16 autocast added to the full-run settings."""
    py = sys.executable
    if method == "dlb":
        off = [py, str(official / "dlb.py"), "--dataset", "cifar100", "--root", str(root), "--model_names", "resnet32",
               "--classes_num", "100", "--T", "3", "--alpha", "1", "--batch_size", "64", "--epoch", str(epochs),
               "--lr", "0.05", "--milestones", "150", "180", "210"]
    else:  # base.py trains each --model_names entry (default two resnet20s); one resnet32 = CE
        off = [py, str(official / "base.py"), "--dataset", "cifar100", "--root", str(root), "--model_names",
               "resnet32", "--classes_num", "100", "--batch_size", "64", "--epoch", str(epochs)]
    ours = [py, "-m", "dlb.train", "dataset=cifar100", f"dataset.root={root}", "backbone=resnet32", f"method={method}",
            f"trainer.epochs={epochs}", "trainer.progress=false"]
    # A short run stays eager (trainer.compile=auto compiles CPU runs long enough to repay it); the full-length run
    # the same command starts without trainer.epochs gets the settings below, measured here per epoch.
    full = full_run_speed(method)
    full_cmd = [*ours, f"trainer.compile={full.compile}"]
    rows = {"official": (f"official ({OFFICIAL_WORKERS} workers, its default)", off),
            "official-workers": (f"official, {workers} workers", [*off, "--num_workers", str(workers)]),
            "ours": ("ours, defaults", ours),
            "ours-full": (f"ours, full-run settings ({full.describe()})", full_cmd),
            "faithful": ("ours, trainer.faithful=true", [*ours, "trainer.faithful=true"]),
            "ours-heap-off": ("ours, full-run settings, glibc's heap trimming on (trainer.keep_heap=false)",
                              [*full_cmd, "trainer.keep_heap=false"]),
            "ours-bf16": ("ours, full-run settings + bf16 autocast (trainer.precision=bf16, opt-in)",
                          [*full_cmd, "trainer.precision=bf16"])}
    return {key: row for key, row in rows.items() if key in contenders}


def full_run_speed(method: str):
    """The speed settings `python -m dlb.train dataset=cifar100 backbone=resnet32 method=<method>` resolves on the CPU
    for its full length (the recipe's epochs over all of CIFAR-100)."""
    import math

    import torch

    from dlb.config import compose
    from dlb.data.datasets import TRAIN_SIZES
    from dlb.device.speed import resolve_speed

    cfg = compose(["dataset=cifar100", "backbone=resnet32", f"method={method}"])
    steps = cfg.trainer.epochs * math.ceil(TRAIN_SIZES[cfg.dataset.name] / cfg.trainer.batch_size)
    return resolve_speed(cfg.trainer, cfg.optim, torch.device("cpu"), steps)


def run_vs_official(a, command: str) -> None:
    """Wall time of whole training processes, E=1 and E=3 epochs, interleaved; per-epoch = (wall(3) - wall(1)) / 2,
    so start-up, data loading and compiling (if any, from a warm cache) cancel; the median over repeats."""
    official = Path(a.vs_official).resolve()
    if not (official / "dlb.py").is_file() or not (official / "base.py").is_file():
        sys.exit(f"benchmark: {official} holds no dlb.py/base.py of github.com/Meta-knowledge-Lab/DLB")
    m = machine("cpu")
    m["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS", "unset")
    methods = a.methods.split(",")
    workers = a.pil_workers
    contenders = a.contenders.split(",")
    if "official" not in contenders or set(contenders) - set(CONTENDERS):
        sys.exit(f"benchmark: --contenders {a.contenders}: choose from {','.join(CONTENDERS)}, official included "
                 "(the ratios are against it)")
    walls: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if a.data:
            root, env = Path(a.data).resolve(), dict(os.environ)
            data_note = f"CIFAR-100 at {a.data}"
        else:
            root = Path(tmp) / "data"
            env = write_synthetic_cifar100(root, a.train_size, a.test_size)
            data_note = (f"synthetic CIFAR-100 (python-pickle format, random images: speed does not depend on pixel "
                         f"values), {a.train_size} train / {a.test_size} test images")
        env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
        # One untimed epoch of each compiled contender first: inductor caches compiled graphs on disk, so otherwise
        # the first timed process alone would pay the compile and it would not cancel in wall(3) - wall(1).
        for method in methods:
            for key, (who, cmd) in vs_official_commands(official, root, method, 1, workers, contenders).items():
                if any(c.startswith("trainer.compile=") and c != "trainer.compile=none" for c in cmd):
                    print(f"benchmark: {method} {who}: one untimed epoch (compile cache) ...", flush=True)
                    p = subprocess.run([*cmd, f"hydra.run.dir={tmp}/runs/{method}-{key}-warm-up"], cwd=REPO, env=env,
                                       capture_output=True, text=True)
                    if p.returncode != 0:
                        sys.exit(f"benchmark: {' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
        for r in range(a.repeats):
            for method in methods:
                for epochs in ((1, 3) if r % 2 == 0 else (3, 1)):
                    for key, (who, cmd) in vs_official_commands(official, root, method, epochs, workers,
                                                                contenders).items():
                        is_official = key.startswith("official")
                        if not is_official:
                            cmd = [*cmd, f"hydra.run.dir={tmp}/runs/{method}-{key}-{epochs}-{r}"]
                        cwd = Path(tmp) / "cwd" if is_official else REPO  # the official writes under ./
                        cwd.mkdir(exist_ok=True)
                        print(f"benchmark: {method} {who} {epochs} epoch(s) (repeat {r + 1}/{a.repeats}) ...",
                              flush=True)
                        t0 = time.perf_counter()
                        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
                        wall = time.perf_counter() - t0
                        if p.returncode != 0:
                            sys.exit(f"benchmark: {' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
                        walls.setdefault((method, key, who), {}).setdefault(epochs, []).append(wall)
    rows = []
    for (method, key, who), w in walls.items():
        per_epoch = [(w3 - w1) / 2 for w1, w3 in zip(w[1], w[3])]
        rows.append({"method": method, "contender": key, "who": who, "wall_1": w[1], "wall_3": w[3],
                     "epoch_s_runs": per_epoch, "epoch_s": statistics.median(per_epoch)})
    official_s = {r["method"]: r["epoch_s"] for r in rows if r["contender"] == "official"}
    few_s = {r["method"]: r["epoch_s"] for r in rows if r["contender"] == "official-workers"}
    lines = ["| method | loop | wall 1 epoch s | wall 3 epochs s | s per epoch | vs official defaults (> 1: faster) "
             f"| vs official, {workers} workers |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        r["speedup_vs_official"] = official_s[r["method"]] / r["epoch_s"]
        r["speedup_vs_official_few_workers"] = few_s[r["method"]] / r["epoch_s"] if r["method"] in few_s else None
        lines.append(f"| {r['method']} | {r['who']} | {statistics.median(r['wall_1']):.1f} | "
                     f"{statistics.median(r['wall_3']):.1f} | {r['epoch_s']:.1f} | {r['speedup_vs_official']:.2f} | "
                     f"{fmt(r['speedup_vs_official_few_workers'], 2)} |")
    examples = vs_official_commands(Path("<DLB checkout>"), Path("<root>"), methods[-1], 3, workers)
    body = (f"- data: {data_note}; resnet32, batch 64, CIFAR-100 recipe\n"
            f"- official: github.com/Meta-knowledge-Lab/DLB (dlb.py for DLB, base.py with one resnet32 for CE), its "
            f"`torch._six.string_classes` replaced by `str`, at its defaults ({OFFICIAL_WORKERS} DataLoader workers) "
            f"and with --num_workers {workers} (fewer workers than its default suit this machine better); e.g. "
            f"`{' '.join(examples['official'][1][1:])}`\n"
            f"- ours: `{' '.join(examples['ours'][1][1:])}` at defaults (eager: a 3-epoch run is too short to repay "
            f"compiling), at the settings the full-length run of the same command resolves (compile time falls in "
            f"the first epoch and cancels; one untimed epoch per compiled contender fills inductor's cache first), "
            f"those with trainer.keep_heap=false, with trainer.faithful=true, and with bf16 autocast added to the "
            f"full-run settings (opt-in: it changes the numerics)\n"
            f"- per epoch = (wall(3 epochs) - wall(1 epoch)) / 2 of whole processes (start-up and data loading cancel; "
            f"each epoch includes its evaluation), median of {a.repeats} interleaved repeat(s); OMP_NUM_THREADS "
            f"{m['omp_num_threads']} (each process picks its own threads)\n\n" + "\n".join(lines) + "\n")
    publish(a, m, command, "This repo vs the official DLB code: resnet32, batch 64, CPU", body, {"rows": rows}, True,
            settings="whole training processes, each with its own defaults (below)")


def parser(description: str | None = None) -> argparse.ArgumentParser:
    """The benchmark's settings as scripts/benchmark.py takes them (scripts/method_costs.py parses its own into
    these)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet32", help="a configs/backbone name")
    p.add_argument("--methods", default="ce,dlb",
                   help="comma-separated; ce first gives the epoch-time ratios; an entry may carry method settings, "
                   "e.g. dlb:backward=split")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:<i>")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead", "max-autotune"])
    p.add_argument("--fused", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--steps", type=int, default=20, help="timed steps per repeat (use >= 200 on a GPU)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per run (default: torch's); 1 is steadier on a machine shared with "
                   "other jobs")
    p.add_argument("--train-size", type=int, default=50000)
    p.add_argument("--test-size", type=int, default=10000)
    p.add_argument("--eval-batches", type=int, default=2, help="eval batches of 1000 per timed repeat")
    p.add_argument("--pil-workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader workers of the PIL path (0: in the main process)")
    p.add_argument("--no-pil", action="store_true", help="skip the PIL/DataLoader comparison")
    p.add_argument("--pil-methods", default=",".join(PIL_METHODS),
                   help="the entries that get a device-loader vs PIL pair (default: ce,dlb)")
    p.add_argument("--no-pairs", action="store_true",
                   help="skip the paired CE-vs-method runs: epoch time vs CE then comes from the separate rows")
    p.add_argument("--speed", action="store_true", help="before/after ratio of each speed switch")
    p.add_argument("--variants", default=None, help="--speed: only the switches whose name contains one of these")
    p.add_argument("--jobs", default=None, help="e.g. 1,2,4: that many concurrent runs on the device, total img/s")
    p.add_argument("--eval-batch-sizes", default=None, metavar="64,128,...",
                   help="evaluation img/s of each --backbone (comma-separated) at these eval batch sizes")
    p.add_argument("--keep-heap", action="store_true",
                   help="trainer.keep_heap on vs off, a fresh process per run: img/s and minor page faults per step")
    p.add_argument("--compile-cost", action="store_true",
                   help="the one-off cost of torch.compile and the steps that repay it (trainer.compile=auto's rule)")
    p.add_argument("--vs-official", default=None, metavar="DLB_CHECKOUT",
                   help="time whole training processes against the official code checked out there")
    p.add_argument("--data", default=None, help="--vs-official: a real CIFAR-100 root (default: synthetic files)")
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help="--vs-official: the rows to time, official first (default: all)")
    p.add_argument("--out", type=Path, default=None,
                   help="write <out>.md and <out>.json (default under results/bench/)")
    p.add_argument("--throughput-file", default=str(THROUGHPUT_FILE), help="'' to leave it alone")
    return p


def stop_on_sigterm() -> None:
    """A time limit's SIGTERM becomes SystemExit: each mode writes the rows it has (subprocess.run kills its child)
    and names the signal in its tables."""
    def stopped(signum, frame):
        STOPPED.append(signal.Signals(signum).name)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stopped)


if __name__ == "__main__":  # a child process of run_child: one configuration, or a pair, measured -> one result line
    c = json.loads(sys.argv[1])
    result = (measure_pair(*c["pair"]) if "pair" in c else measure_compile_cost(c) if c.get("compile_cost")
              else measure(c))
    print(RESULT_TAG + json.dumps(result), flush=True)


