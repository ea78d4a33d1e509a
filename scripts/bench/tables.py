"""What every mode writes: the machine, the table header, the Markdown and JSON files (also while measuring and
when stopped by a time limit), throughput.json for the sweep's training-time estimate; and the method-cost table
(scripts/method_costs.py)."""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import signal
import statistics
import sys
from pathlib import Path

import torch

from dlb.config import compose
from dlb.methods import METHODS, ordered
from dlb.models import build_model
from dlb.run.record import cpu_model, git_info

STOPPED: list[str] = []  # the signal that stopped this run (stop_on_sigterm), named in the partial tables


def machine(device: str, threads: int | None = None) -> dict:
    info = {"host": platform.node(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": threads or torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}
    info.update(git_info())  # the code that was measured
    if device != "cpu" and torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return info


def device_label(m: dict, device: str) -> str:
    return m["gpu"] if device != "cpu" and m.get("gpu") else f"cpu: {m['cpu']} ({m['torch_threads']} threads)"


def fmt(x, digits: int = 0) -> str:
    return "–" if x is None else f"{x:,.{digits}f}" if isinstance(x, (int, float)) else str(x)


def mb(x) -> str:
    return "–" if x is None else f"{x / 2**20:,.1f}"


def header(m: dict, a, command: str, title: str, settings: str | None = None) -> str:
    """The table's first lines: command, machine and its load at start, code; `settings` replaces the line describing
    the in-memory step/loop measurement."""
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
            f"{m['load_avg_1m_at_start']} at start{busy}\n- device: {device_label(m, a.device)}; torch {m['torch']}"
            f"{', CUDA ' + m['cuda'] if m.get('cuda') else ''}; {m['date']}; code {m.get('git_commit', 'unknown')[:10]}"
            f"{' (uncommitted changes)' if m.get('git_dirty') else ''}\n- settings: {settings}\n")


def write_outputs(out: Path, md: str, payload: dict, quiet: bool = False) -> None:
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
    incomplete = (f"- INCOMPLETE: written while measuring or stopped early ({m.get('stopped', 'still running')}): rows "
                  "may be missing\n")
    md = header(m, a, command, title, settings) + ("" if final else incomplete) + body
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
    what = "Trainer.train_epoch img/s, synthetic in-memory CIFAR-shaped data"
    table.setdefault("measured", {})[backbone_name] = {"date": m["date"], "command": command, "what": what}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    print(f"updated {path}")


def backbone_timm_name(backbone: str) -> str:
    return compose([f"backbone={backbone}"]).backbone.name


def stop_on_sigterm() -> None:
    """A time limit's SIGTERM becomes SystemExit: each mode writes the rows it has (subprocess.run kills its child)
    and names the signal in its tables."""
    def stopped(signum, frame):
        STOPPED.append(signal.Signals(signum).name)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stopped)


@contextlib.contextmanager
def partial_tables(render):
    """On a SystemExit inside (a time limit's SIGTERM): render(False) writes the rows so far, then the exit goes on."""
    try:
        yield
    except SystemExit:
        render(False)
        raise


def costs() -> dict:
    """Row name -> the method's Cost (dlb/methods/base.py): every method in table order, each followed by the other
    settings it names in cost_variants ("dlb:backward=split")."""
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
    name = backbone_timm_name(a.backbone)
    K, N, Bsz, img = 100, a.train_size, a.batch_size, 3 * 32 * 32 * 4
    P = sum(q.numel() for q in build_model(compose([f"backbone={a.backbone}"]), K).parameters())
    table = costs()
    ce = rows.get("ce", {})
    A, A_peak = ce.get("saved_activation_bytes"), ce.get("peak_saved_activation_bytes")
    cuda = bool(m.get("gpu")) and a.device != "cpu"
    mem_key, mem_name = ("peak_cuda_allocated_bytes", "peak CUDA alloc MB") if cuda else ("peak_rss_bytes",
                                                                                        "peak RSS MB (process)")
    lines = [f"| method | images through the net per step (× B) | needs a teacher | extra memory vs CE (formula) | "
             f"formula, MB | measured: saved for backward MB (vs CE) | measured: peak held for backward MB (vs CE) | "
             f"measured: kept between steps MB | step img/s | loop img/s | epoch time vs CE | {mem_name} |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, r in rows.items():
        cost = table[method]
        passes, teacher, formula, f = cost.passes, cost.teacher, cost.memory, cost.memory_bytes
        if "error" in r:
            lines.append(f"| {method} | {passes} | {teacher} | {formula} | error: {r['error'][:100]} |" + " |" * 7)
            continue
        fb = f(A, P, N, K, Bsz, img) if A is not None else None
        saved, held = r.get("saved_activation_bytes"), r.get("peak_saved_activation_bytes")
        delta = f" ({(saved - A) / 2**20:+,.1f})" if saved is not None and A is not None else ""
        held_delta = f" ({(held - A_peak) / 2**20:+,.1f})" if held is not None and A_peak is not None else ""
        vs_ce = epoch_time_vs_ce(ce, r)
        lines.append(f"| {method} | {passes} | {teacher} | {formula} | {mb(fb)} | {mb(saved)}{delta} | "
                     f"{mb(held)}{held_delta} | {mb(r.get('method_state_bytes'))} | {fmt(r['step_img_per_s'])} | "
                     f"{fmt(r['loop_img_per_s'])} | {fmt(vs_ce, 2)} | {mb(r.get(mem_key))} |")
    notes = (f"- symbols: B = {Bsz} (batch), K = {K} classes, N = {N} training images, img = 3·32·32·4 = {img} "
             f"bytes (one float32 view), P = {P:,} parameters of {name}, A = CE's bytes saved for backward in one step "
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
