"""Datasets read fully into memory as decoded uint8 tensors, one file each, whose reader is registered with
`@register_dataset` (base.py). Every module of this package, then every plugin file named in DLB_PLUGINS
(dlb/plugins.py), is imported below, so a new dataset is one file: `load_dataset(<name>, ...)`, `dataset=<name>`."""
import importlib
import pkgutil

from dlb import plugins
from dlb.data.datasets.base import (DATASETS, TRAIN_SIZES, ArrayDataset, fingerprint, load_dataset,  # noqa: F401
                                    prepare, register_dataset)
from dlb.data.datasets.cifar import CIFAR100_MEAN, CIFAR100_STD  # noqa: F401

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
plugins.load()
