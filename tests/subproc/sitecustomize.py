"""Test-only: lets a subprocess (e.g. `make reproduce-table1` in a test) read the tests' fake CIFAR files.

Python imports this at start-up when tests/subproc is on PYTHONPATH; it points torchvision's CIFAR md5 lists at
the fake files' md5s named in $DLB_TEST_FAKE_MD5 (a JSON file {"cifar10": {file: md5}, "cifar100": {...}}).
"""
import json
import os

_path = os.environ.get("DLB_TEST_FAKE_MD5")
if _path:
    import torchvision

    for _name, _md5s in json.load(open(_path)).items():
        _spec = torchvision.datasets.CIFAR10 if _name == "cifar10" else torchvision.datasets.CIFAR100
        _spec.train_list = [[f, _md5s[f]] for f, _ in _spec.train_list]
        _spec.test_list = [[f, _md5s[f]] for f, _ in _spec.test_list]
        _spec.meta = {**_spec.meta, "md5": _md5s[_spec.meta["filename"]]}
