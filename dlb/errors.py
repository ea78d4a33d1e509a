"""The errors a user can fix, and the one-line warning. dlb.train prints each error as one line (the message names
the key or file and the fix) and exits with the code docs/reliability.md lists; nothing here imports the rest of the
package, so any module can raise them."""
import sys


def warn(message: str) -> None:
    """One line on stderr: what happened and what is done about it."""
    print(f"dlb: warning: {message}", file=sys.stderr, flush=True)


class ConfigError(ValueError):
    """A config value that is out of range or inconsistent; the message names the key and the fix."""


class DatasetError(Exception):
    """Missing/corrupt/malformed data. Message names the problem AND the exact command that fixes it."""


class ResumeError(RuntimeError):
    """The output dir holds a run that this command must not continue or overwrite."""


class OutputError(RuntimeError):
    """The output folder can't be written (full, read-only, no permission) or is in use by another run."""


class Preempted(Exception):
    """A stop signal ended the run at a step boundary after its position was saved: the same command continues it.
    SIGTERM/SIGUSR1 (preemption, time limit): exit code EXIT_PREEMPTED, for the requeue; Ctrl-C (`interrupted`): 130."""

    def __init__(self, message: str, interrupted: bool = False):
        super().__init__(message)
        self.interrupted = interrupted


class Diverged(FloatingPointError):
    """The loss (or the test NLL) became NaN/Inf. The diverged state is never saved: the last good checkpoint stays."""
