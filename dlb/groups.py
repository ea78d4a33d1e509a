"""The config groups a user picks from (dataset=, backbone=, method=, ...), their options, and what the config checks
need of each registered option, all read from the source without importing torch: `python -m dlb.train --help` and
any config error answer before the training stack loads.
"""
from __future__ import annotations

import ast
import builtins
import copy
import dis
import functools
import os
import re
import sys
import types
from pathlib import Path
from typing import Any

from dlb import CONFIGS, plugins

PACKAGE = Path(__file__).resolve().parent
# group -> (the decorator that registers an option, the package folder of the repo's own options)
REGISTERED = {"method": ("register_method", PACKAGE / "methods"),
              "dataset": ("register_dataset", PACKAGE / "data" / "datasets")}
# What the config checks (dlb/config.py) and run identities read of a method class (dlb/methods/base.py says what
# each is): a method's stand-in holds only these.
SCHEMA = ("Config", "validate_config", "rules_out", "num_views", "speed_only_options")
TORCH_FREE = ("dlb.choice", "dlb.errors")  # what a stand-in may import, besides the standard library


def registered_names(group: str) -> list[str]:
    """The keys of a registered group's registry, its files' `@<decorator>("<name>", ...)`, read without torch."""
    return sorted(name for _, _, entries in _registrations(group, os.environ.get(plugins.ENV, "")) for name in entries)


@functools.lru_cache(maxsize=None)
def _registrations(group: str, plugin_paths: str) -> tuple[tuple[Path, ast.Module, dict[str, tuple]], ...]:
    """(file, its syntax tree, {registered name: (the decorated node, the decorator's call)}) for each file that
    registers options. Parsed once per process and DLB_PLUGINS value: every override check asks again."""
    decorator, folder = REGISTERED[group]
    found = []
    for path in [*sorted(folder.glob("*.py")), *plugins.paths()]:
        tree = ast.parse(path.read_text(), str(path))
        entries = {d.args[0].value: (node, d) for node in ast.walk(tree) for d in getattr(node, "decorator_list", ())
                   if isinstance(d, ast.Call) and getattr(d.func, "id", None) == decorator
                   and d.args and isinstance(d.args[0], ast.Constant)}
        if entries:
            found.append((path, tree, entries))
    return tuple(found)


def registry(group: str) -> dict[str, Any]:
    """What the config checks need of each registered option, read from the source without torch: for a method a
    stand-in class (the SCHEMA attributes of the registered class), for a dataset its declared facts (train_size,
    test_size and `config`, its `dataset=<name>` entry's values). A file whose reading fails is imported instead."""
    return _registry(group, os.environ.get(plugins.ENV, ""))


@functools.lru_cache(maxsize=None)
def _registry(group: str, plugin_paths: str) -> dict[str, Any]:
    found = {}
    for path, tree, entries in _registrations(group, plugin_paths):
        try:
            if group == "dataset":  # its sizes and config values: the decorator's keyword arguments, all literals
                for name, (_, call) in entries.items():
                    config = {k.arg: ast.literal_eval(k.value) for k in call.keywords}  # ValueError: not a literal
                    if None in config:
                        raise ValueError(f"dataset {name}: **arguments")
                    found[name] = types.SimpleNamespace(train_size=config.pop("train_size", None),
                                                        test_size=config.pop("test_size", None), config=config)
            else:
                namespace = _stand_ins(path, tree, _method_base())
                found.update({name: _complete(namespace[node.name]) for name, (node, _) in entries.items()})
        except Exception:  # the slow path: import the registry (and so torch)
            if group == "method":
                from dlb.methods import METHODS as imported
            else:
                from dlb.data.datasets import DATASETS as imported
            found.update({name: imported[name] for name in entries})
    return found


@functools.lru_cache(maxsize=None)
def _method_base() -> type:
    """The stand-in of dlb.methods.base.Method: the defaults of the SCHEMA attributes."""
    path = PACKAGE / "methods" / "base.py"
    return _complete(_stand_ins(path, ast.parse(path.read_text(), str(path)), None)["Method"])


