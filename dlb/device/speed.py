"""The speed settings of a run (docs/performance.md): resolved once per device, none of them changes what a run computes
beyond float rounding (trainer.faithful pins the official numerics)."""
from __future__ import annotations

import ctypes.util
from collections.abc import Collection
from dataclasses import dataclass

import torch


# glibc's mallopt (malloc.h) M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD: docs/performance.md, "Kept heap"
KEEP_HEAP = ((-3, 32 << 20), (-1, 1 << 30), (-2, 256 << 20))


def keep_heap() -> bool:
    """trainer.keep_heap (process-wide): glibc keeps freed heap for the next step; False without mallopt."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(key, value) == 1 for key, value in KEEP_HEAP)


def build_optimizer(o, params, fused: bool) -> torch.optim.SGD:
    """SGD of the official recipe: torch's fused kernel (Speed.fused; on CPU equal to the loop up to a rare 1-ulp
    rounding), else the plain per-parameter loop the official code runs."""
    kind = dict(fused=True) if fused else dict(foreach=False, fused=False)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay,
                           **kind)


# trainer.compile=auto on CPU compiles only runs of at least this many optimizer steps: a cold compile of resnet32
# is repaid after about 6,100 (CE) / 760 (DLB) steps (results/bench/cpu_resnet32_b64_compile_cost.md).
CPU_COMPILE_MIN_STEPS = 10_000
# trainer.eval_batch_size=auto: on CPU, batches that stay in cache (results/bench/cpu_eval_batch.md: 128 evaluates
# resnet8/resnet32 about 2x faster than 1000); on CUDA, large batches keep the GPU busy.
EVAL_BATCH = {"cpu": 128, "cuda": 1000}


@dataclass(frozen=True)
class Speed:
    """The speed settings a run uses, resolved once at start from trainer.*/optim.fused and the device."""
    channels_last: bool
    fused: bool
    compile: str  # a CompileMode other than auto
    bf16: bool = False
    faithful: bool = False
    eval_batch_size: int = EVAL_BATCH["cuda"]
    keep_heap: bool = False

    def describe(self) -> str:
        heap = ", heap kept" if self.keep_heap else ""
        if self.faithful:
            return f"faithful (fp32, eager, contiguous, plain SGD), eval batch {self.eval_batch_size}{heap}"
        return ", ".join(["bf16 autocast" if self.bf16 else "fp32",
                          "channels_last" if self.channels_last else "contiguous",
                          "fused SGD" if self.fused else "plain SGD",
                          "eager" if self.compile == "none" else f"compile {self.compile}",
                          f"eval batch {self.eval_batch_size}"]) + heap


def resolve_speed(t, o, device: torch.device, steps: int, ruled_out: Collection[str] = ()) -> Speed:
    """The speed settings for this device, `steps` optimizer steps and the features the method rules out
    (Method.rules_out): auto as docs/performance.md's table says; faithful: the official code's numerics."""
    cuda = device.type == "cuda"
    eval_batch = t.eval_batch_size if t.eval_batch_size != "auto" else EVAL_BATCH["cuda" if cuda else "cpu"]
    # (the heap and the evaluation batch change no number: faithful keeps them; eval rounding aside)
    heap = device.type == "cpu" if t.get("keep_heap", "auto") == "auto" else bool(t.keep_heap)
    if t.get("faithful"):
        return Speed(channels_last=False, fused=False, compile="none", faithful=True, eval_batch_size=eval_batch,
                     keep_heap=heap)
    channels_last = (cuda or device.type == "cpu") if t.channels_last == "auto" else bool(t.channels_last)
    fused = (cuda or device.type == "cpu") if o.fused == "auto" else bool(o.fused)
    compile = str(t.compile)
    if compile == "auto" and cuda:
        compile = "default" if "cuda_graphs" in ruled_out else "reduce-overhead"
    elif compile == "auto":
        compile = "default" if device.type == "cpu" and steps >= CPU_COMPILE_MIN_STEPS else "none"
    return Speed(channels_last=channels_last, fused=fused, compile=compile, bf16=t.precision == "bf16",
                 eval_batch_size=eval_batch, keep_heap=heap)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 maths runs in hardware here (CUDA, or a CPU with AMX/AVX512-BF16); else it is slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def compile_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """trainer.compile: torch.compile of the model, never of a method's step (docs/performance.md); reduce-overhead's
    CUDA graphs reuse their output buffers, and DLB keeps last step's logits: outputs are copied out."""
    if mode == "none":
        return model
    net = torch.compile(model, mode=None if mode == "default" else str(mode), dynamic=False)
    if mode == "reduce-overhead":
        net.register_forward_hook(lambda module, args, out: out.clone())
    return net


