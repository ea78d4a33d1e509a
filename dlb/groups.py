"""The config groups a user picks from (dataset=, backbone=, method=, ...) and their options, read without importing
torch: `python -m dlb.train --help` and a mistyped option answer before the training stack loads.

A group's options are its YAML files in configs/<group>/; the `method` and `dataset` groups' are the names their
files register (`@register_method("<name>")` in dlb/methods/, `@register_dataset("<name>", ...)` in
dlb/data/datasets/, and in the files DLB_PLUGINS names), read from the source: importing them imports torch.
"""
from __future__ import annotations

import ast
import functools
import os
import re
from pathlib import Path

from dlb import CONFIGS, plugins

PACKAGE = Path(__file__).resolve().parent
# group -> (the decorator that registers an option, the package folder of the repo's own options)
REGISTERED = {"method": ("register_method", PACKAGE / "methods"),
              "dataset": ("register_dataset", PACKAGE / "data" / "datasets")}


def registered_names(group: str) -> list[str]:
    """Every `@<decorator>("<name>", ...)` of a registered group, in its package and the plugin files: the keys of
    its registry (the tests check they agree), without importing torch."""
    return list(_registered(group, os.environ.get(plugins.ENV, "")))


@functools.lru_cache(maxsize=None)
def _registered(group: str, plugin_paths: str) -> tuple[str, ...]:
    """Parsed once per process and DLB_PLUGINS value: every override check asks for the options again."""
    decorator, folder = REGISTERED[group]
    names = []
    for path in [*sorted(folder.glob("*.py")), *plugins.paths()]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                names += [d.args[0].value for d in node.decorator_list
                          if isinstance(d, ast.Call) and getattr(d.func, "id", None) == decorator
                          and d.args and isinstance(d.args[0], ast.Constant)]
    return tuple(sorted(names))


def group_options(group: str) -> list[str]:
    """The options of a config group: its YAML files in configs/<group>/ and, for a registered group, its names."""
    registered = registered_names(group) if group in REGISTERED else []
    return sorted({p.stem for p in (CONFIGS / group).glob("*.yaml")} | set(registered))


def is_group(name: str) -> bool:
    return bool(re.fullmatch(r"\w+(/\w+)*", name)) and bool(group_options(name))


def has_option(group: str, option: str) -> bool:
    """Whether `group=option` names a config: a YAML file (also in a subfolder: option `a/b`) or a registered name."""
    return (CONFIGS / group / f"{option}.yaml").is_file() or (group in REGISTERED and option in registered_names(group))
