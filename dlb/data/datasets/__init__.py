"""Datasets read fully into memory as decoded uint8 tensors. One file per dataset; each registers its reader with
`@register_dataset` (base.py).

Adding a dataset is one new file here, or one file of your own named in DLB_PLUGINS (dlb/plugins.py): every module
of this package is imported below, so its reader becomes `load_dataset(<name>, ...)`, its config values the
`dataset=<name>` config entry, and its training-set size (if it declares one) an entry of TRAIN_SIZES.
"""
import importlib
import pkgutil

from dlb import plugins
from dlb.data.datasets.base import (DATASETS, TRAIN_SIZES, ArrayDataset, DatasetSpec, RunData, fingerprint,
                                    load_dataset, prepare, register_dataset, subset_index)
from dlb.data.datasets.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
# (a copy: to move the Fashion-MNIST system dir, set dlb.data.datasets.fashion_mnist.FASHION_MNIST_SYSTEM_DIR)
from dlb.data.datasets.fashion_mnist import FASHION_MNIST_SYSTEM_DIR

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
plugins.load()

__all__ = ["DATASETS", "TRAIN_SIZES", "ArrayDataset", "DatasetSpec", "RunData", "fingerprint", "load_dataset",
           "prepare", "register_dataset", "subset_index", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN",
           "CIFAR100_STD", "FASHION_MNIST_SYSTEM_DIR"]
