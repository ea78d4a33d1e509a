"""What keeps a run's folder trustworthy when the machine is not (docs/reliability.md): atomic writes (temp file,
fsync, rename; a failed write raises OutputError and the previous file stays), the run lock, stop signals."""
from __future__ import annotations

import contextlib
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

# Errors of the output folder that a user can fix (space, permissions, a read-only mount), each with its fix: one
# line, no traceback.
WRITE_FIXES = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space", errno.EACCES: "make it writable",
               errno.EPERM: "make it writable", errno.EROFS: "make it writable"}


def write_error(path: Path, e: OSError) -> OutputError:
    """The one-line message for a failed write of `path`, naming the fix."""
    return OutputError(f"cannot write {path}: {e.strerror or e}; {WRITE_FIXES.get(e.errno, 'check the disk')}, or "
                       "pick another output dir with hydra.run.dir=<dir> (the previous checkpoint is kept)")


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


def atomic_save(obj, path: Path, previous: Path | None = None) -> None:
    """Replace `path` with `obj` once it is on disk; `previous`: where the replaced file goes (kept until then)."""
    tmp = path.with_name(path.name + ".tmp")
    _write_synced(obj, tmp)
    if previous is not None and path.exists():
        os.replace(path, previous)
    os.replace(tmp, path)  # a crash between the two renames leaves `previous`, which RunFolder.load_checkpoint takes


def load(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "epoch" not in state:
        raise ValueError("not a dlb checkpoint")
    return state


def locked(path: Path, holder: str):
    """`path` opened under an exclusive flock, with `holder` written in it for people looking; None while another
    process holds it. Closing the file releases the lock, and so does the process's death, even by SIGKILL."""
    f = open(path, "a+")  # "a+": never truncate what the holder wrote before we hold the lock
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    except OSError as e:  # a file system without flock (some network mounts): run, but say it's unguarded
        warn(f"cannot lock {path} ({e.strerror}); nothing stops a second run from using it")
    f.truncate(0)  # (writes in "a+" go to the end, now the start)
    f.write(f"{holder}\n")
    f.flush()
    return f


@contextlib.contextmanager
def run_lock(path: Path):
    """Rank 0 holds the folder's lock file `path` for the run's life: a second run stops at once, naming the holder."""
    if int(os.environ.get("RANK", "0")) != 0:  # DDP: the other ranks belong to rank 0's run
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = locked(path, f"pid {os.getpid()} on {socket.gethostname()}")
    except OSError as e:
        raise write_error(path, e) from None
    if f is None:
        holder = path.read_text().strip() or "another process"
        raise OutputError(f"{path.parent} is in use by another run ({holder}); wait for it to finish, or pick another "
                          "output dir with hydra.run.dir=<dir>")
    with f:  # closing releases the flock; the file stays (removing it would race a new holder)
        yield


class StopSignals:
    """SIGTERM, SIGUSR1 (SLURM's time limit or preemption) and Ctrl-C only set `received`: the trainer saves at the
    next step boundary and stops; a second Ctrl-C stops at once. SIGUSR2 is left to submitit's requeue."""

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
        """Call the handler the received signal displaced (submitit's logger or requeue), once everything is saved."""
        prev = self._previous.get(self.received)
        if callable(prev):
            prev(self.received, None)

    def restore(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
