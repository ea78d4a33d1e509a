"""Training methods. One file per method; each registers itself with `@register_method`.

Adding a method is one new file here (docs/methods.md, "Adding a method"), or a file of your own named in DLB_PLUGINS
(dlb/plugins.py): every module of this package, then every plugin, is imported below, so its `Config` becomes the
`method=<name>` config entry and its class attributes (base.py) reach the trainer, the sweep planner, the report and
the figures.
"""
import importlib
import pkgutil

from dlb import plugins
from dlb.methods.base import (METHODS, Cost, Method, build_method, comparisons, label, ordered,
                              register_method)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
plugins.load()

__all__ = ["METHODS", "Cost", "Method", "build_method", "comparisons", "label", "ordered", "register_method"]
