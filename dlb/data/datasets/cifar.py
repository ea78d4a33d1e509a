"""CIFAR-10 and CIFAR-100: the python-pickle archives (torchvision's layout: <root>/cifar-10-batches-py,
<root>/cifar-100-python), checked against torchvision's md5 lists and downloaded with dataset.download=true."""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.datasets.utils import calculate_md5, check_integrity, download_and_extract_archive

from dlb.data.datasets.base import ArrayDataset, register_dataset
from dlb.errors import DatasetError

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


# augment=crop_flip: RandomCrop(32, padding=4) + horizontal flip, as the official my_dataloader.py
@register_dataset("cifar10", train_size=50000, test_size=10000, augment="crop_flip", image_size=32)
def load_cifar10(root: Path, train: bool, download: bool, image_size: int) -> ArrayDataset:
    return _load_cifar("cifar10", root, train, download)


# cutout_size: the CutOut hole for CIFAR-100 (the schema's default, 16, is CIFAR-10's)
@register_dataset("cifar100", train_size=50000, test_size=10000, augment="crop_flip", image_size=32,
                  cutout_size=8)
def load_cifar100(root: Path, train: bool, download: bool, image_size: int) -> ArrayDataset:
    return _load_cifar("cifar100", root, train, download)


def _load_cifar(name: str, root: Path, train: bool, download: bool) -> ArrayDataset:
    # torchvision's class attributes are the source of truth for file names and md5s (tests monkeypatch them).
    spec = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    title = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    folder = root / spec.base_folder
    files = [(folder / fname, md5) for fname, md5 in (spec.train_list if train else spec.test_list)]
    files.append((folder / spec.meta["filename"], spec.meta["md5"]))
    redownload = f"delete {folder} and rerun with dataset.download=true (needs internet)"

    if download and not all(path.is_file() for path, _ in files):
        try:
            download_and_extract_archive(spec.url, str(root), filename=spec.filename, md5=spec.tgz_md5)
        except Exception as exc:  # network errors come in many types; all mean the same thing to the user
            raise DatasetError(f"downloading {spec.url} into {root} failed ({exc}); check internet access, or "
                               f"download it elsewhere and extract it into {root}") from exc
    missing = [path for path, _ in files if not path.is_file()]
    if missing:
        raise DatasetError(f"{title} file {missing[0]} is missing; rerun with dataset.download=true (needs internet), "
                           f"or put the archive's extracted folder at {folder}")
    for path, md5 in files:
        if not check_integrity(path, md5):
            raise DatasetError(f"{title} file {path} is corrupt (md5 {calculate_md5(path)}, expected {md5}); "
                               f"{redownload}")

    label_key = "labels" if name == "cifar10" else "fine_labels"
    images, labels = [], []
    for path, _ in files[:-1]:
        batch = _unpickle(path)
        try:
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(batch[label_key])
        except (KeyError, ValueError) as exc:
            raise DatasetError(f"{title} file {path} is malformed ({exc!r}); {redownload}") from exc
    classes = list(_unpickle(files[-1][0])[spec.meta["key"]])
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    # The rows are stored as 1024 red, 1024 green, 1024 blue values: already channel-first.
    return ArrayDataset(torch.from_numpy(np.concatenate(images)).contiguous(), torch.tensor(labels, dtype=torch.int64),
                        len(classes), mean, std, name, classes)


def _unpickle(path: Path) -> dict:
    # The archives are Python 2 pickles; latin1 turns their byte-string keys into str (as torchvision does).
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


class _Py2Pickler(pickle._Pickler):
    """Pickles bytes as Python 2 `str` (BINSTRING opcodes), as in the real CIFAR batches, written by Python 2: read
    with encoding="latin1" (as _unpickle and torchvision do) their keys come back as str."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _py2(obj):
    """Every str as bytes (a Python 2 str), through dicts and lists."""
    if isinstance(obj, dict):
        return {_py2(k): _py2(v) for k, v in obj.items()}
    return obj.encode("latin1") if isinstance(obj, str) else [_py2(v) for v in obj] if isinstance(obj, list) else obj


def write_py2_pickle(path: Path, obj) -> str:
    """Write `obj` as the CIFAR archives store a batch (a Python 2 pickle), for small CIFAR folders made elsewhere (the
    tests' fake data, the benchmark's synthetic CIFAR-100); returns the file's md5."""
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(_py2(obj))
    return calculate_md5(path)
