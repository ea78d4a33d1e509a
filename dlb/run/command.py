"""The command that continues a run, `python -m dlb.train <overrides> hydra.run.dir='<folder>'`: the folder (its `=`
and `,` are Hydra syntax) quoted for Hydra, every word for the shell. No torch: dlb.train uses it before torch loads."""
from __future__ import annotations

import re
import shlex
import shutil
import sys
from pathlib import Path


def hydra_quoted(text: str) -> str:
    """`text` as a quoted value of Hydra's override grammar: a quote, and the backslashes before a quote or at the
    end, escaped."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text) + "'"


def shell_quoted(word: str) -> str:
    """`word` for a POSIX shell: as it is when nothing in it is special, else in double quotes when nothing in it
    is special there either (hydra.run.dir='...' stays readable), else in single quotes."""
    if re.fullmatch(r"[\w@%+=:,./-]+", word, re.ASCII):
        return word
    return f'"{word}"' if not re.search(r'[$`"\\!]', word) else shlex.quote(word)


def quoted_override(key: str, value: str) -> str:
    """`key=value` with the value quoted for Hydra and the whole for the shell, as typed on a command line."""
    return shell_quoted(f"{key}={hydra_quoted(value)}")


def resume_command(folder: str | Path, overrides: list[str]) -> str:
    """The shell command that continues the run in `folder`, started with `overrides` (resume=true: the default)."""
    words = [shell_quoted(o) for o in overrides if o.split("=", 1)[0].lstrip("+~") != "resume"]
    python = "python" if shutil.which("python") == sys.executable else shell_quoted(sys.executable)
    return " ".join([python, "-m", "dlb.train", *words, quoted_override("hydra.run.dir", str(Path(folder).absolute()))])
