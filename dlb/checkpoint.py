"""Atomic checkpoints: write a temp file, fsync, then rename; the previous good checkpoint is kept as prev.pt
until the new last.pt is complete, and loading falls back to it when last.pt is truncated or corrupt."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch


def _write_synced(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def atomic_save(obj, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    _write_synced(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(state: dict, ckpt_dir: Path) -> Path:
    """Write ckpt_dir/last.pt; the one it replaces becomes prev.pt (kept until the new one is on disk)."""
    ckpt_dir = Path(ckpt_dir)
    last, prev = ckpt_dir / "last.pt", ckpt_dir / "prev.pt"
    tmp = ckpt_dir / "last.pt.tmp"
    _write_synced(state, tmp)
    if last.exists():
        os.replace(last, prev)
    os.replace(tmp, last)  # a crash between the two renames leaves prev.pt, which load_checkpoint falls back to
    return last


def load_checkpoint(ckpt_dir: Path) -> dict | None:
    """The newest readable checkpoint in ckpt_dir (last.pt, else prev.pt with a warning), or None if there is none."""
    ckpt_dir = Path(ckpt_dir)
    candidates = [p for p in (ckpt_dir / "last.pt", ckpt_dir / "prev.pt") if p.exists()]
    for i, path in enumerate(candidates):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or "epoch" not in state:
                raise ValueError("not a dlb checkpoint")
        except Exception as e:  # truncated write, disk corruption, foreign file
            later = candidates[i + 1 :]
            warnings.warn(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); "
                          + (f"falling back to {later[0]}" if later else "no older checkpoint to fall back to"))
            continue
        if i > 0:
            warnings.warn(f"resuming from the previous checkpoint {path}")
        return state
    return None