def _stand_ins(path: Path, tree: ast.Module, base: type | None) -> dict[str, Any]:
    """The namespace of a method file run without torch: each class derived from Method (`base`; None: this is
    base.py, whose Method is the root) with only its SCHEMA statements, and the file's other statements that run
    without torch (_runs_without_torch). Raises when a Method class cannot be run so."""
    future = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]  # compiled with each
    module = types.ModuleType(f"dlb_schema_{path.stem}")  # importable only while it runs (dataclasses look it up),
    namespace, methods = vars(module), {"Method"}  # so a pickle of its classes (a launcher's jobs) holds them by value
    namespace["Method"] = base
    sys.modules[module.__name__] = module
    try:
        for node in tree.body:
            bases = [getattr(b, "id", None) for b in getattr(node, "bases", ())]  # a class's bases by name
            is_method = isinstance(node, ast.ClassDef) and bool({node.name, *bases} & methods)
            if is_method:
                methods.add(node.name)
                if base is not None and any(b not in methods for b in bases):
                    raise ValueError(f"{path}: {node.name} derives from a class outside this file but Method")
                node = copy.copy(node)
                node.bases, node.decorator_list = [b for b, name in zip(node.bases, bases) if name in methods], []
                node.body = [s for s in node.body if _binds(s) & set(SCHEMA)] or [ast.Pass()]
            elif not _runs_without_torch(node):
                continue
            try:
                exec(compile(ast.Module([*future, node], []), str(path), "exec", dont_inherit=True), namespace)
            except Exception:  # another statement that needs more than the stand-in has: left out
                if is_method:
                    raise
            if is_method:  # Hydra reads a dataclass's annotations by its module's name: evaluated while it has one
                for klass in namespace[node.name].Config.__mro__[:-1]:
                    klass.__annotations__ = {k: eval(v, namespace) if isinstance(v, str) else v  # the file's text
                                             for k, v in vars(klass).get("__annotations__", {}).items()}
    finally:
        del sys.modules[module.__name__]
    return namespace


def _complete(cls: type) -> type:
    """`cls`, after checking that its validate_config and rules_out, and the file's functions they call, find every
    global name they read (one the stand-in left out needs torch)."""
    todo = [(f.__code__, f.__globals__) for f in (cls.validate_config, cls.rules_out)]  # (bound methods pass them on)
    seen = set()
    while todo:
        code, names = todo.pop()
        todo += [(c, names) for c in code.co_consts if isinstance(c, types.CodeType)]
        for name in {i.argval for i in dis.get_instructions(code) if i.opname == "LOAD_GLOBAL"} - seen:
            seen.add(name)
            if isinstance(names.get(name), types.FunctionType):
                todo.append((names[name].__code__, names[name].__globals__))
            elif name not in names and not hasattr(builtins, name):
                raise NameError(f"{cls.__name__}'s checks read {name}, which its stand-in has not")
    return cls


def _binds(node: ast.AST) -> set[str]:
    """The names a statement binds."""
    if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
        return {node.name}
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}


def _runs_without_torch(node: ast.AST) -> bool:
    """Whether a statement of a method file runs without torch: an undecorated function, a Choice class, a literal
    constant, an import of the standard library or of TORCH_FREE."""
    if isinstance(node, ast.FunctionDef):
        return not node.decorator_list
    if isinstance(node, ast.ClassDef):
        return not node.decorator_list and "Choice" in {getattr(b, "id", None) for b in node.bases}
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        try:
            ast.literal_eval(node.value)
        except ValueError:
            return False
        return True
    if isinstance(node, ast.Import):
        modules = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        modules = [node.module if node.level == 0 else "."]  # relative: a package of the file's own
    else:
        return False
    return all(m in TORCH_FREE or m.split(".")[0] in sys.stdlib_module_names for m in modules)


def group_options(group: str) -> list[str]:
    """The options of a config group: its YAML files in configs/<group>/ and, for a registered group, its names."""
    registered = registered_names(group) if group in REGISTERED else []
    return sorted({p.stem for p in (CONFIGS / group).glob("*.yaml")} | set(registered))


def is_group(name: str) -> bool:
    return bool(re.fullmatch(r"\w+(/\w+)*", name)) and bool(group_options(name))


def has_option(group: str, option: str) -> bool:
    """Whether `group=option` names a config: a YAML file (also in a subfolder: option `a/b`) or a registered name."""
    return (CONFIGS / group / f"{option}.yaml").is_file() or (group in REGISTERED and option in registered_names(group))
