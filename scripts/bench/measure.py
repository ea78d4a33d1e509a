"""The measurement, each configuration in a fresh child process (so a method's peak memory is its own): the child,
`python -m scripts.bench.measure <configuration as JSON>` run from the repo root, prints one result line; the parent
runs the children (run_child, run_interleaved, run_pair, run_concurrent) and combines their results."""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from dlb import REPO
from dlb.config import compose, validate
from dlb.data.datasets import CIFAR100_MEAN, CIFAR100_STD, ArrayDataset
from dlb.metrics import evaluate
from dlb.models import build_model
from dlb.trainer import Trainer

RESULT_TAG = "BENCH_RESULT "


def saved_for_backward_bytes(step, exclude=()) -> dict:
    """Run `step()` and measure the storages autograd saves for backward, each once, those of `exclude` (e.g. the
    parameters) aside: `total` saved during the step, `peak` held at one moment (until the last node saving a storage
    is freed). Device-agnostic, so CPU runs can compare methods' activation memory; eager mode only."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    live: dict[int, list[int]] = {}  # storage pointer -> [bytes, saved references still held]
    held = {"now": 0, "peak": 0, "total": 0}

    class Saved:
        __slots__ = ("tensor", "ptr")

        def __init__(self, tensor, ptr):
            self.tensor, self.ptr = tensor, ptr

        def __del__(self):
            entry = live[self.ptr]
            entry[1] -= 1
            if entry[1] == 0:
                held["now"] -= entry[0]
                del live[self.ptr]

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr in skip or ptr == 0:
            return t
        if ptr not in live:
            live[ptr] = [t.untyped_storage().nbytes(), 0]
            held["now"] += live[ptr][0]
            held["total"] += live[ptr][0]
            held["peak"] = max(held["peak"], held["now"])
        live[ptr][1] += 1
        return Saved(t, ptr)

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s.tensor if isinstance(s, Saved) else s):
        step()
    return {"total": held["total"], "peak": held["peak"]}


def synthetic_data(n_train: int, n_test: int, classes: int = 100):
    """CIFAR-shaped uint8 images and labels, in memory (the speed of a step does not depend on pixel values)."""
    g = torch.Generator().manual_seed(0)

    def ds(n):
        return ArrayDataset(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                            torch.randint(0, classes, (n,), generator=g), classes, CIFAR100_MEAN, CIFAR100_STD,
                            "cifar100")

    return ds(n_train), ds(n_test)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def method_state_bytes(method) -> int:
    """Bytes of the tensors a method keeps between steps: its parameters/buffers (a teacher, PS-KD's memory) and the
    tensors in its attributes (DLB's last batch), each storage counted once."""
    seen: dict[int, int] = {}

    def add(x):
        if isinstance(x, torch.Tensor):
            seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        elif isinstance(x, (dict, list, tuple)):
            for v in x.values() if isinstance(x, dict) else x:
                add(v)

    for t in list(method.parameters()) + list(method.buffers()):
        add(t)
    for k, v in vars(method).items():
        if not k.startswith("_"):
            add(v)
    return sum(seen.values())


def _rss_bytes() -> int:
    status = Path("/proc/self/status").read_text().splitlines()
    return next((int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:")), 0)


def method_spec(spec: str) -> tuple[str, list[str]]:
    """'dlb:backward=split:alpha=0.5' -> ('dlb', ['method.backward=split', 'method.alpha=0.5']): a --methods entry
    is a method name, optionally with its own settings (the entry is also the row's label)."""
    name, *settings = spec.split(":")
    return name, [f"method.{kv}" for kv in settings]


def make_trainer(c: dict, out_dir: str, data):
    """The one place the benchmark builds a run (dlb.build, as every training run) and its Trainer: configuration c on
    the in-memory data."""
    method, method_settings = method_spec(c["method"])
    overrides = ["dataset=cifar100", "dataset.root=unused", f"dataset.loader={c.get('loader', 'device')}",
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
        sync(trainer.device)
        return rows / (time.perf_counter() - t0)

    return step, timed_steps


def warm_up_loop(trainer, cfg, c: dict) -> None:
    """An untimed epoch 0 of c["warmup"] batches (compiling, allocator caches), then epochs of c["steps"] batches."""
    OmegaConf.update(cfg, "trainer.limit_train_batches", c["warmup"])
    trainer.train_epoch(0)
    OmegaConf.update(cfg, "trainer.limit_train_batches", c["steps"])


def measure_pair(ca: dict, cb: dict, data, tmp: str) -> dict:
    """Configuration a and b in one process, their timed blocks alternating (a b, b a, a b, ...), so each repeat's b/a
    ratio compares two measurements seconds apart: the before/after of one switch, robust to a drifting load."""
    res: dict = {"a": ca, "b": cb, "step": [[], []], "loop": [[], []]}
    runs = []
    for i, c in enumerate((ca, cb)):
        torch.manual_seed(0)  # same initial weights
        trainer, cfg = make_trainer(c, f"{tmp}/{i}", data)
        step, timed = make_step(trainer, c)
        for _ in range(c["warmup"]):
            step()
        warm_up_loop(trainer, cfg, c)
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
    return res


def measure(c: dict, data, tmp: str) -> dict:
    trainer, cfg = make_trainer(c, tmp, data)
    dev = trainer.device
    res: dict = {"method": c["method"], "keep_heap": c.get("keep_heap", "auto"), "device": str(dev)}
    rss_before = _rss_bytes()
    step, timed_steps = make_step(trainer, c)
    # (a) the model-only step
    for _ in range(c["warmup"]):
        step()
    sync(dev)
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
    warm_up_loop(trainer, cfg, c)
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
    # (c) evaluation throughput
    if c["eval"]:
        evaluate(trainer.model, trainer.test_loader, 1, trainer.autocast)  # warm-up
        evals = []
        for _ in range(c["repeats"]):
            sync(dev)
            t0 = time.perf_counter()
            n = evaluate(trainer.model, trainer.test_loader, c["eval_batches"], trainer.autocast)["test_n"]
            sync(dev)
            evals.append(n / (time.perf_counter() - t0))
        res["eval_img_per_s_runs"], res["eval_img_per_s"] = evals, statistics.median(evals)
    return res


def _wait_barrier(path: str, n: int, timeout_s: float = 600) -> None:
    """--jobs: every job finishes its set-up and warm-up before any starts timing, so the timed loops overlap. The
    parent marks a job that died as ready, so the others never wait for it; timeout_s bounds the rest."""
    d = Path(path)
    (d / f"ready-{os.getpid()}").touch()
    start = time.monotonic()
    while len(list(d.glob("ready-*"))) < n and time.monotonic() - start < timeout_s:
        time.sleep(0.05)


def measure_compile_cost(c: dict, data, tmp: str) -> dict:
    """Child: Trainer.train_epoch on c["train_size"] images, epoch 0 (compiles) then epoch 1 (compiled), eager and
    compiled (compile default; both with c's channels_last and fused). compile_s = the compiled run's extra first-epoch
    time over the eager run's; saved_s_per_step = the steady per-step time eager minus compiled; their ratio = the
    optimizer steps after which compiling has paid for itself."""
    res: dict = {"method": c["method"]}
    for mode in ("none", "default"):
        torch.manual_seed(0)
        trainer, _ = make_trainer({**c, "compile": mode}, f"{tmp}/{mode}", data)
        walls = []
        for epoch in range(2):
            t0 = time.perf_counter()
            trainer.train_epoch(epoch)
            walls.append(time.perf_counter() - t0)
        res[mode] = {"epoch_s": walls, "steps": trainer.step // 2}
    steps, (c0, c1), (e0, e1) = res["none"]["steps"], res["default"]["epoch_s"], res["none"]["epoch_s"]
    res["compile_s"] = (c0 - c1) - (e0 - e1)
    res["eager_s_per_step"], res["compiled_s_per_step"] = e1 / steps, c1 / steps
    saved = res["eager_s_per_step"] - res["compiled_s_per_step"]
    res["repaid_after_steps"] = res["compile_s"] / saved if saved > 0 else None
    return res


def child_command(c: dict) -> list[str]:
    return [sys.executable, "-m", "scripts.bench.measure", json.dumps(c)]  # run from the repo root


def child_env(c: dict) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    if c.get("threads"):  # before torch starts its thread pool
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(c["threads"])
    if c.get("compile_cost"):  # a cold compile, as a first run pays it: no kernels cached by earlier runs
        env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="dlb-inductor-")
    return env


def child_result(stdout: str, stderr: str, method: str, who: str) -> dict:
    """The child's result line, or {"method", "error": the last lines it wrote} for one that failed."""
    for line in stdout.splitlines()[::-1]:
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (stderr or stdout).strip().splitlines()[-3:]
    print(f"{who} failed: {' | '.join(tail)}", file=sys.stderr)
    return {"method": method, "error": " | ".join(tail)[-500:]}


def run_child(c: dict) -> dict:
    r = subprocess.run(child_command(c), cwd=REPO, env=child_env(c), capture_output=True, text=True)
    return child_result(r.stdout, r.stderr, c["method"], f"benchmark: {c['method']}")


def combine(runs: list[dict]) -> dict:
    """One configuration's runs (one timed run each) -> medians; pipeline efficiency as the median of each run's own
    loop/step ratio (the two phases of one run are close in time); memory as the largest seen."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    out = dict(ok[0])
    for key in ("step", "loop", "eval"):
        vals = [v for r in ok for v in r.get(f"{key}_img_per_s_runs", [])]
        if vals:
            out[f"{key}_img_per_s_runs"], out[f"{key}_img_per_s"] = vals, statistics.median(vals)
    out["pipeline_efficiency_runs"] = [r["pipeline_efficiency"] for r in ok]  # each run's loop / its own steps
    out["minor_faults_per_step_runs"] = [r.get("minor_faults_per_step") for r in ok]
    out["pipeline_efficiency"] = statistics.median(out["pipeline_efficiency_runs"])
    for key in ("peak_rss_bytes", "peak_cuda_allocated_bytes", "rss_growth_bytes", "saved_activation_bytes",
                "peak_saved_activation_bytes", "method_state_bytes"):
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


def run_pair(ca: dict, cb: dict, label: str) -> dict:
    print(f"benchmark: {label} (paired, one process) ...", flush=True)
    return run_child({"pair": [ca, cb], "method": label, "threads": ca.get("threads")})


def run_concurrent(a, method: str, n: int) -> list[dict]:
    """n child processes of one configuration, released together by a file barrier. Their output goes to files (a
    chatty child can't block on a full pipe while the others wait), and a child that dies is marked ready at once."""
    with tempfile.TemporaryDirectory() as tmp:
        barrier = Path(tmp) / "barrier"
        barrier.mkdir()
        c = {**base_config(a), "method": method, "barrier": [str(barrier), n]}
        print(f"benchmark --jobs: {n} concurrent {method} runs ...", flush=True)
        procs, logs = [], [(Path(tmp) / f"out{k}", Path(tmp) / f"err{k}") for k in range(n)]
        for out_path, err_path in logs:
            with open(out_path, "w") as out, open(err_path, "w") as err:
                procs.append(subprocess.Popen(child_command(c), cwd=REPO, env=child_env(c), stdout=out, stderr=err))
        try:
            while any(p.poll() is None for p in procs):
                for p in procs:
                    if p.poll() is not None:
                        (barrier / f"ready-{p.pid}").touch()
                time.sleep(0.2)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        return [child_result(out.read_text(), err.read_text(), method, "benchmark --jobs: a job") for out, err in logs]


if __name__ == "__main__":  # a child process of run_child: one configuration, or a pair, measured -> one result line
    c = json.loads(sys.argv[1])
    if c.get("threads"):
        torch.set_num_threads(c["threads"])
    torch.manual_seed(0)
    first = c["pair"][0] if "pair" in c else c
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_data(first["train_size"], first["test_size"])
        result = (measure_pair(*c["pair"], data, tmp) if "pair" in c else measure_compile_cost(c, data, tmp)
                  if c.get("compile_cost") else measure(c, data, tmp))
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(RESULT_TAG + json.dumps(result), flush=True)
