"""What every dataset shares: the in-memory split (ArrayDataset), the registry, and the run's data (prepare).

A reader (`@register_dataset`) returns an ArrayDataset with images (N, 3, H, W) uint8 and labels (N,) int64;
augmentation and normalisation happen later, on the training device. Problems with the data on disk raise
DatasetError, whose message names the problem and the command that fixes it."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from dlb.errors import DatasetError, warn


@dataclass
class ArrayDataset:
    images: torch.Tensor  # uint8, (N, 3, H, W), contiguous, CPU; grey images are replicated to 3 channels
    labels: torch.Tensor  # int64, (N,)
    num_classes: int
    mean: tuple[float, float, float]  # normalisation, in [0,1] units
    std: tuple[float, float, float]
    name: str
    classes: list[str] | None = None

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be int64 ({self.images.shape[0]},), got {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor | None) -> "ArrayDataset":
        """Same metadata, only the rows selected by `index` (integer indices or a boolean mask; None: all, itself)."""
        if index is None:
            return self
        return dataclasses.replace(self, images=self.images[index].contiguous(), labels=self.labels[index].contiguous())


# ---------------------------------------------------------------- the registry

# A reader: (root, train, download, image_size) -> that split, fully in memory. download: fetch or prepare what is
# missing (needs internet); image_size: dataset.image_size, for readers that resize (the others ignore it).
Reader = Callable[[Path, bool, bool, int], ArrayDataset]


@dataclass(frozen=True)
class DatasetSpec:
    load: Reader
    # Split sizes known before reading (None: only once read, as an image folder's); config.validate refuses a
    # dataset.train_subset / test_subset larger than these
    train_size: int | None
    test_size: int | None
    config: dict  # the `dataset=<name>` config entry's values (augment, image_size, cutout_size, ...)


DATASETS: dict[str, DatasetSpec] = {}
# Training-set sizes of the datasets that declare one, for plans made before any data is read (sweep estimates, the
# benchmark's full-run speed settings). Filled by register_dataset.
TRAIN_SIZES: dict[str, int] = {}


def register_dataset(name: str, *, train_size: int | None = None, test_size: int | None = None,
                     **config) -> Callable[[Reader], Reader]:
    """Register a reader as dataset `name`: `dataset=<name>` then selects it, with `config` (DatasetConfig fields:
    augment, image_size, cutout_size, ...) as that entry's values over the schema's defaults. train_size, test_size:
    the split sizes, where known before reading."""

    def add(load: Reader) -> Reader:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice ({DATASETS[name].load.__module__}, "
                             f"{load.__module__})")
        DATASETS[name] = DatasetSpec(load, train_size, test_size, config)
        if train_size is not None:
            TRAIN_SIZES[name] = train_size
        return load

    return add


def load_dataset(name: str, root: str, train: bool, *, download: bool = False, image_size: int = 32) -> ArrayDataset:
    """Read the dataset `name` from `root` fully into memory as decoded uint8 tensors."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; set dataset.name to one of {', '.join(DATASETS)}")
    return DATASETS[name].load(Path(root).expanduser(), train, download, image_size)


# ---------------------------------------------------------------- the run's data
def fingerprint(train: ArrayDataset, test: ArrayDataset) -> dict:
    """What identifies the data a run sees, whatever folder it was read from: name, split sizes, classes and a
    sha256 of each split's decoded images and labels (about a second for CIFAR). Recorded in the run folder and
    checked when a run is resumed."""

    def sha256(ds: ArrayDataset) -> str:
        h = hashlib.sha256()
        for t in (ds.images, ds.labels):
            h.update(memoryview(t.contiguous().numpy()).cast("B"))
        return h.hexdigest()

    return {"name": train.name, "train_size": len(train), "test_size": len(test), "num_classes": train.num_classes,
            "classes": list(train.classes) if train.classes is not None else None,
            "train_sha256": sha256(train), "test_sha256": sha256(test)}


SUBSET_SEED = 0  # train/test subsets are the same for every seed and method, so runs stay comparable


def subset_index(size: int, n: int | None) -> torch.Tensor | None:
    """Rows of the fixed subset of n out of size (None: all rows, also for n > size: config.validate refuses n larger
    than a declared split size, and `prepare` warns where none is declared (an image folder))."""
    if n is None or n >= size:
        return None
    return torch.randperm(size, generator=torch.Generator().manual_seed(SUBSET_SEED))[:n].sort().values


