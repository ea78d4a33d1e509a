"""Hydra entry point: `python -m dlb.train dataset=cifar100 backbone=resnet32 method=dlb` (also `dlb-train`).

Exit codes (docs/reliability.md): 0 done, 1 a bug, 2 a user error (one line), 3 diverged, 75 stopped by SIGTERM or
SIGUSR1, 130 by Ctrl-C. `--help` and every config error are answered before torch is imported (dlb/groups.py).
"""
from __future__ import annotations

import difflib
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, InterpolationResolutionError,
                              OmegaConfBaseException)

from dlb import CONFIGS, plugins
from dlb.errors import ConfigError, DatasetError, Diverged, OutputError, Preempted, ResumeError
from dlb.groups import REGISTERED, group_options, has_option, is_group
from dlb.run.command import quoted_override

EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_PREEMPTED, EXIT_INTERRUPTED = 2, 3, 75, 130


class JobFailed(Exception):
    """A multirun job's user error or divergence: already printed; the sweep goes on and exits with `code`."""

    def __init__(self, code: int, line: str):
        super().__init__(line)
        self.code = code

    def __reduce__(self):  # a launcher's worker process sends it back pickled
        return JobFailed, (self.code, str(self))


# --- one line per user error ----------------------------------------------------------------------------------
def _group_options(group: str) -> str:
    return ", ".join(group_options(group)) or f"the files in configs/{group}/"


def _config_groups() -> str:
    """The user-facing config groups and their options, one line each, for `--help` (configs/hydra/help/dlb.yaml)."""
    groups = sorted({str(d.relative_to(CONFIGS)) for d in CONFIGS.rglob("*") if d.is_dir() and any(d.glob("*.yaml"))}
                    | set(REGISTERED))  # (their options are registered by files, not YAML)
    return "\n".join(f"{g}: {_group_options(g)}" for g in groups if g != "hydra" and not g.startswith("hydra/"))


OmegaConf.register_new_resolver("dlb_config_groups", _config_groups, replace=True)


def _override_for(key: str, overrides: Sequence[str]) -> str:
    """The override the user typed for `key` (the first: Hydra stops at the first it can't apply), else the key."""
    return next((o for o in overrides if o.split("=", 1)[0].lstrip("+~") == key), key)


def _culprit(overrides: Sequence[str]) -> str | None:
    """"<override>: <why>" for the first override Hydra can't take: unparsable, a config group given anything but an
    option name (Hydra answers those with a bare ValueError or TypeError that doesn't say which override), or an
    option that no config file or method has. Reads no schema, so it runs before torch is imported."""
    parser = OverridesParser.create()
    for o in overrides:
        try:
            parsed = parser.parse_override(o)
        except HydraException as e:  # OverrideParseException, or the grammar's own HydraException
            key, _, value = o.partition("=")  # (a run folder's name holds = and ,: quoted, it is one value)
            return (f"{o}: not a valid override ({str(e).splitlines()[0]}); quote a value with special characters "
                    f"for Hydra and the shell: {quoted_override(key, value)}")
        key = parsed.key_or_group
        if not is_group(key) or parsed.is_delete() or key.split("/")[0] in ("hydra", "schema"):
            continue
        if not parsed.is_sweep_override() and not isinstance(parsed.value(), str):
            return f"{o}: {key} is a config group; use one of {_group_options(key)}"
        value = parsed.value()
        for option in value.list if isinstance(value, ChoiceSweep) else [value]:
            if isinstance(option, str) and not has_option(key, option):
                return f"{o}: no {key} config named {option!r}; use one of {_group_options(key)}"
    return None


