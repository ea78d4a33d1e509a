"""A run folder, defined once: RunFolder names, writes and reads every file in it, for every reader and writer."""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from dlb import metrics
from dlb.errors import warn
from dlb.run import checkpoint, identity


@dataclass
class Summary:
    """summary.json. Every field may be missing in folders of older versions (read as None or its default)."""
    # `running` while training, `stopped` by Ctrl-C, `preempted` by SIGTERM/SIGUSR1 (the same command continues
    # both), `completed`, `diverged` (NaN/Inf loss), `failed` (a bug)
    status: Optional[str] = None
    cell: Optional[str] = None
    dataset: Optional[str] = None
    backbone: Optional[str] = None
    method: Optional[str] = None
    seed: Optional[int] = None
    epochs: Optional[int] = None
    epochs_completed: int = 0
    steps: int = 0
    best_test_acc: Optional[float] = None  # best over epochs: what the official code reports
    best_test_err: Optional[float] = None
    best_epoch: Optional[int] = None
    # the last epoch's value of every metric of dlb.metrics.METRICS by name: `last_test_<name>` in summary.json
    last_test: dict = field(default_factory=dict)
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

    def __getattr__(self, name: str):  # summary.last_test_err: the field's value, None where not recorded
        if name.startswith("last_test_") and name != "last_test_":
            return self.__dict__.get("last_test", {}).get(name.removeprefix("last_test_"))
        raise AttributeError(name)

    def to_dict(self) -> dict:
        d = {}
        for k, v in asdict(self).items():  # last_test as its last_test_<name> fields, in its place
            d.update({f"last_test_{m.name}": v.get(m.name) for m in metrics.METRICS} if k == "last_test" else {k: v})
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Summary":
        """Known fields of `d` (others ignored). Raises ValueError when `d` is not a summary at all."""
        if not isinstance(d, dict):
            raise ValueError("summary is not a JSON object")
        names = {f.name for f in fields(cls)} - {"last_test"}
        known = {k: v for k, v in d.items() if k in names}
        known["last_test"] = {m.name: d.get(f"last_test_{m.name}") for m in metrics.METRICS}
        names |= {f"last_test_{m.name}" for m in metrics.METRICS}
        if "environment" not in d:  # older folders kept the environment keys at the top level
            known["environment"] = {k: v for k, v in d.items() if k not in names}
        return cls(**known)

    @classmethod
    def read(cls, run_dir: str | Path) -> "Summary":
        """Raises OSError, ValueError (json.JSONDecodeError included) when the file is missing or unreadable."""
        return cls.from_dict(json.loads(RunFolder(run_dir).summary.read_text()))


