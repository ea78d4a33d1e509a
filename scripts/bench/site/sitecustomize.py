"""Lets a --vs-official child read the benchmark's synthetic CIFAR-100 files: Python imports this at start-up when
this folder is on PYTHONPATH, and it points torchvision's CIFAR-100 md5s (which dlb.data and the official code check)
at the files under $DLB_BENCH_CIFAR100 (official.write_synthetic_cifar100)."""
import hashlib
import os

if os.environ.get("DLB_BENCH_CIFAR100"):
    import torchvision

    _spec = torchvision.datasets.CIFAR100
    _folder = os.path.join(os.environ["DLB_BENCH_CIFAR100"], _spec.base_folder)
    _md5 = {f: hashlib.md5(open(os.path.join(_folder, f), "rb").read()).hexdigest()
            for f in [f for f, _ in _spec.train_list + _spec.test_list] + [_spec.meta["filename"]]}
    _spec.train_list = [[f, _md5[f]] for f, _ in _spec.train_list]
    _spec.test_list = [[f, _md5[f]] for f, _ in _spec.test_list]
    _spec.meta = {**_spec.meta, "md5": _md5[_spec.meta["filename"]]}
