"""DLB: self-distillation from the last mini-batch (Shen et al., CVPR 2022), as the official dlb.py does it.

  loss = CE([zhat_t; z_t], [y_{t-1}; y_t]) + alpha * T^2 * KL(softmax(sg(z_{t-1})/T) || softmax(zhat_t/T))
with z_t = f(view0(S_t)) and zhat_t = f(view1(S_{t-1})) two separate forward calls (BatchNorm statistics per half),
and z_{t-1} the detached logits of view0(S_{t-1}) one step earlier (the cache carries over epoch boundaries). Details
and backward=split, whose caller must zero the gradients *before* training_step: docs/methods.md. Usable in any
PyTorch loop, see README ("DLB in your own training loop")."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlb.choice import Choice
from dlb.methods.base import Cost, Method, batch_ce, log_probs, mixed_ce, register_method


class Backward(Choice):
    """method.backward."""
    joint = "joint"  # one backward over both forwards, as dlb.py
    split = "split"  # the current half's CE backpropagated before the last batch's forward (see the module doc)


def last_batch_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), batchmean. The teacher side gets no gradient."""
    log_q = log_probs(student_logits, T)
    p = F.softmax(teacher_logits.detach() / T, dim=1)
    return F.kl_div(log_q, p, reduction="batchmean") * (T * T)


def _targets(b: dict):
    """(y, y_mix, lam) of a batch's or the cached previous batch's fields; an unmixed half is its own partner, lam=1."""
    y = b["y"]
    if b.get("y_mix") is None:
        return y, y, torch.ones(y.shape, device=y.device)
    return y, b["y_mix"], b["lam"].to(torch.float32)


@register_method("dlb")
class DLB(Method):
    num_views = 2
    order, color = 8, "C3"
    compared_with = ("ce", "lsr", "tfkd_self", "tfkd_reg", "pskd", "cskd")
    cost = Cost("1 + 1 (last batch's view, separate call)", "no",
                "A (second forward kept for backward) + last-batch cache B·(img + 8 + K·4)",
                lambda A, P, N, K, B, img: A + B * (img + 8 + 4 * K))
    cost_variants = {"backward=split": Cost(
        "1 + 1 (separate calls, current half backpropagated first)", "no",
        "last-batch cache B·(img + 8 + K·4): one forward held for backward at a time",
        lambda A, P, N, K, B, img: B * (img + 8 + 4 * K))}

    @dataclass
    class Config:
        """Defaults: the paper and the official dlb.py (T = 3, alpha = 1)."""
        name: str = "dlb"
        T: float = 3.0
        alpha: float = 1.0
        backward: Backward = Backward.joint  # joint | split (see Backward)
        ranges = {"T": "> 0", "alpha": ">= 0"}

    speed_only_options = ("backward",)  # split: the same gradient with half the activation memory
    prev: dict[str, torch.Tensor] | None = None  # view1 images, labels and detached logits of S_{t-1}

    @classmethod
    def rules_out(cls, cfg):
        if cfg.get("backward") != "split":
            return {}
        # split's first backward completes a CUDA-graph tree generation; the second forward then starts a new one,
        # which frees the gradients that backward wrote into the graph pool (pytorch#169545)
        return {"cuda_graphs": ("method.backward", "split", "CUDA graphs (trainer.compile=reduce-overhead) would free "
                                "the gradients of split's first backward; use trainer.compile=default, or "
                                "method.backward=joint with CUDA graphs")}

    def training_step(self, model, batch):
        x0, x1 = batch.views[0], batch.views[1]
        prev = self.prev
        if prev is None:
            logits = model(x0)
            losses = {"ce": batch_ce(logits, batch)}
        elif self.backward == "split" and torch.is_grad_enabled():
            n = prev["y"].shape[0] + batch.y.shape[0]  # the joint CE's mean is over both halves
            # DDP: accumulate this backward locally; the step's final backward all-reduces the sum once
            with model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext():
                logits = model(x0)
                ce_current = mixed_ce(logits, batch.y, batch.y_mix, batch.lam, reduction="sum") / n
                with torch.autocast(logits.device.type, enabled=False):  # backward outside autocast, as torch advises
                    ce_current.backward()  # frees this forward's activations before the second forward
            prev_logits_view1 = model(prev["x1"])
            ce_prev = mixed_ce(prev_logits_view1, prev["y"], prev.get("y_mix"), prev.get("lam"), reduction="sum")
            ce = ce_prev / n + ce_current.detach()
        else:
            logits = model(x0)
            prev_logits_view1 = model(prev["x1"])
            both = torch.cat([prev_logits_view1, logits])
            if batch.y_mix is None and "y_mix" not in prev:
                ce = F.cross_entropy(both, torch.cat([prev["y"], batch.y]))
            else:  # CutMix: each half keeps its own partner labels and mixing weights
                ce = mixed_ce(both, *(torch.cat([a, b]) for a, b in zip(_targets(prev), _targets(vars(batch)))))
        if prev is not None:
            losses = {"ce": ce, "kd": self.alpha * last_batch_kd(prev_logits_view1, prev["logits"], self.T)}
            # The paper's consistency analysis: do last step's and this step's predictions of S_{t-1} agree?
            self.step_metrics = {"consistency": (prev_logits_view1.detach().argmax(1)
                                                 == prev["logits"].argmax(1)).float().mean()}
        # Keep S_t for the next step. Float logits: under bf16 autocast the target stays full precision.
        self.prev = {"x1": x1, "y": batch.y, "logits": logits.detach().float()}
        if batch.y_mix is not None:
            self.prev.update(y_mix=batch.y_mix, lam=batch.lam)
        return logits, losses

    def method_state(self):
        return {"prev": None if self.prev is None else {k: v.cpu() for k, v in self.prev.items()}}

    def load_method_state(self, state, device=None):
        prev = state.get("prev")
        self.prev = None if prev is None else {k: v.to(device) if device else v for k, v in prev.items()}
