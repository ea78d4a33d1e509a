"""Training methods, one file each, registered with `@register_method`. Every module of this package, then every
plugin file named in DLB_PLUGINS (dlb/plugins.py), is imported below, so a new method is one file (docs/methods.md,
"Adding a method") that the trainer, the sweep planner, the report and the figures all see."""
import importlib
import pkgutil

from dlb import plugins
from dlb.methods.base import (METHODS, Cost, Method, build_method, comparisons, label, ordered,  # noqa: F401
                              register_method)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
plugins.load()
