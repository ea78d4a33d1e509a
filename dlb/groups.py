"""The config groups a user picks from (dataset=, backbone=, method=, ...) and their options, read without importing
torch: `python -m dlb.train --help` and a mistyped option answer before the training stack loads.

A group's options are its YAML files in configs/<group>/; the `method` group's are the names the files in
dlb/methods/ register with `@register_method("<name>")`, read from their source (importing them imports torch).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

from dlb import CONFIGS

METHODS_DIR = Path(__file__).resolve().parent / "methods"


def method_names() -> list[str]:
    """Every `@register_method("<name>")` in dlb/methods/*.py: the registry's keys, without importing torch."""
    names = []
    for path in sorted(METHODS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                names += [d.args[0].value for d in node.decorator_list
                          if isinstance(d, ast.Call) and getattr(d.func, "id", None) == "register_method"
                          and d.args and isinstance(d.args[0], ast.Constant)]
    return sorted(names)


def group_options(group: str) -> list[str]:
    """The options of a config group: its YAML files in configs/<group>/, and for `method` the registered methods."""
    return sorted({p.stem for p in (CONFIGS / group).glob("*.yaml")} | set(method_names() if group == "method" else ()))


def is_group(name: str) -> bool:
    return bool(re.fullmatch(r"\w+(/\w+)*", name)) and bool(group_options(name))


def has_option(group: str, option: str) -> bool:
    """Whether `group=option` names a config: a YAML file (also in a subfolder: option `a/b`) or a method."""
    return (CONFIGS / group / f"{option}.yaml").is_file() or (group == "method" and option in method_names())
