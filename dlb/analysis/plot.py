"""Figures from finished runs: test-error curves per cell, error vs label-noise rate, DLB training dynamics, and a
method's sensitivity to two of its hyper-parameters (a cell whose variants differ only in those).

A ROOT "wandb:ENTITY/PROJECT" reads a W&B project. Only usable runs are plotted, variants as separate lines.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import zlib
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator

from dlb.analysis.report import DEFAULT_PAPER, load_paper, paper_value
from dlb.analysis.runs import CELL, SETTING, Run, collect_runs, compared, mean_std, table
from dlb.errors import warn
from dlb.methods import METHODS, label as method_label

plt.switch_backend("Agg")  # files only; no display on training machines
ZOOM_FRACTION = 0.25  # the right panel of the curves shows the last quarter of training, where methods differ
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
# Per setting where one panel shows several, so no two series look alike; markers also show one-epoch runs.
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
MAX_MARKERS = 20  # per line; longer runs get a marker every n epochs
MAX_CURVE_VARIANTS = 4  # a cell with more variants (a hyper-parameter sweep) shows its main one in the curves


def method_color(method: str):  # `Method.color`; None for a method without one
    return METHODS[method].color if method in METHODS else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def _with_runs(label: str, runs: list[Run]) -> str:
    return f"{label} (n={len(runs)}, seeds {','.join(str(r.seed) for r in sorted(runs, key=lambda r: r.seed))})"


def _series(runs: list[Run], key: str) -> dict[int, list[float]]:
    """epoch -> the values of `key` over the runs that logged it then."""
    out: dict[int, list[float]] = {}
    for run in runs:
        for row in run.history():
            v, epoch = row.get(key), row.get("epoch")
            if isinstance(v, (int, float)) and isinstance(epoch, int):
                out.setdefault(epoch, []).append(float(v))
    return dict(sorted(out.items()))


def _lines(df: pd.DataFrame):
    """(label, color, usable runs) per cell variant; past MAX_CURVE_VARIANTS only the one at the method's defaults."""
    for (*_, method), cell in df[df["usable"]].groupby(list(CELL), sort=False):
        variants = list(cell["variant"].unique())
        if len(variants) > MAX_CURVE_VARIANTS:
            variants = list(compared(cell)[0]["variant"].unique())
        for i, variant in enumerate(variants):
            runs = list(cell[cell["variant"] == variant]["run"])  # the runs the table averages
            label = method_label(method) + (f" [{variant}]" if len(variants) > 1 else "")
            color = method_color(method) or COLORS[zlib.crc32(method.encode()) % len(COLORS)]
            yield label, (color if i == 0 else None), runs


