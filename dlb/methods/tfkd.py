"""Teacher-free KD (Yuan et al., CVPR 2020), as the official my_loss_function.py computes it.

tfkd_self (loss_kd_self): a frozen CE-trained teacher of the same architecture sees the same batch;
  loss = (1-alpha) CE(z, y) + alpha * T^2 * multiplier * KL(softmax(t/T) || softmax(z/T))
tfkd_reg (loss_kd_regularization): a virtual teacher u = correct_prob on the true class, (1-correct_prob)/(K-1) on
  the others;  loss = (1-alpha) CE(z, y) + alpha * multiplier * KL(softmax(u/T) || softmax(z))
The official KL is nn.KLDivLoss() with its default reduction: the mean over all B*K elements, i.e. batchmean/K
(kl_reduction=batchmean: summed over classes, averaged over samples). tfkd_reg softmaxes the *probability* vector
u/T (at T=20 nearly uniform) and leaves the student unscaled, without T^2 (soften=clean: softmax(log(u)/T) vs
softmax(z/T), times T^2). Formulas, defaults and sources: docs/methods.md.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from dlb.methods.base import Method, batch_ce, onehot_targets, register_method

KL_REDUCTIONS = ("official", "batchmean")
SOFTEN = ("official", "clean")


def kl_div(log_q: torch.Tensor, p: torch.Tensor, reduction: str) -> torch.Tensor:
    """KL(p || q) from log q and p. official: nn.KLDivLoss()'s element-wise mean (sum / (B*K)); batchmean: sum / B.
    (Written as sum / count: F.kl_div(reduction="mean") computes the same but warns on every call.)"""
    total = F.kl_div(log_q, p, reduction="sum")
    return total / (p.numel() if reduction == "official" else p.shape[0])


def _check_common(cfg, alpha_default: float, T_default: float, multiplier_default: float) -> None:
    from dlb.config import ConfigError

    if not 0 <= cfg.alpha <= 1:
        raise ConfigError(f"method.alpha={cfg.alpha}: the KD share must be in [0, 1] "
                          f"(official default {alpha_default})")
    if cfg.T <= 0:
        raise ConfigError(f"method.T={cfg.T}: the temperature must be > 0 (official default {T_default})")
    if cfg.multiplier < 0:
        raise ConfigError(f"method.multiplier={cfg.multiplier}: must be >= 0 (official default {multiplier_default})")
    if cfg.kl_reduction not in KL_REDUCTIONS:
        raise ConfigError(f"method.kl_reduction={cfg.kl_reduction}: use official (element-wise mean, the official "
                          "nn.KLDivLoss()) or batchmean")


# ---------------------------------------------------------------------------------------------------------
# Teacher lookup for tfkd_self


def search_root(out_dir: Path, teacher_root: str | None) -> Path:
    """Where method.teacher=auto looks: teacher_root if set, else the nearest ancestor of out_dir named outputs or
    multirun or holding multirun.yaml (a Hydra sweep dir), else out_dir/../.. (out_dir/.. if that is the filesystem
    root, which is no place to glob)."""
    if teacher_root:
        return Path(teacher_root).expanduser().resolve()
    out_dir = Path(out_dir).resolve()
    for parent in out_dir.parents:
        if parent.name in ("outputs", "multirun") or (parent / "multirun.yaml").is_file():
            return parent
    root = out_dir.parent.parent
    return out_dir.parent if root == root.parent else root


def _matches(summary: dict, run_cfg, train_size: int | None, num_classes: int | None) -> bool:
    """A completed CE run on the same data (dataset, training subset size, label noise), backbone and seed."""
    want = {"method": "ce", "status": "completed", "dataset": run_cfg.dataset.name, "backbone": run_cfg.backbone.name,
            "seed": run_cfg.seed, "train_size": train_size, "num_classes": num_classes}
    noise = run_cfg.get("noise")
    want["noise"] = "none" if noise is None else noise.name
    if want["noise"] != "none":
        want.update(noise_rate=noise.rate, noise_seed=noise.seed)
    # Summaries written before label noise existed have no noise keys: those runs were clean.
    return all(v is None or summary.get(k, "none" if k == "noise" else None) == v for k, v in want.items())


def _train_command(run_cfg, root: Path) -> str:
    """The command that trains the missing teacher into `root`."""
    configs = Path(__file__).resolve().parents[2] / "configs"

    def option(group: str, name: str) -> str:
        # The group option whose YAML sets this name (backbone=resnet32 for cifar_resnet32), else a raw override.
        for path in sorted((configs / group).glob("*.yaml")):
            if f"\nname: {name}\n" in "\n" + path.read_text() + "\n":
                return f"{group}={path.stem}"
        return f"{group}=timm {group}.name={name}" if group == "backbone" else f"{group}={name}"

    d, b = run_cfg.dataset.name, run_cfg.backbone.name
    parts = ["python -m dlb.train", option("dataset", d), option("backbone", b), "method=ce", f"seed={run_cfg.seed}"]
    if run_cfg.dataset.get("train_subset") is not None:
        parts.append(f"dataset.train_subset={run_cfg.dataset.train_subset}")
    noise = run_cfg.get("noise")
    if noise is not None and noise.name != "none":
        parts += [f"noise={noise.name}", f"noise.rate={noise.rate}", f"noise.seed={noise.seed}"]
    if root != (Path.cwd() / "outputs").resolve():  # the default hydra.run.dir lives under ./outputs
        parts.append(f"hydra.run.dir={root}/{d}/{b}/ce/seed{run_cfg.seed}")
    return " ".join(parts)


def find_teacher(run_cfg, out_dir: Path, teacher_root: str | None, train_size: int | None = None,
                 num_classes: int | None = None) -> Path:
    """checkpoints/best.pt of the one completed CE run under search_root(...) matching this run (see _matches)."""
    import json

    from dlb.config import ConfigError

    root = search_root(out_dir, teacher_root)
    found = []
    for summary_path in sorted(root.glob("**/summary.json")):
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError):
            continue  # a run being written right now, or not ours
        best = summary_path.parent / "checkpoints" / "best.pt"
        if _matches(summary, run_cfg, train_size, num_classes) and best.is_file():
            found.append(best.resolve())
    what = (f"completed CE run with dataset={run_cfg.dataset.name} backbone={run_cfg.backbone.name} "
            f"seed={run_cfg.seed}" + (f" train_size={train_size}" if train_size is not None else ""))
    if not found:
        raise ConfigError(f"method.teacher=auto: found no {what} (and its checkpoints/best.pt) in "
                          f"{root}/**/summary.json; train it first: {_train_command(run_cfg, root)}  (or set "
                          "method.teacher=<best.pt or run dir>, method.teacher_root=<dir to search>)")
    if len(found) > 1:
        raise ConfigError(f"method.teacher=auto: {len(found)} runs match ({what}) under {root}: "
                          f"{', '.join(str(p) for p in found)}; pick one with method.teacher=<path>")
    return found[0]


def checkpoint_file(teacher: str | Path) -> Path:
    """The checkpoint a method.teacher path names: the file itself, or a run dir's checkpoints/best.pt."""
    from dlb.config import ConfigError

    path = Path(teacher).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "best.pt"
    if not path.is_file():
        raise ConfigError(f"method.teacher={teacher}: no checkpoint at {path}; give a best.pt, a run dir, or auto")
    return path.resolve()