@dataclass
class RunData:
    """The data a run trains and tests on, as prepared by `prepare`."""
    train: ArrayDataset  # the subset trained on, with noisy labels under label noise
    test: ArrayDataset
    fingerprint: dict  # of the full splits as read (see fingerprint)
    noise_rate_realised: float = 0.0
    noise_record: dict | None = None  # under label noise: what the run saves as noisy_labels.pt


def prepare(train: ArrayDataset, test: ArrayDataset, dataset_cfg, noise_cfg) -> RunData:
    """The run's data from the full splits: fingerprint first, then label noise drawn on the full training set (so a
    subset's labels agree with the full set's), then the fixed dataset.train_subset / test_subset."""
    from dlb.data import noise as N

    d, nz = dataset_cfg, noise_cfg
    spec = DATASETS.get(d.name)
    declared = (None, None) if spec is None else (spec.train_size, spec.test_size)  # config.validate checked those
    for key, split, size in zip(("train_subset", "test_subset"), (train, test), declared):
        if d[key] is not None and d[key] > len(split) and size is None:  # an image folder: its size is known now
            # a warning, not an error: debug=step/tiny ask for 256 images of whatever folder they are given
            warn(f"dataset.{key}={d[key]}: the {'training' if split is train else 'test'} split of dataset={d.name} "
                 f"({d.root}) has only {len(split)} images; using all {len(split)}")
    index = subset_index(len(train), d.train_subset)
    data = RunData(train.subset(index), test.subset(subset_index(len(test), d.test_subset)), fingerprint(train, test))
    if nz.name == "none":
        return data
    noisy = N.noisy_labels(train.labels, train.num_classes, d.name, nz.name, nz.rate, nz.seed)
    # Loader and any method's batch_order (CS-KD's class pairs) see the noisy labels; the test set stays clean.
    clean_used, data.train = data.train.labels, dataclasses.replace(train, labels=noisy).subset(index)
    data.noise_rate_realised = (data.train.labels != clean_used).float().mean().item()  # once, before training
    data.noise_record = {"noisy_labels": data.train.labels, "index": index,
                         "clean_sha256": N.labels_fingerprint(train.labels),
                         "clean_used_sha256": N.labels_fingerprint(clean_used),
                         "noise_rate_realised": data.noise_rate_realised,
                         "config": {"dataset": str(d.name), "name": str(nz.name), "rate": nz.rate, "seed": nz.seed}}
    return data


# ---------------------------------------------------------------- for readers of image files
def decode_images(paths: list[Path], size: int | None = None) -> torch.Tensor:
    """Decode image files to RGB uint8 (N, 3, S, S); resize to size x size if given, else all must share one size."""
    if not paths:
        return torch.empty(0, 3, size or 0, size or 0, dtype=torch.uint8)

    def decode(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")  # greyscale/CMYK/palette files exist in real datasets
                if size is not None and img.size != (size, size):
                    img = img.resize((size, size), Image.BILINEAR)
                return np.array(img)  # a writable copy: torch warns about read-only buffers
        except OSError as exc:
            raise DatasetError(f"cannot decode image {path} ({exc}); delete or replace that file") from exc

    # PIL releases the GIL while decoding, so threads give a real speed-up.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        first = decode(paths[0])
        out = torch.empty(len(paths), *first.shape, dtype=torch.uint8)  # (N, H, W, 3) until the final permute
        out[0] = torch.from_numpy(first)
        for i, (path, array) in enumerate(zip(paths[1:], pool.map(decode, paths[1:], chunksize=64)), start=1):
            if array.shape != first.shape:
                raise DatasetError(f"image {path} is {array.shape[1]}x{array.shape[0]} but {paths[0]} is "
                                   f"{first.shape[1]}x{first.shape[0]}; all images must have one size, "
                                   f"fix or delete it")
            out[i] = torch.from_numpy(array)
    return out.permute(0, 3, 1, 2).contiguous()


def cached(path: Path, fingerprint: dict, decode: Callable[[], dict]) -> dict:
    """The decoded-image cache at `path` if it was written for these files (`fingerprint`), else decode()'s dict,
    written there with the fingerprint."""
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
    except Exception:  # a truncated or foreign file: just decode again and overwrite it
        cache = None
    if cache is not None and cache.get("fingerprint") == fingerprint:
        return cache
    cache = {**decode(), "fingerprint": fingerprint}
    tmp = path.with_name(path.name + ".tmp")
    try:  # write then rename, so an interrupted run never leaves a half-written cache
        torch.save(cache, tmp)
        os.replace(tmp, path)
    except OSError as exc:  # e.g. a read-only dataset folder: loading still works, just slower next time
        warn(f"could not write the decoded-image cache {path} ({exc}); the next load will decode again")
    return cache
