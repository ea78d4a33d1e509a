"""tfkd_self's teacher: the completed CE run of the same cell (method.teacher=auto), or a checkpoint path
(docs/methods.md, tfkd_self: the search rules and the command that trains a missing teacher)."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from dlb import CONFIGS
from dlb.run.folder import RunFolder, Summary
from dlb.run import identity as runid
from dlb.errors import ConfigError
from dlb.models import build_model


def search_root(out_dir: Path, teacher_root: str | None) -> Path:
    """Where method.teacher=auto looks: teacher_root, else the results root above out_dir (docs/methods.md's rule)."""
    if teacher_root:
        return Path(teacher_root).expanduser().resolve()
    out_dir = Path(out_dir).resolve()
    for parent in out_dir.parents:
        if parent.name in ("outputs", "multirun") or (parent / "multirun.yaml").is_file():
            return parent
    root = out_dir.parent.parent
    return out_dir.parent if root == root.parent else root


def _matches(run_dir: Path, identity: dict, data: dict | None) -> bool:
    """A completed CE run of this run's identity but for the method, trained on the same data where both know it."""
    try:
        summary, config = Summary.read(run_dir), RunFolder(run_dir).read_config()
    except (OSError, ValueError, TypeError):
        return False  # a run being written right now, or not ours
    return (summary.method == "ce" and summary.status == "completed" and not runid.data_differences(summary.data, data)
            and _without_method(runid.identity(config)) == identity)


def _without_method(identity: dict) -> dict:
    return {k: v for k, v in identity.items() if not k.startswith("method.")}


def _train_command(config: dict, root: Path) -> str:
    """The command that trains the missing teacher of the run of resolved `config` into `root`: the run's group
    choices with method=ce, then each identity value that differs from those groups' defaults."""
    def option(group: str, name: str) -> str:
        # The group option whose YAML sets this name (backbone=resnet32 for cifar_resnet32); a backbone without one
        # is timm's (its backbone.name then differs from the defaults and follows as a value).
        found = (path.stem for path in sorted((CONFIGS / group).glob("*.yaml"))
                 if f"\nname: {name}\n" in "\n" + path.read_text() + "\n")
        return next(found, "timm" if group == "backbone" else name)

    ident = runid.identity(config)
    choices = {"dataset": option("dataset", config["dataset"]["name"]),
               "backbone": option("backbone", config["backbone"]["name"]), "method": "ce",
               **{g: ident[g + ".name"] for g in ("augment", "noise") if ident.get(g + ".name", "none") != "none"}}
    defaults = runid.identity(runid.defaults_for(choices))
    values = [f"{k}={runid.value_text(v)}" for k, v in sorted(ident.items())
              if not k.startswith("method.") and k != "seed" and defaults.get(k) != v]
    seed = config["seed"]
    parts = ["python -m dlb.train", *(f"{g}={c}" for g, c in choices.items()), f"seed={seed}", *values]
    if root != (Path.cwd() / "outputs").resolve():  # the default hydra.run.dir lives under ./outputs
        parts.append(f"hydra.run.dir={root}/{runid.cell_dir({**config, 'method': {'name': 'ce'}})}/seed{seed}")
    return " ".join(parts)


def find_teacher(run_cfg, out_dir: Path, teacher_root: str | None, data: dict | None = None) -> Path:
    """best.pt of the one matching CE run under search_root (see _matches); `data`: this run's data fingerprint."""
    root = search_root(out_dir, teacher_root)
    config = OmegaConf.to_container(run_cfg, resolve=True, enum_to_str=True)
    identity = _without_method(runid.identity(config))
    runs = [RunFolder(p.parent) for p in sorted(root.glob(f"**/{RunFolder.SUMMARY}"))]
    found = [run.best.resolve() for run in runs if run.best.is_file() and _matches(run.path, identity, data)]
    what = (f"completed CE run with dataset={run_cfg.dataset.name} backbone={run_cfg.backbone.name} "
            f"seed={run_cfg.seed} and this run's other settings")
    if not found:
        raise ConfigError(f"method.teacher=auto: found no {what} (and its {RunFolder.CHECKPOINTS}/{RunFolder.BEST}) in "
                          f"{root}/**/{RunFolder.SUMMARY}; train it first: {_train_command(config, root)}  (or set "
                          f"method.teacher=<{RunFolder.BEST} or run dir>, method.teacher_root=<dir to search>)")
    if len(found) > 1:
        raise ConfigError(f"method.teacher=auto: {len(found)} runs match ({what}) under {root}: "
                          f"{', '.join(str(p) for p in found)}; pick one with method.teacher=<path>")
    return found[0]


def checkpoint_file(teacher: str | Path) -> Path:
    """The checkpoint a method.teacher path names: the file itself, or a run dir's best weights (RunFolder.best)."""
    path = Path(teacher).expanduser()
    if path.is_dir():
        path = RunFolder(path).best
    if not path.is_file():
        raise ConfigError(f"method.teacher={teacher}: no checkpoint at {path}; give a {RunFolder.BEST}, a run dir, or "
                          "auto")
    return path.resolve()


def load_teacher(path: Path, run_cfg, num_classes: int) -> nn.Module:
    """A frozen model of the run's backbone with the weights of a checkpoint ({"model": state_dict} or a state_dict)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, or not a weights file
        raise ConfigError(f"method.teacher={path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    teacher = build_model(run_cfg, num_classes)
    try:
        teacher.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ConfigError(f"method.teacher={path}: not a {run_cfg.backbone.name} with {num_classes} classes "
                          f"({str(e).splitlines()[0]})") from None
    teacher.requires_grad_(False)
    return teacher.eval()