def write_json(path: Path, obj: Any) -> None:
    """Replace `path` atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


class RunFolder:
    """A run's output folder: the name and path of each of its files, and their writing and reading."""

    CONFIG = "config.json"  # the resolved config this folder's run uses (written once the trainer's checks have passed)
    SUMMARY = "summary.json"  # Summary: status and results so far, rewritten at the start, every epoch and the end
    # a row per finished epoch: epoch, lr, train_loss/acc/time_s/img_per_s/images, test_<metric> for every metric of
    # dlb.metrics.METRICS, test_n, eval_time_s, train_<term> for the method's loss terms
    METRICS = "metrics.jsonl"
    ENVIRONMENT, LOG = "environment.json", "train.log"  # versions, device, code commit; the start-up and epoch lines
    HYDRA, HYDRA_CONFIG, HYDRA_OVERRIDES = ".hydra", "config.yaml", "overrides.yaml"  # the composed config, overrides
    # last.pt (prev.pt: the one before it, until the new one is on disk), best.pt
    CHECKPOINTS, LAST, PREV, BEST = "checkpoints", "last.pt", "prev.pt", "best.pt"
    LOCK = ".lock"  # held by the run writing the folder (dlb.run.checkpoint.run_lock)
    NOISY_LABELS = "noisy_labels.pt"  # under label noise: the labels trained on
    WANDB_ID = "wandb_id.txt"  # logger=wandb: the W&B run this folder logs to, so a resumed run continues it

    def __init__(self, path: str | Path):
        self.path = Path(path)
        p, ckpt, hydra = self.path, self.path / self.CHECKPOINTS, self.path / self.HYDRA
        self.config, self.summary, self.metrics = p / self.CONFIG, p / self.SUMMARY, p / self.METRICS
        self.environment, self.log, self.lock_file = p / self.ENVIRONMENT, p / self.LOG, p / self.LOCK
        self.noisy_labels, self.wandb_id = p / self.NOISY_LABELS, p / self.WANDB_ID
        self.hydra_config, self.hydra_overrides = hydra / self.HYDRA_CONFIG, hydra / self.HYDRA_OVERRIDES
        self.checkpoints, self.last, self.prev, self.best = ckpt, ckpt / self.LAST, ckpt / self.PREV, ckpt / self.BEST
        self.loaded_from: Path | None = None  # the checkpoint load_checkpoint read

    def __str__(self) -> str:
        return str(self.path)

    # --- checkpoints (atomic writes: dlb.run.checkpoint)
    def lock(self):
        return checkpoint.run_lock(self.lock_file)

    def save_checkpoint(self, state: dict) -> None:
        """Write last.pt; the file it replaces becomes prev.pt (kept until the new one is on disk)."""
        checkpoint.atomic_save(state, self.last, previous=self.prev)

    def load_checkpoint(self) -> dict | None:
        """The newest readable checkpoint, last.pt else prev.pt (with a warning saying why), or None."""
        candidates = [p for p in (self.last, self.prev) if p.exists()]
        if candidates and candidates[0] == self.prev:  # killed between save_checkpoint's two renames
            warn(f"checkpoint {self.last} is missing (the run died while saving it); resuming from the previous "
                 f"checkpoint {self.prev}")
        for i, path in enumerate(candidates):
            try:
                state = checkpoint.load(path)
            except Exception as e:  # truncated write, disk corruption, foreign file
                later = candidates[i + 1 :]
                warn(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); "
                     + (f"falling back to {later[0]}" if later else "no older checkpoint to fall back to"))
                continue
            self.loaded_from = path
            return state
        return None

    def set_aside_unreadable_last(self) -> None:
        """After a load fell back to prev.pt: rename the unreadable last.pt to last.pt.corrupt-<time> (kept for
        inspection), so the next save's rotation keeps the good prev.pt instead of putting it under that name."""
        if self.loaded_from == self.prev and self.last.exists():
            aside = self.last.with_name(f"{self.last.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            self.last.replace(aside)
            warn(f"kept the unreadable {self.last} as {aside}")

    def has_checkpoints(self) -> bool:
        return any(self.checkpoints.glob("*.pt"))

    def save_best(self, state: dict) -> None:
        checkpoint.atomic_save(state, self.best)

    # --- a finished run, a refused one
    def completed(self, config: dict) -> dict | None:
        """summary.json of the run this folder holds if it completed `config`'s epochs with the same identity and
        data folder and left a readable checkpoint; else None and the trainer decides. Reads only."""
        try:
            summary, saved = json.loads(self.summary.read_text()), self.read_config()
            if summary.get("status") != "completed" or summary.get("epochs_completed") != config["trainer"]["epochs"]:
                return None
            if identity.differences(saved, config) or saved["dataset"].get("root") != config["dataset"].get("root"):
                return None  # (other data may hide behind another root: the trainer compares the fingerprints)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        for path in (self.last, self.prev, self.best):
            with contextlib.suppress(Exception):  # missing, truncated, corrupt, foreign: the next one
                checkpoint.load(path)
                return summary
        return None

    def remove_if_unused(self, keep: Path) -> None:
        """Remove the folders made for a refused command: this one if it holds only its lock file, then each parent
        below `keep` left empty."""
        if not self.path.is_dir() or any(p != self.lock_file for p in self.path.iterdir()):
            return
        self.lock_file.unlink(missing_ok=True)
        for folder in (self.path, *self.path.parents):
            if folder == keep or not folder.is_relative_to(keep):
                return
            try:
                folder.rmdir()
            except OSError:  # not empty: it holds something else
                return

    # --- the files describing the run
    def write_run_files(self, *, environment: dict, config: dict, cfg, overrides: list[str] | None,
                        noise_record: dict | None) -> None:
        """environment.json, config.json, .hydra/ and noisy_labels.pt, written once the run's checks have passed."""
        write_json(self.environment, environment)
        write_json(self.config, config)
        self.hydra_config.parent.mkdir(exist_ok=True)
        OmegaConf.save(cfg, self.hydra_config)
        if overrides is not None:
            OmegaConf.save(OmegaConf.create(list(overrides)), self.hydra_overrides)
        if noise_record is not None:
            checkpoint.atomic_save(noise_record, self.noisy_labels)

    def read_config(self) -> dict:
        return json.loads(self.config.read_text())

    def add_log_line(self, line: str) -> None:
        with open(self.log, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    # --- metrics.jsonl
    def start_metrics(self, rows: list[dict]) -> None:
        """Rewrite metrics.jsonl with `rows` (a resumed run's history: rows after its checkpoint never happened)."""
        with open(self.metrics, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    def add_metrics(self, row: dict) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict]:
        """metrics.jsonl rows; a line cut short by a killed process is skipped (the rows before it are still good)."""
        rows = []
        for line in self.metrics.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
        return [r for r in rows if isinstance(r, dict)]

