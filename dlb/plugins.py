"""Methods and datasets from your own files, outside this repository (README.md, "Extending"): DLB_PLUGINS holds
paths separated by ':' (os.pathsep), each a .py file or a folder whose .py files are all imported. The registries
import them once, after their own modules, so every command and child process (which inherits the variable) knows them.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from pathlib import Path

ENV = "DLB_PLUGINS"
_loaded = False


def paths() -> list[Path]:
    """The plugin files named by DLB_PLUGINS, in its order (a folder: its .py files by name)."""
    found = []
    for entry in filter(None, os.environ.get(ENV, "").split(os.pathsep)):
        path = Path(entry).expanduser()
        if path.is_dir():
            found += sorted(path.glob("*.py"))
        elif path.suffix == ".py" and path.is_file():
            found.append(path)
        else:
            _fail(f"{ENV}: {entry} is not a .py file or a folder; fix the path, or remove it from {ENV}")
    return found


def load() -> None:
    """Import every plugin file, once per process."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: a plugin imports the registries, which call load() again
    for path in paths():
        name = f"dlb_plugin_{path.stem}"  # a module of its own (dataclasses and pickle look classes up by module)
        if name in sys.modules:
            _fail(f"{ENV}: {path} and {sys.modules[name].__file__} have the same file name; rename one")
        spec = importlib.util.spec_from_file_location(name, path)
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
            line = f", line {frames[-1].lineno}" if frames else ""
            _fail(f"{ENV}: importing {path} failed ({type(exc).__name__}{line}: {exc}); fix that file, or remove it "
                  f"from {ENV}")


def _fail(message: str) -> None:
    # Plugins are imported while the package itself is imported, before any command can catch an error: so this is
    # the one place that reports it, as every command reports a bad input (one line, exit code 2).
    print(f"dlb: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    raise SystemExit(2)
