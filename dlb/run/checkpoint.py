"""What keeps a run's folder trustworthy when the machine is not: atomic writes (a temp file, fsync, then rename; a
failed write raises OutputError and leaves the previous file as it was), the run lock, stop signals. RunFolder
keeps prev.pt until a new last.pt is complete and falls back to it when last.pt is unreadable.
"""
from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import sys
import threading
from pathlib import Path

import torch

from dlb.errors import OutputError, warn

# Errors of the output folder that a user can fix (space, permissions, a read-only mount): one line, no traceback.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def write_error(path: Path, e: OSError) -> OutputError:
    """The one-line message for a failed write of `path`, naming the fix."""
    fix = ("free some space" if e.errno in (errno.ENOSPC, errno.EDQUOT)
           else "make it writable" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "check the disk")
    return OutputError(f"cannot write {path}: {e.strerror or e}; {fix}, or pick another output dir with "
                       "hydra.run.dir=<dir> (the previous checkpoint is kept)")


def _write_synced(obj, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        path.unlink(missing_ok=True)  # a partial temp file is useless; the file it was to replace is untouched
        raise write_error(path, e) from None


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    _write_synced(obj, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "epoch" not in state:
        raise ValueError("not a dlb checkpoint")
    return state


def readable(path: Path) -> bool:
    """Whether `path` holds a checkpoint RunFolder.load_checkpoint would take (read quietly)."""
    try:
        load(path)
        return True
    except Exception:  # missing, truncated, corrupt, foreign
        return False


class RunLock:
    """An exclusive flock on a run folder's lock file for the life of a run (rank 0's), so two processes never write
    one folder; the kernel drops it when the process dies, even by SIGKILL. The pid and host serve the message."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = None

    def __enter__(self) -> "RunLock":
        if int(os.environ.get("RANK", "0")) != 0:  # DDP: the other ranks belong to rank 0's run
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")  # "a+": never truncate what the holder wrote before we hold the lock
        except OSError as e:
            raise write_error(self.path, e) from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise OutputError(f"{self.path.parent} is in use by another run ({holder}); wait for it to finish, or "
                              "pick another output dir with hydra.run.dir=<dir>") from None
        except OSError as e:  # a file system without flock (some network mounts): run, but say it's unguarded
            warn(f"cannot lock {self.path} ({e.strerror}); nothing stops a second run from writing here")
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the flock; the file stays (removing it would race a new holder)
            self._file = None


class StopSignals:
    """SIGTERM, SIGUSR1 (SLURM's time limit or preemption) and Ctrl-C only set `received`; the trainer saves at the
    next step boundary and stops. A second Ctrl-C stops at once (KeyboardInterrupt; the last complete checkpoint
    survives). SIGUSR2 is left to hydra-submitit-launcher's requeue. `restore()` puts the earlier handlers back, and
    `chain()` calls the received signal's one once everything is saved (submitit's logger or requeue)."""

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only; a run in a thread can't be told to stop
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is None or signal.getsignal(sig) is signal.SIG_IGN:
                continue  # whoever started us chose to ignore it
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: now
        if signum == signal.SIGINT:
            print("\nCtrl-C: stopping at the next step and saving it (press Ctrl-C again to stop at once, from the "
                  "last checkpoint)", file=sys.stderr, flush=True)
        self.received = signum  # nothing else here: the loop may be inside a kernel or a file write

    @property
    def interrupted(self) -> bool:
        """Stopped by Ctrl-C rather than by a scheduler."""
        return self.received == signal.SIGINT

    @property
    def name(self) -> str:
        if self.received is None:
            return "a stop signal"
        return "Ctrl-C" if self.received == signal.SIGINT else signal.Signals(self.received).name

    def chain(self) -> None:
        prev = self._previous.get(self.received)
        if callable(prev):
            prev(self.received, None)

    def restore(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
