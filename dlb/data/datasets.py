"""Datasets read fully into memory as decoded uint8 tensors.

Every loader returns an ArrayDataset with images (N, 3, H, W) uint8 and labels (N,) int64;
augmentation and normalisation happen later, on the training device. Problems with the
data on disk raise DatasetError, whose message names the problem and the command that fixes it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

from dlb.choice import Choice
from dlb.errors import DatasetError


class DatasetName(Choice):
    cifar10 = "cifar10"
    cifar100 = "cifar100"
    tinyimagenet = "tinyimagenet"
    fashion_mnist = "fashion_mnist"
    imagefolder = "imagefolder"


# Training-set sizes of the named datasets, for plans made before any data is read (sweep estimates, the benchmark's
# full-run speed settings); an image folder's size is only known once read.
TRAIN_SIZES = {DatasetName.cifar10: 50000, DatasetName.cifar100: 50000, DatasetName.tinyimagenet: 100000,
               DatasetName.fashion_mnist: 60000}


from dlb import REPO as REPO_ROOT  # noqa: E402
PREPARE_TINYIMAGENET = REPO_ROOT / "scripts" / "prepare_tinyimagenet.py"
# Where Debian's `dataset-fashion-mnist` package puts the idx files (a module constant so tests can move it).
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Measured over the 60000 train images *after* zero-padding 28x28 -> 32x32. The usual
# 28x28 values (0.2860, 0.3530) would be wrong here: the padding adds 240 black pixels per image.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2190,) * 3, (0.3318,) * 3


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
            raise ValueError(f"labels must be int64 ({self.images.shape[0]},), got {self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> "ArrayDataset":
        """Same metadata, only the rows selected by `index` (integer indices or a boolean mask)."""
        return ArrayDataset(self.images[index].contiguous(), self.labels[index].contiguous(), self.num_classes,
                            self.mean, self.std, self.name, self.classes)


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
    """Rows of the fixed subset of n out of size (None: all rows)."""
    if n is None or n >= size:
        return None
    g = torch.Generator().manual_seed(SUBSET_SEED)
    return torch.randperm(size, generator=g)[:n].sort().values


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
    data = RunData(train, _subset(test, d.test_subset), fingerprint(train, test))
    index = subset_index(len(train), d.train_subset)
    if nz.name == "none":
        data.train = train if index is None else train.subset(index)
        return data
    noisy = N.noisy_labels(train.labels, train.num_classes, d.name, nz.name, nz.rate, nz.seed)
    clean_used, noisy_used = (train.labels, noisy) if index is None else (train.labels[index], noisy[index])
    data.noise_rate_realised = (noisy_used != clean_used).float().mean().item()  # once, before training
    data.noise_record = {"noisy_labels": noisy_used, "index": index,
                         "clean_sha256": N.labels_fingerprint(train.labels),
                         "clean_used_sha256": N.labels_fingerprint(clean_used),
                         "noise_rate_realised": data.noise_rate_realised,
                         "config": {"dataset": str(d.name), "name": str(nz.name), "rate": nz.rate, "seed": nz.seed}}
    # Loader and any method's batch_order (CS-KD's class pairs) see the noisy labels; the test set stays clean.
    noisy_train = dataclasses.replace(train, labels=noisy)
    data.train = noisy_train if index is None else noisy_train.subset(index)
    return data


def _subset(ds: ArrayDataset, n: int | None) -> ArrayDataset:
    index = subset_index(len(ds), n)
    return ds if index is None else ds.subset(index)


def load_dataset(name: str, root: str, train: bool, *, download: bool = False, image_size: int = 32) -> ArrayDataset:
    """Read the dataset `name` from `root` fully into memory as decoded uint8 tensors. image_size applies to imagefolder only."""
    root_path = Path(root).expanduser()
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, root_path, train, download)
    if name == "tinyimagenet":
        return _load_tinyimagenet(root_path, train, download)
    if name == "fashion_mnist":
        return _load_fashion_mnist(root_path, train, download)
    if name == "imagefolder":
        return _load_imagefolder(root_path, train, image_size)
    raise DatasetError(f"unknown dataset {name!r}; set dataset.name to one of {', '.join(DatasetName)}")


# ---------------------------------------------------------------- CIFAR


def _load_cifar(name: str, root: Path, train: bool, download: bool) -> ArrayDataset:
    # torchvision's class attributes are the source of truth for file names and md5s (tests monkeypatch them).
    spec = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    title = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    folder = root / spec.base_folder
    files = [(folder / fname, md5) for fname, md5 in (spec.train_list if train else spec.test_list)]
    files.append((folder / spec.meta["filename"], spec.meta["md5"]))

    missing = [path for path, _ in files if not path.is_file()]
    if missing and download:
        _download(spec.url, root, spec.filename, spec.tgz_md5)
        missing = [path for path, _ in files if not path.is_file()]
    if missing:
        raise DatasetError(f"{title} file {missing[0]} is missing; rerun with dataset.download=true (needs internet), "
                           f"or put the archive's extracted folder at {folder}")
    for path, md5 in files:
        if not check_integrity(path, md5):
            raise DatasetError(f"{title} file {path} is corrupt (md5 {_md5(path)}, expected {md5}); delete {folder} "
                               f"and rerun with dataset.download=true (needs internet)")

    label_key = "labels" if name == "cifar10" else "fine_labels"
    images, labels = [], []
    for path, _ in files[:-1]:
        batch = _unpickle(path)
        try:
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(batch[label_key])
        except (KeyError, ValueError) as exc:
            raise DatasetError(f"{title} file {path} is malformed ({exc!r}); delete {folder} and rerun with "
                               f"dataset.download=true (needs internet)") from exc
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


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, root: Path, filename: str, md5: str) -> None:
    try:
        download_and_extract_archive(url, str(root), filename=filename, md5=md5)
    except Exception as exc:  # network errors come in many types; all mean the same thing to the user
        raise DatasetError(f"downloading {url} into {root} failed ({exc}); check internet access, or download it "
                           f"elsewhere and extract it into {root}") from exc


# ---------------------------------------------------------------- Fashion-MNIST

FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _load_fashion_mnist(root: Path, train: bool, download: bool) -> ArrayDataset:
    candidates = [root / "FashionMNIST" / "raw", root / "fashion-mnist", FASHION_MNIST_SYSTEM_DIR]
    folder = next((d for d in candidates if _fashion_mnist_files(d) is not None), None)
    if folder is None and download:
        try:  # writes root/FashionMNIST/raw, the first candidate
            torchvision.datasets.FashionMNIST(str(root), train=train, download=True)
        except Exception as exc:
            raise DatasetError(f"downloading Fashion-MNIST into {root} failed ({exc}); check internet access, or "
                               f"run `apt-get install -y dataset-fashion-mnist` (Debian, as root)") from exc
        folder = candidates[0] if _fashion_mnist_files(candidates[0]) is not None else None
    if folder is None:
        raise DatasetError(f"Fashion-MNIST idx files not found in {', '.join(map(str, candidates))}; run "
                           f"`apt-get install -y dataset-fashion-mnist` (Debian, as root), or rerun with "
                           f"dataset.download=true (needs internet)")

    files = _fashion_mnist_files(folder)  # train images, train labels, test images, test labels
    image_path, label_path = files[:2] if train else files[2:]
    images = _read_idx(image_path, magic=2051)
    labels = _read_idx(label_path, magic=2049)
    if images.shape[1:] != (28, 28) or len(images) != len(labels) or labels.max() > 9:
        raise DatasetError(f"Fashion-MNIST files {image_path} and {label_path} are inconsistent (images "
                           f"{images.shape}, {len(labels)} labels, max label {labels.max()}); delete them and rerun "
                           f"with dataset.download=true (needs internet)")
    padded = np.zeros((len(images), 32, 32), dtype=np.uint8)
    padded[:, 2:30, 2:30] = images  # zero-pad 28 -> 32 so the CIFAR-sized networks fit unchanged
    images3 = torch.from_numpy(padded).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return ArrayDataset(images3, torch.from_numpy(labels.astype(np.int64)), 10, FASHION_MNIST_MEAN,
                        FASHION_MNIST_STD, "fashion_mnist", list(torchvision.datasets.FashionMNIST.classes))


def _fashion_mnist_files(folder: Path) -> list[Path] | None:
    """The four idx files in `folder` (each either raw or .gz), or None if any is missing."""
    found = []
    for stem in FASHION_MNIST_FILES:
        path = next((folder / (stem + ext) for ext in ("", ".gz") if (folder / (stem + ext)).is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an idx file (big-endian: magic number, one uint32 per dimension, then uint8 data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"cannot read {path} ({exc}); delete it and rerun with dataset.download=true "
                           f"(needs internet)") from exc
    found_magic = int.from_bytes(data[:4], "big")
    if found_magic != magic:
        raise DatasetError(f"{path} is not an idx file of the expected kind (magic number {found_magic}, expected "
                           f"{magic}); delete it and rerun with dataset.download=true (needs internet)")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path} is truncated ({body.size} bytes of data for shape {shape}); delete it and rerun "
                           f"with dataset.download=true (needs internet)")
    return body.reshape(shape)


# ---------------------------------------------------------------- decoding image files


def _decode_images(paths: list[Path], size: int | None = None) -> torch.Tensor:
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
                                   f"{first.shape[1]}x{first.shape[0]}; all images must have one size, fix or delete it")
            out[i] = torch.from_numpy(array)
    return out.permute(0, 3, 1, 2).contiguous()


def _load_cache(path: Path, fingerprint: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file: just decode again and overwrite it
        return None
    return cache if cache.get("fingerprint") == fingerprint else None


def _save_cache(path: Path, cache: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:  # write then rename, so an interrupted run never leaves a half-written cache
        torch.save(cache, tmp)
        os.replace(tmp, path)
    except OSError as exc:  # e.g. a read-only dataset folder: loading still works, just slower next time
        warnings.warn(f"could not write the decoded-image cache {path} ({exc}); the next load will decode again")


# ---------------------------------------------------------------- TinyImageNet


def _load_tinyimagenet(root: Path, train: bool, download: bool) -> ArrayDataset:
    base = root / "tiny-imagenet-200"
    prepare = f"python scripts/prepare_tinyimagenet.py --root {root}"
    if download and (not (base / "train").is_dir() or (base / "val" / "images").is_dir()):
        # Same code path as the command the error messages recommend.
        result = subprocess.run([sys.executable, str(PREPARE_TINYIMAGENET), "--root", str(root), "--download"])
        if result.returncode != 0:
            raise DatasetError(f"preparing TinyImageNet failed (see the messages above); fix that, then run "
                               f"`{prepare} --download`")
    if not (base / "train").is_dir() or not (base / "val").is_dir():
        raise DatasetError(f"TinyImageNet not found at {base}; run `{prepare} --download` "
                           f"(needs internet), or rerun with dataset.download=true")
    if (base / "val" / "images").is_dir():
        raise DatasetError(f"TinyImageNet val/ at {base / 'val'} is not reorganised into class folders yet; "
                           f"run `{prepare}`")

    wnids_file = base / "wnids.txt"
    if wnids_file.is_file():
        classes = sorted(line.strip() for line in wnids_file.read_text().splitlines() if line.strip())
    else:
        classes = sorted(d.name for d in (base / "train").iterdir() if d.is_dir())
    split = "train" if train else "val"
    paths, labels = [], []
    for label, wnid in enumerate(classes):
        class_dir = base / "train" / wnid / "images" if train else base / "val" / wnid
        files = sorted(p for p in class_dir.glob("*") if p.suffix.lower() in (".jpeg", ".jpg")) if class_dir.is_dir() else []
        if not files:
            raise DatasetError(f"TinyImageNet class folder {class_dir} is missing or has no JPEGs; delete {base} "
                               f"and run `{prepare} --download`")
        paths += files
        labels += [label] * len(files)
    extra = sorted({d.name for d in (base / split).iterdir() if d.is_dir()} - set(classes))
    if extra:
        raise DatasetError(f"TinyImageNet {split}/ has folders {extra[:5]} that are not classes in {wnids_file}; "
                           f"delete {base} and run `{prepare} --download`")

    cache_path = base / f"cache_{split}.pt"
    fingerprint = {"num_files": len(paths), "classes": classes}
    cache = _load_cache(cache_path, fingerprint)
    if cache is None:
        images = _decode_images(paths)
        if images.shape[2:] != (64, 64):
            raise DatasetError(f"TinyImageNet images must be 64x64 but {paths[0]} is {images.shape[3]}x"
                               f"{images.shape[2]}; delete {base} and run `{prepare} --download`")
        cache = {"images": images, "labels": torch.tensor(labels, dtype=torch.int64), "classes": classes,
                 "fingerprint": fingerprint}
        _save_cache(cache_path, cache)
    return ArrayDataset(cache["images"], cache["labels"], len(classes), IMAGENET_MEAN, IMAGENET_STD,
                        "tinyimagenet", classes)


# ---------------------------------------------------------------- generic class-per-folder


def _load_imagefolder(root: Path, train: bool, image_size: int) -> ArrayDataset:
    if image_size < 1:
        raise DatasetError(f"image_size must be positive, got {image_size}; set dataset.image_size")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DatasetError(f"image folder dataset needs {train_dir} with one subfolder per class; create it "
                           f"(root/train/<class>/<image>) or point dataset.root at the right folder")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"{train_dir} has no class subfolders; put images at {train_dir}/<class>/<image>")
    train_data = _imagefolder_split(train_dir, classes, image_size)
    if train:
        data = train_data
    else:
        split_dir = root / "test" if (root / "test").is_dir() else root / "val"
        if not split_dir.is_dir():
            raise DatasetError(f"image folder dataset at {root} has no test/ or val/ folder; create {root / 'val'} "
                               f"with the same class subfolders as {train_dir}")
        data = _imagefolder_split(split_dir, classes, image_size)
    # Normalisation always comes from the train split, so train and test are normalised the same way.
    return ArrayDataset(data["images"], data["labels"], len(classes), tuple(train_data["mean"]),
                        tuple(train_data["std"]), "imagefolder", classes)


def _imagefolder_split(split_dir: Path, classes: list[str], image_size: int) -> dict:
    folders = sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [d.name for d in folders if d.name not in classes]
    if unknown:
        raise DatasetError(f"{split_dir} has class folders {unknown[:5]} that are not in {split_dir.parent / 'train'}; "
                           f"rename or remove them so every class also exists in train/")
    paths, labels = [], []
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        if not files:
            raise DatasetError(f"class folder {folder} has no images ({', '.join(IMG_EXTENSIONS)}); add images or "
                               f"remove the folder")
        paths += files
        labels += [classes.index(folder.name)] * len(files)
    if not paths:
        raise DatasetError(f"{split_dir} has no class folders with images; put images at {split_dir}/<class>/<image>")

    cache_path = split_dir.parent / f".dlb_cache_{split_dir.name}_{image_size}.pt"
    fingerprint = {"num_files": len(paths), "total_bytes": sum(p.stat().st_size for p in paths), "classes": classes}
    cache = _load_cache(cache_path, fingerprint)
    if cache is None:
        images = _decode_images(paths, image_size)
        mean, std = _channel_mean_std(images)
        cache = {"images": images, "labels": torch.tensor(labels, dtype=torch.int64), "mean": mean, "std": std,
                 "fingerprint": fingerprint}
        _save_cache(cache_path, cache)
    return cache


def _channel_mean_std(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std in [0,1] units, accumulated in float64 chunks to bound memory."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(1024):
        x = chunk.to(torch.float64) / 255
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()