def load_teacher(path: Path, run_cfg, num_classes: int) -> nn.Module:
    """A frozen model of the run's backbone with the weights of a checkpoint ({"model": state_dict} or a state_dict)."""
    import timm

    import dlb.models  # noqa: F401  (registers the cifar_* backbones with timm)
    from dlb.config import ConfigError

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, or not a weights file
        raise ConfigError(f"method.teacher={path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    kwargs = dict(run_cfg.backbone.get("kwargs") or {})
    teacher = timm.create_model(run_cfg.backbone.name, num_classes=num_classes, **kwargs)
    try:
        teacher.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ConfigError(f"method.teacher={path}: not a {run_cfg.backbone.name} with {num_classes} classes "
                          f"({str(e).splitlines()[0]})") from None
    teacher.requires_grad_(False)
    return teacher.eval()


@register_method("tfkd_self")
class TfKDSelf(Method):
    @dataclass
    class Config:
        name: str = "tfkd_self"
        alpha: float = 0.95
        T: float = 6.0
        multiplier: float = 50.0
        kl_reduction: str = "official"  # official (element-wise mean) | batchmean
        teacher: str = "auto"  # auto | a checkpoint (best.pt, or any dict with "model") | a run dir
        teacher_root: Optional[str] = None  # where auto searches; null: see search_root

    @classmethod
    def validate_config(cls, cfg):
        from dlb.config import ConfigError

        _check_common(cfg, 0.95, 6, 50)
        if not cfg.teacher:
            raise ConfigError("method.teacher='': use auto, a checkpoint path or a run dir")

    def __init__(self, alpha: float = 0.95, T: float = 6.0, multiplier: float = 50.0, kl_reduction: str = "official",
                 teacher: str | nn.Module = "auto", teacher_root: str | None = None, num_classes: int | None = None,
                 train_size: int | None = None, run_cfg=None, out_dir=None):
        """`teacher` may also be a ready nn.Module (your own loop, tests); the trainer always passes a string."""
        super().__init__()
        self.alpha, self.T, self.multiplier, self.kl_reduction = float(alpha), float(T), float(multiplier), kl_reduction
        if isinstance(teacher, nn.Module):
            self.teacher_path = None
        elif run_cfg is None:
            raise ValueError("tfkd_self builds its teacher from the run config: pass run_cfg (the trainer does), or "
                             "pass teacher=<an nn.Module>")
        else:
            path = (find_teacher(run_cfg, out_dir, teacher_root, train_size, num_classes) if teacher == "auto"
                    else checkpoint_file(teacher))
            self.teacher_path = str(path)
            teacher = load_teacher(path, run_cfg, num_classes)
            if run_cfg.trainer.get("channels_last"):
                teacher = teacher.to(memory_format=torch.channels_last)
        teacher.requires_grad_(False)
        self.teacher = teacher.eval()  # a submodule: method.to(device) moves it; not method state (fixed weights)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the trainer calls method.train(); the teacher stays in eval mode (official train_kd)
        return self

    def training_step(self, model, batch):
        x = batch.views[0]
        logits = model(x)
        with torch.no_grad():
            teacher_logits = self.teacher(x).float()
        T = self.T
        kl = kl_div(F.log_softmax(logits / T, dim=1), F.softmax(teacher_logits / T, dim=1), self.kl_reduction)
        return logits, {"ce": (1 - self.alpha) * batch_ce(logits, batch),
                        "kd": self.alpha * T * T * self.multiplier * kl}

    def method_state(self):
        return {"teacher_path": self.teacher_path}  # for the record; the weights are the teacher checkpoint's

    def load_method_state(self, state, device=None):
        saved = state.get("teacher_path")
        if saved is not None and saved != self.teacher_path:
            warnings.warn(f"resuming with teacher {self.teacher_path}, but the run started with {saved}")


@register_method("tfkd_reg")
class TfKDReg(Method):
    @dataclass
    class Config:
        name: str = "tfkd_reg"
        alpha: float = 0.1
        T: float = 20.0
        multiplier: float = 100.0
        correct_prob: float = 0.99
        kl_reduction: str = "official"  # official (element-wise mean) | batchmean
        soften: str = "official"  # official: softmax(u/T) vs softmax(z) | clean: softmax(log u/T) vs softmax(z/T) x T^2

    @classmethod
    def validate_config(cls, cfg):
        from dlb.config import ConfigError

        _check_common(cfg, 0.1, 20, 100)
        if not 0 < cfg.correct_prob < 1:
            raise ConfigError(f"method.correct_prob={cfg.correct_prob}: must be in (0, 1) "
                              "(the official code uses 0.99)")
        if cfg.soften not in SOFTEN:
            raise ConfigError(f"method.soften={cfg.soften}: use official (softmax of the probabilities / T, student "
                              "unscaled) or clean (teacher log-probabilities and student both / T, times T^2)")

    def __init__(self, alpha: float = 0.1, T: float = 20.0, multiplier: float = 100.0, correct_prob: float = 0.99,
                 kl_reduction: str = "official", soften: str = "official"):
        super().__init__()
        self.alpha, self.T, self.multiplier = float(alpha), float(T), float(multiplier)
        self.correct_prob, self.kl_reduction, self.soften = float(correct_prob), kl_reduction, soften

    def virtual_teacher(self, batch, num_classes: int) -> torch.Tensor:
        """u: correct_prob on the label, the rest spread uniformly (lam-mixed under CutMix)."""
        onehot = onehot_targets(batch, num_classes)
        rest = (1 - self.correct_prob) / (num_classes - 1)
        return onehot * (self.correct_prob - rest) + rest

    def training_step(self, model, batch):
        logits = model(batch.views[0])
        u, T = self.virtual_teacher(batch, logits.shape[1]), self.T
        if self.soften == "official":
            kl = kl_div(F.log_softmax(logits, dim=1), F.softmax(u / T, dim=1), self.kl_reduction)
        else:
            kl = T * T * kl_div(F.log_softmax(logits / T, dim=1), F.softmax(u.log() / T, dim=1), self.kl_reduction)
        return logits, {"ce": (1 - self.alpha) * batch_ce(logits, batch), "kd": self.alpha * self.multiplier * kl}
