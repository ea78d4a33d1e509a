"""Teacher-free KD (Yuan et al., CVPR 2020), as the official my_loss_function.py computes it: tfkd_self distils a
frozen CE-trained teacher of the same backbone (loss_kd_self), tfkd_reg a virtual teacher (loss_kd_regularization).
The official KL quirks are the defaults (kl_reduction, soften); formulas, defaults and sources: docs/methods.md."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from dlb.choice import Choice
from dlb.errors import ConfigError, warn
from dlb.methods.base import Cost, Method, batch_ce, log_probs, onehot_targets, register_method
from dlb.run.teacher import checkpoint_file, find_teacher, load_teacher


class KLReduction(Choice):
    """kl_reduction."""
    official = "official"  # nn.KLDivLoss()'s element-wise mean: sum / (B*K)
    batchmean = "batchmean"  # sum / B


class Soften(Choice):
    """tfkd_reg's soften."""
    official = "official"  # softmax(u/T) vs the unscaled student
    clean = "clean"  # softmax(log(u)/T) vs softmax(z/T), times T^2


def kl_div(log_q: torch.Tensor, p: torch.Tensor, reduction: str) -> torch.Tensor:
    """KL(p || q) from log q and p. official: nn.KLDivLoss()'s element-wise mean (sum / (B*K)); batchmean: sum / B.
    (Written as sum / count: F.kl_div(reduction="mean") computes the same but warns on every call.)"""
    return F.kl_div(log_q, p, reduction="sum") / (p.numel() if reduction == "official" else p.shape[0])


@register_method("tfkd_self")
class TfKDSelf(Method):
    needs_teacher = True
    order, color = 2, "C0"
    cost = Cost("1 + 1 teacher (no grad)",
                "yes: a trained CE model of the same backbone (here: random init, same cost)",
                "4P teacher weights (its no-grad activations are transient)", lambda A, P, N, K, B, img: 4 * P)

    @dataclass
    class Config:
        """Defaults: the Tf-KD repo's CIFAR-100 ResNet-18 self-teacher (resnet18_self_teacher/params.json). Tf-KD
        tuned these for that one network; here they are used for every backbone (its recipe too: docs/recipes.md)."""
        name: str = "tfkd_self"
        alpha: float = 0.95
        T: float = 6.0
        multiplier: float = 50.0
        kl_reduction: KLReduction = KLReduction.official
        teacher: str = "auto"  # auto | a checkpoint (best.pt, or any dict with "model") | a run dir
        teacher_root: Optional[str] = None  # where auto searches; null: see search_root
        ranges = {"alpha": "in [0, 1]", "T": "> 0", "multiplier": ">= 0"}

    @classmethod
    def validate_config(cls, cfg):
        super().validate_config(cfg)
        if not cfg.teacher:
            raise ConfigError("method.teacher='': use auto, a checkpoint path or a run dir")

    def __init__(self, num_classes: int | None = None, data: dict | None = None, run_cfg=None, out_dir=None,
                 **options):
        """`teacher` may also be a ready nn.Module (your own loop, tests); the trainer always passes a string."""
        super().__init__(**options)
        teacher = self.teacher
        if isinstance(teacher, nn.Module):
            self.teacher_path = None
        elif run_cfg is None:
            raise ValueError("tfkd_self builds its teacher from the run config: pass run_cfg (the trainer does), or "
                             "pass teacher=<an nn.Module>")
        else:
            path = (find_teacher(run_cfg, out_dir, self.teacher_root, data) if teacher == "auto"
                    else checkpoint_file(teacher))
            self.teacher_path = str(path)
            teacher = load_teacher(path, run_cfg, num_classes)
        teacher.requires_grad_(False)
        self.teacher = teacher.eval()  # a submodule: method.to(device) moves it; not method state (fixed weights)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the trainer calls method.train(); the teacher stays in eval mode (official train_kd)
        return self

    def info(self):
        return {"teacher": self.teacher_path}

    def training_step(self, model, batch):
        x = batch.views[0]
        logits = model(x)
        with torch.no_grad():
            teacher_logits = self.teacher(x).float()
        T = self.T
        kl = kl_div(log_probs(logits, T), F.softmax(teacher_logits / T, dim=1), self.kl_reduction)
        return logits, {"ce": (1 - self.alpha) * batch_ce(logits, batch),
                        "kd": self.alpha * T * T * self.multiplier * kl}

    def method_state(self):
        return {"teacher_path": self.teacher_path}  # for the record; the weights are the teacher checkpoint's

    def load_method_state(self, state, device=None):
        saved = state.get("teacher_path")
        if saved is not None and saved != self.teacher_path:
            warn(f"resuming with teacher {self.teacher_path}, but the run started with {saved}")


@register_method("tfkd_reg")
class TfKDReg(Method):
    order, color = 3, "C9"
    cost = Cost(teacher="no (virtual teacher)", memory="0 (B·K·4 virtual-teacher targets, transient)")

    @dataclass
    class Config:
        """Defaults: the Tf-KD repo's CIFAR-100 base_resnet18/params.json and correct_prob = 0.99 in
        my_loss_function.py, tuned for its ResNet-18 and used for every backbone, as tfkd_self's."""
        name: str = "tfkd_reg"
        alpha: float = 0.1
        T: float = 20.0
        multiplier: float = 100.0
        correct_prob: float = 0.99
        kl_reduction: KLReduction = KLReduction.official
        soften: Soften = Soften.official
        ranges = {"alpha": "in [0, 1]", "T": "> 0", "multiplier": ">= 0", "correct_prob": "in (0, 1)"}

    def training_step(self, model, batch):
        logits = model(batch.views[0])
        # the virtual teacher u: correct_prob on the label, the rest spread uniformly (lam-mixed under CutMix)
        rest, T = (1 - self.correct_prob) / (logits.shape[1] - 1), self.T
        u = onehot_targets(batch, logits.shape[1]) * (self.correct_prob - rest) + rest
        if self.soften == "official":
            kl = kl_div(log_probs(logits), F.softmax(u / T, dim=1), self.kl_reduction)
        else:
            kl = T * T * kl_div(log_probs(logits, T), F.softmax(u.log() / T, dim=1), self.kl_reduction)
        return logits, {"ce": (1 - self.alpha) * batch_ce(logits, batch), "kd": self.alpha * self.multiplier * kl}
