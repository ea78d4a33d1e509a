"""Memory measurements: a run's peak memory, and the bytes autograd saves for backward in one step."""
from __future__ import annotations

import torch


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


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