def error_line(e: BaseException, overrides: Sequence[str] = ()) -> str:
    """One line for an error of the command line or the config, naming the key (as typed) and the fix."""
    text = str(e).strip()
    first = (text.splitlines() or [type(e).__name__])[0]
    if isinstance(e, ConfigError):
        return " ".join(text.split())
    if isinstance(e, MissingConfigException):
        parts = (e.missing_cfg_file or "").split("/")
        # The longest leading part that is a config group folder: option names may hold slashes (noise=/tmp/x).
        if n := next((i for i in range(len(parts) - 1, 0, -1) if is_group("/".join(parts[:i]))), 0):
            group, option = "/".join(parts[:n]), "/".join(parts[n:])
            return f"{_override_for(group, overrides)}: no {group} config named {option!r}; use one of " \
                   f"{_group_options(group)}"
    if m := re.search(r"An item is already at '([^']+)'", text):
        return f"{_override_for(m.group(1), overrides)}: {m.group(1)} exists already; set it without the +"
    oc = e if isinstance(e, OmegaConfBaseException) else e.__cause__
    if isinstance(oc, OmegaConfBaseException) and oc.full_key:
        key, what = oc.full_key, (str(oc).strip().splitlines() or [""])[0]
        m = re.match(r"Error merging override (.+)", first)  # Hydra names the very override that failed
        typed = m.group(1) if m else _override_for(key, overrides)
        if isinstance(oc, (ConfigAttributeError, ConfigKeyError)) and " not in " in what:
            siblings = list(oc.parent_node.keys()) if oc.parent_node is not None else []
            close = difflib.get_close_matches(str(oc.key), [str(k) for k in siblings], n=1)
            parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
            hint = (f"did you mean {parent}{close[0]}?" if close
                    else f"{parent.rstrip('.') or 'the config'} has {', '.join(map(str, siblings))}")
            return f"{typed}: no such key; {hint} (`python -m dlb.train --cfg job` prints every key)"
        if choices := re.match(r"Invalid value .*, expected one of \[(.*)\]$", what):  # a Choice field (dlb/choice.py)
            return f"{typed}: not an option of {key}; use one of {choices.group(1)}"
        if isinstance(oc, InterpolationResolutionError):
            return f"{typed}: {what}; fix the ${{...}} it refers to, or set {key}=<value> directly"
        return f"{typed}: {what}; give a value of the key's type (`python -m dlb.train --cfg job` shows the defaults)"
    return _culprit(overrides) or f"{first} (overrides: {' '.join(overrides) or 'none'})"