def _epoch_panels(panels: dict[str, tuple[str, list]]):
    """(figure, axes) of one panel per title: (ylabel, lines); a line (label, color, series, style) is the mean over
    seeds, with their min-max as a band."""
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 4.6))
    for ax, (title, (ylabel, lines)) in zip(axes, panels.items()):
        for label, color, series, style in lines:
            epochs = list(series)
            (line,) = ax.plot(epochs, [sum(v) / len(v) for v in series.values()], label=label, color=color,
                              linestyle=LINESTYLES[style % len(LINESTYLES)], linewidth=1.4,
                              marker=MARKERS[style % len(MARKERS)], markersize=4,
                              markevery=max(1, len(epochs) // MAX_MARKERS))
            ax.fill_between(epochs, [min(v) for v in series.values()], [max(v) for v in series.values()],
                            color=line.get_color(), alpha=0.18, linewidth=0)
        if not lines:
            ax.text(0.5, 0.5, f"{title} not logged by these runs", ha="center", va="center", transform=ax.transAxes,
                    color="0.4")
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
    return fig, axes


def _finish(fig, title: str, subtitle: str, source: str, path: Path) -> Path:
    entries = {}  # one legend for all panels, below them, so that long labels never cover the data
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=2 if len(entries) > 1 else 1, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=12, y=0.995)
    subtitle += f"; from {source}" if source else ""
    fig.text(0.5, 0.94, subtitle, ha="center", va="top", fontsize=8, color="0.3", wrap=True)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # "tight" grows the image to hold the legend below the panels
    plt.close(fig)
    return path


def plot_curves(df: pd.DataFrame, out: Path, source: str = "") -> list[Path]:
    """Test error vs epoch per (dataset, backbone, setting): one line per method, mean over seeds, min-max band."""
    files = []
    for (dataset, backbone, *_), group in df.groupby(list(SETTING), sort=False):
        curves = [(_with_runs(label, runs), color, series, runs) for label, color, runs in _lines(group)
                  if (series := _series(runs, "test_err"))]
        if not curves:
            continue
        lines = [(text, color, series, 0) for text, color, series, _ in curves]
        last_epoch = max(max(series) for _, _, series, _ in lines)
        zoom_from = max(1, int(last_epoch * (1 - ZOOM_FRACTION)))
        zoomed = [(text, color, late, 0) for text, color, series, _ in lines  # never empty: the longest line gets here
                  if (late := {e: v for e, v in series.items() if e >= zoom_from})]
        fig, (_, ax_zoom) = _epoch_panels({"all epochs": ("test error (%)", lines), f"epochs {zoom_from}-"
                                           f"{last_epoch} (zoom)": ("test error (%)", zoomed)})
        zoom_values = [x for _, _, series, _ in zoomed for v in series.values() for x in v]
        lo, hi = min(zoom_values), max(zoom_values)
        pad = max(0.1, 0.1 * (hi - lo))
        ax_zoom.set_ylim(lo - pad, hi + pad)
        setting = group["setting"].iloc[0]
        n = sum(len(runs) for *_, runs in curves)
        files.append(_finish(
            fig, f"{dataset} / {backbone}" + (f" / {setting}" if setting else "") + ": test error",
            f"{n} runs; line = mean over seeds, band = min-max; usable (completed) runs only", source,
            out / (f"curves_{dataset}_{backbone}" + (f"_{_slug(setting)}" if setting else "") + ".png")))
    return files


def plot_noise(df: pd.DataFrame, out: Path, metric: str = "best", source: str = "", paper: dict | None = None
               ) -> list[Path]:
    """Error vs label-noise rate per method (rate 0: clean runs) where there are two rates; the paper's on `metric`."""
    files = []
    used = compared(df)[0]  # one variant per cell, as the comparisons
    for (dataset, backbone), group in used[used["augment"] == "none"].groupby(["dataset", "backbone"], sort=False):
        points: dict[tuple, dict[float, pd.DataFrame]] = {}  # (method, noise name) -> rate -> usable runs
        paper_points: dict[str, dict[float, float]] = {}  # method -> rate -> the paper's error
        noise_names = sorted(set(group["noise"]) - {"none"})  # none: no figure
        for cell, runs in group.groupby(list(CELL), sort=False):
            cell = dict(zip(CELL, cell))
            for noise in ([cell["noise"]] if cell["noise"] != "none" else noise_names):
                points.setdefault((cell["method"], noise), {})[cell["rate"]] = runs
            if (known := paper_value(paper, cell))["status"] == "value":
                paper_points.setdefault(cell["method"], {})[cell["rate"]] = known["value"]
        points = {k: v for k, v in points.items() if len(v) >= 2}
        if not points:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
        for ax, which in zip(axes, ("best", "last")):
            for (method, noise), rates in sorted(points.items()):
                xs = sorted(rates)
                stats = [mean_std(rates[x][f"{which}_err"]) for x in xs]
                ax.errorbar([100 * x for x in xs], [s["mean"] for s in stats], yerr=[s["std"] or 0 for s in stats],
                            marker="o", capsize=3, color=method_color(method),
                            linestyle="-" if noise == noise_names[0] else "--", label=f"{method_label(method)}, "
                            f"{noise} (n per rate: {'/'.join(str(len(rates[x])) for x in xs)})")
            shown = which == metric and paper_points
            for method, rates in sorted(paper_points.items()) if shown else ():
                ax.plot([100 * x for x in sorted(rates)], [rates[x] for x in sorted(rates)], linestyle="none",
                        marker="x", markersize=8, color=method_color(method), label=f"{method_label(method)}, paper")
            ax.set(xlabel="training-label noise rate (%)", ylabel="test error (%)",
                   title=f"{which} epoch" + (" (× = the paper's value)" if shown else ""))
            ax.grid(alpha=0.3)
        n_runs = len({p for rates in points.values() for runs in rates.values() for p in runs["path"]})
        files.append(_finish(fig, f"{dataset} / {backbone}: test error vs label noise",
                             f"{n_runs} runs; mean ± std over seeds; rate 0 = clean runs", source,
                             out / f"noise_{dataset}_{backbone}.png"))
    return files


def plot_dlb_dynamics(df: pd.DataFrame, out: Path, notes: list[str], source: str = "") -> list[Path]:
    """train_consistency (the paper's consistency analysis) and train_kd vs epoch for the DLB runs."""
    files = []
    ylabels = {"train_consistency": "fraction of samples whose prediction\nagrees with the last step's",
               "train_kd": "KD term (α · T² · KL to the last batch)"}
    for (dataset, backbone), group in df[df["method"].str.contains("dlb")].groupby(["dataset", "backbone"], sort=False):
        panels = {key: (ylabel, []) for key, ylabel in ylabels.items()}
        n_runs = 0
        settings = sorted(set(group["setting"]))  # one line style and marker each
        for _, cell in group.groupby(list(CELL), sort=False):
            setting = cell["setting"].iloc[0]
            for label, color, runs in _lines(cell):
                found = {key: _series(runs, key) for key in panels}
                for key, series in found.items():
                    if series:
                        text = _with_runs(label + (f" [{setting}]" if setting else ""), runs)
                        panels[key][1].append((text, color, series, settings.index(setting)))
                n_runs += len(runs) if any(found.values()) else 0
        name = f"dlb_dynamics_{dataset}_{backbone}"
        if not any(lines for _, lines in panels.values()):
            notes.append(f"{name}: skipped, the runs log neither train_consistency nor train_kd")
            continue
        if not panels["train_consistency"][1]:
            notes.append(f"{name}: train_consistency not logged; train_kd only")
        fig, _ = _epoch_panels(panels)
        files.append(_finish(fig, f"{dataset} / {backbone}: DLB training dynamics",
                             f"{n_runs} runs; line = mean over seeds, band = min-max", source, out / f"{name}.png"))
    return files


def plot_sensitivity(df: pd.DataFrame, out: Path, source: str = "") -> list[Path]:
    """Heat maps of mean test error per cell swept in exactly two method keys (e.g. DLB's T x alpha)."""
    files = []
    for cell, runs in df[df["usable"]].groupby(list(CELL), sort=False):
        keys = runs["swept"].iloc[0].split(", ")
        if len(keys) != 2 or not all(k.startswith("method.") for k in keys) or runs["variant"].nunique() < 4:
            continue
        cell = dict(zip(CELL, cell))
        grid = {tuple(g["values"].iloc[0][k] for k in keys): g for _, g in runs.groupby("variant", sort=False)}
        # Every point from the same seeds (those all points have), so no point is a mean of more runs than another.
        if common := set.intersection(*(set(g["seed"]) for g in grid.values())):
            grid = {k: g[g["seed"].isin(common)] for k, g in grid.items()}
        rows = sorted({a for a, _ in grid}, key=float)
        cols = sorted({b for _, b in grid}, key=float)
        fig, axes = plt.subplots(1, 2, figsize=(4 + 1.3 * len(cols) * 2, 1.5 + 0.7 * len(rows)))
        for ax, which in zip(axes, ("best", "last")):
            means = [[mean_std(grid[(a, b)][f"{which}_err"])["mean"] if (a, b) in grid
                      else float("nan") for b in cols] for a in rows]
            image = ax.imshow(means, cmap="viridis_r", aspect="auto")
            finite = [v for row in means for v in row if v == v]
            middle = (min(finite) + max(finite)) / 2  # dark (high-error) squares get white text
            for i, a in enumerate(rows):
                for j, b in enumerate(cols):
                    if (a, b) in grid:
                        n = len(grid[(a, b)])
                        ax.text(j, i, f"{means[i][j]:.2f}" + (f"\n(n={n})" if n > 1 else ""), ha="center",
                                va="center", fontsize=8, color="w" if means[i][j] > middle else "k")
            ax.set_xticks(range(len(cols)), [f"{c:g}" for c in cols])
            ax.set_yticks(range(len(rows)), [f"{r:g}" for r in rows])
            ax.set(xlabel=keys[1], ylabel=keys[0], title=f"{which}-epoch test error (%)")
            fig.colorbar(image, ax=ax, shrink=0.85)
        seeds = sorted({int(s) for g in grid.values() for s in g["seed"]})
        setting = runs["setting"].iloc[0]
        name = f"{cell['dataset']}/{cell['backbone']}/{cell['method']}_{setting}"
        files.append(_finish(fig, f"{cell['dataset']} / {cell['backbone']} / {method_label(cell['method'])}"
                             f"{' [' + setting + ']' if setting else ''}: sensitivity to {keys[0]} x {keys[1]}",
                             f"{sum(len(g) for g in grid.values())} runs, seed{'s' if len(seeds) > 1 else ''} "
                             f"{','.join(map(str, seeds))}"
                             + (" (the seeds every point has)" if common else "; mean over seeds where n > 1"),
                             source, out / f"sensitivity_{_slug(name)}.png"))
    return files


def plot_all(runs: list[Run], out, *, metric: str = "best", source: str = "", notes: list[str] | None = None,
             paper: dict | None = None) -> list[Path]:
    """Every figure the runs allow; returns the files written. Reasons for figures not drawn go to `notes`."""
    out, notes, df = Path(out), [] if notes is None else notes, table(runs)
    return (plot_curves(df, out, source) + plot_noise(df, out, metric, source, paper)
            + plot_dlb_dynamics(df, out, notes, source) + plot_sensitivity(df, out, source))


def log_to_wandb(files: list[Path], project: str | None) -> str:
    """Best effort: one W&B run (job_type=plots) holding the figures as images. Returns what happened."""
    project = project or os.environ.get("WANDB_PROJECT")
    if not project:
        return "W&B: no project configured (--wandb-project or WANDB_PROJECT); figures not logged"
    entity, _, name = project.rpartition("/")
    try:
        import wandb

        run = wandb.init(project=name, entity=entity or None, job_type="plots", name="dlb.plot")
        run.log({f.stem: wandb.Image(str(f)) for f in files})
        run.finish()
        return f"W&B: logged {len(files)} figures to {project}"
    except Exception as e:  # never fail the plotting because of W&B
        warn(f"W&B logging failed ({type(e).__name__}: {e}); the files are written")
        return f"W&B: logging failed ({type(e).__name__})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dlb.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("roots", nargs="+", help="folders with run folders, or wandb:ENTITY/PROJECT")
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p.add_argument("--metric", choices=("best", "last"), default="best",
                   help="the noise plot's panel that shows the paper's values, where it has any")
    p.add_argument("--paper", default=str(DEFAULT_PAPER), help="the paper's reference values (YAML)")
    p.add_argument("--wandb", action="store_true", help="also log the figures to W&B (best effort)")
    p.add_argument("--wandb-project", default=None, metavar="ENTITY/PROJECT",
                   help="where --wandb logs (default: $WANDB_PROJECT)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    runs, skipped = collect_runs(args.roots)
    for s in skipped:
        print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
    if not runs:
        print(f"dlb.plot: no runs found in {', '.join(args.roots)}", file=sys.stderr)
        return 2
    notes: list[str] = []
    files = plot_all(runs, args.out, metric=args.metric, source=", ".join(args.roots), notes=notes,
                     paper=load_paper(args.paper))
    for line in [*(f"note: {note}" for note in notes), *files]:
        print(line)
    if args.wandb:
        print(log_to_wandb(files, args.wandb_project) if files else "W&B: no figures to log")
    return 0
