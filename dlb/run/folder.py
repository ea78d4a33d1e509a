"""The files of a run folder, defined once: written by the trainer, read by the report, the teacher search and the
demo.

  config.json        the resolved config this folder's run uses (written once the trainer's checks have passed)
  summary.json       Summary: status and results so far, rewritten at the start, after every epoch and at the end
  metrics.jsonl      one MetricsRow per finished epoch
  environment.json   versions, device, code commit
  train.log          the start-up line, progress and every epoch line
  .hydra/            the composed config and the command-line overrides
  checkpoints/       last.pt, prev.pt, best.pt
  noisy_labels.pt    under label noise: the labels trained on
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

CONFIG, SUMMARY, METRICS, ENVIRONMENT, LOG = "config.json", "summary.json", "metrics.jsonl", "environment.json", \
    "train.log"


@dataclass
class MetricsRow:
    """One epoch. `train_<term>` columns hold the method's loss terms and diagnostics (train_ce, train_kd,
    train_consistency, ...): `terms` here, flattened into the row."""
    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    train_time_s: float
    train_img_per_s: float
    train_images: int
    test_acc: float
    test_err: float
    test_nll: float
    test_ece: float
    test_n: int
    eval_time_s: float
    terms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        row = {k: v for k, v in dataclasses.asdict(self).items() if k != "terms"}
        return {**row, **{f"train_{k}": v for k, v in self.terms.items()}}


@dataclass
class Summary:
    """summary.json. Every field may be missing in folders of older versions (read as None)."""
    # `running` while training, `stopped` by Ctrl-C, `preempted` by SIGTERM/SIGUSR1 (the same command continues
    # both), `completed`, `diverged` (NaN/Inf loss), `failed` (a bug)
    status: str
    cell: str
    dataset: str
    backbone: str
    method: str
    seed: int
    epochs: int
    epochs_completed: int = 0
    steps: int = 0
    best_test_acc: Optional[float] = None  # best over epochs: what the official code reports
    best_test_err: Optional[float] = None
    best_epoch: Optional[int] = None
    last_test_acc: Optional[float] = None
    last_test_err: Optional[float] = None
    last_test_nll: Optional[float] = None
    last_test_ece: Optional[float] = None
    train_time_s: float = 0.0
    peak_memory_bytes: Optional[int] = None
    num_params: Optional[int] = None
    train_size: Optional[int] = None
    num_classes: Optional[int] = None
    data: Optional[dict] = None  # the data fingerprint (dlb.data.datasets.fingerprint)
    augment: str = "none"
    noise: str = "none"
    noise_rate: float = 0.0
    noise_seed: int = 0
    noise_rate_realised: float = 0.0
    method_info: dict = field(default_factory=dict)  # what the method reports about itself (tfkd_self: its teacher)
    world_size: int = 1
    global_batch: Optional[int] = None
    device: str = ""
    environment: dict = field(default_factory=dict)  # versions, device name, threads, code commit

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Summary":
        """Known fields of `d` (others ignored, missing ones None or their default). Raises ValueError when `d` is
        not a summary at all."""
        if not isinstance(d, dict):
            raise ValueError("summary is not a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in d.items() if k in names}
        for f in dataclasses.fields(cls):
            if f.name not in known and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                known[f.name] = None
        if "environment" not in d:  # older folders kept the environment keys at the top level
            known["environment"] = {k: v for k, v in d.items() if k not in names}
        return cls(**known)

    @classmethod
    def read(cls, run_dir: str | Path) -> "Summary":
        """Raises OSError, ValueError (json.JSONDecodeError included) when the file is missing or unreadable."""
        return cls.from_dict(json.loads((Path(run_dir) / SUMMARY).read_text()))


def write_json(path: Path, obj: Any) -> None:
    """Replace `path` atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """metrics.jsonl rows; a line cut short by a killed process is skipped (the rows before it are still good)."""
    rows = []
    for line in (Path(run_dir) / METRICS).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