def check(cfg: DictConfig) -> None:
    """validate, and resolve every interpolation now: a bad ${...} fails here, not in the middle of a run."""
    from dlb.config import to_container, validate

    try:
        validate(cfg)
        to_container(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(error_line(e)) from None


def load_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The validated config `python -m dlb.train <overrides>` runs with. Anything wrong with the overrides raises
    ConfigError whose message is the one line the command prints."""
    if (culprit := _culprit(overrides)) is not None:
        raise ConfigError(culprit)
    from dlb.config import compose

    try:
        cfg = compose(overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as e:  # Hydra raises ValueError for some overrides
        raise ConfigError(error_line(e, overrides)) from None
    check(cfg)
    return cfg


# --- the command ------------------------------------------------------------------------------------------------
def _stop(code: int, e: BaseException) -> None:
    label = {EXIT_DIVERGED: "diverged", EXIT_PREEMPTED: "stopped", EXIT_INTERRUPTED: "stopped"}.get(code, "error")
    line = " ".join(str(e).split())
    print(f"dlb: {label}: {line}", file=sys.stderr, flush=True)
    if code not in (EXIT_PREEMPTED, EXIT_INTERRUPTED) and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise JobFailed(code, line) from None  # Hydra records the job as failed and runs the sweep's other jobs
    sys.exit(code)


# An absolute config path: found the same whether this runs as `python -m dlb.train`, the dlb-train script or main()
@hydra.main(version_base="1.3", config_path=str(CONFIGS), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    try:
        check(cfg)
        from dlb.trainer import run  # the training stack (torch), once the config is known to be good

        summary = run(cfg, HydraConfig.get().runtime.output_dir, list(HydraConfig.get().overrides.task))
    except (ConfigError, DatasetError, ResumeError, OutputError) as e:
        # A refused job leaves no folder behind: Hydra makes the job's folder (and its parents) before the job runs.
        # Only folders left empty go, up to the sweep's folder (or the working directory, or the run folder's parent).
        from dlb.run.folder import RunFolder

        hc = HydraConfig.get()
        folder = Path(hc.runtime.output_dir)
        keep = Path(hc.sweep.dir).absolute() if hc.mode == RunMode.MULTIRUN else Path.cwd()
        RunFolder(folder).remove_if_unused(keep if folder.is_relative_to(keep) else folder.parent)
        _stop(EXIT_USER_ERROR, e)
    except OSError as e:
        from dlb.run.checkpoint import WRITE_FIXES

        if e.errno not in WRITE_FIXES:
            raise
        _stop(EXIT_USER_ERROR, OutputError(f"cannot write {e.filename}: {e.strerror}; free some space or make it "
                                           "writable, or pick another output dir with hydra.run.dir=<dir>"))
    except Diverged as e:
        _stop(EXIT_DIVERGED, e)
    except Preempted as e:
        _stop(EXIT_INTERRUPTED if e.interrupted else EXIT_PREEMPTED, e)
    except KeyboardInterrupt:
        _stop(EXIT_INTERRUPTED, Preempted(f"Ctrl-C: stopped at once; {HydraConfig.get().runtime.output_dir} keeps "
                                          "its last checkpoint: run the same command again to continue from it",
                                          interrupted=True))
    return summary["best_test_err"]  # what a Hydra sweeper would minimise


def main() -> None:
    """`python -m dlb.train` and `dlb-train`: Hydra's command line (overrides, --cfg, -m, --help), except that an
    error of the command line is one line and exit code 2 instead of Hydra's block of text."""
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"  # the user asked for tracebacks: let them through
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then raises its errors to us instead of printing them
    if {"--help", "-h"} & set(sys.argv[1:]):  # rendered here: Hydra's own --help composes the whole config first
        help_cfg = OmegaConf.load(CONFIGS / "hydra" / "help" / "dlb.yaml")
        print(OmegaConf.create({"hydra": {"help": help_cfg}}).hydra.help.template.rstrip())
        return
    overrides = [a for a in sys.argv[1:] if not a.startswith("-") and ("=" in a or a.startswith("~"))]
    try:
        if not full_error:  # a single run is checked whole, before Hydra makes its folder: a refused one leaves none
            if not any(a.startswith(("-", "hydra.mode=")) for a in sys.argv[1:]):
                load_config(overrides)
            elif (culprit := _culprit(overrides)) is not None:
                raise ConfigError(culprit)
        from dlb.config import register_configs  # the structured schema (read without torch: dlb/groups.py)

        register_configs()
        plugins.load()  # the checks read DLB_PLUGINS files' source; now they run: a broken one is one line, exit code 2
        hydra_main()
    except JobFailed as e:
        sys.exit(e.code)
    except (HydraException, OmegaConfBaseException, ValueError) as e:  # (ConfigError is a ValueError)
        # Raised before any job ran (checking or composing the config, parsing overrides): the command line is at
        # fault. Errors inside a job are caught in hydra_main; what still escapes from there is a bug (below).
        if full_error or _from_a_job(e):
            raise
        print(f"dlb: error: {error_line(e, overrides)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except OSError as e:  # Hydra creating the output dir
        from dlb.run.checkpoint import WRITE_FIXES

        if full_error or _from_a_job(e) or e.errno not in WRITE_FIXES:
            raise
        print(f"dlb: error: cannot write {e.filename}: {e.strerror}; pick another output dir with "
              "hydra.run.dir=<dir>", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _from_a_job(e: BaseException) -> bool:
    """Whether `e` was raised by code running inside a job (the task function), i.e. is not a command-line error."""
    return any(frame.f_code is hydra_main.__wrapped__.__code__ for frame, _ in traceback.walk_tb(e.__traceback__))


if __name__ == "__main__":
    main()
