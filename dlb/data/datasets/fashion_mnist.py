"""Fashion-MNIST: 28x28 grey images zero-padded to 32x32 and replicated to 3 channels, so the CIFAR-sized networks
fit unchanged. The idx files (raw or .gz) are read from <root>/FashionMNIST/raw (torchvision's download),
<root>/fashion-mnist, or /usr/share/datasets/fashion-mnist (Debian: apt-get install -y dataset-fashion-mnist)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torchvision

from dlb.data.datasets.base import ArrayDataset, register_dataset
from dlb.errors import DatasetError

# Where Debian's `dataset-fashion-mnist` package puts the idx files (a module constant so tests can move it).
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
# Measured over the 60000 train images *after* zero-padding 28x28 -> 32x32. The usual
# 28x28 values (0.2860, 0.3530) would be wrong here: the padding adds 240 black pixels per image.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2190,) * 3, (0.3318,) * 3
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@register_dataset("fashion_mnist", train_size=60000, test_size=10000, augment="crop_flip", image_size=32)
def load_fashion_mnist(root: Path, train: bool, download: bool, image_size: int) -> ArrayDataset:
    candidates = [root / "FashionMNIST" / "raw", root / "fashion-mnist", FASHION_MNIST_SYSTEM_DIR]
    if download and not any(map(_fashion_mnist_files, candidates)):
        try:  # writes root/FashionMNIST/raw, the first candidate
            torchvision.datasets.FashionMNIST(str(root), train=train, download=True)
        except Exception as exc:
            raise DatasetError(f"downloading Fashion-MNIST into {root} failed ({exc}); check internet access, or "
                               f"run `apt-get install -y dataset-fashion-mnist` (Debian, as root)") from exc
    # train images, train labels, test images, test labels, from the first folder that has all four
    files = next(filter(None, map(_fashion_mnist_files, candidates)), None)
    if files is None:
        raise DatasetError(f"Fashion-MNIST idx files not found in {', '.join(map(str, candidates))}; run "
                           f"`apt-get install -y dataset-fashion-mnist` (Debian, as root), or rerun with "
                           f"dataset.download=true (needs internet)")

    image_path, label_path = files[:2] if train else files[2:]
    images, labels = _read_idx(image_path, magic=2051), _read_idx(label_path, magic=2049)
    if images.shape[1:] != (28, 28) or len(images) != len(labels) or labels.max() > 9:
        raise DatasetError(f"Fashion-MNIST files {image_path} and {label_path} are inconsistent (images "
                           f"{images.shape}, {len(labels)} labels, max label {labels.max()}); delete them and rerun "
                           f"with dataset.download=true (needs internet)")
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))  # zero-pad 28 -> 32 so the CIFAR-sized networks fit unchanged
    images3 = torch.from_numpy(padded).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return ArrayDataset(images3, torch.from_numpy(labels.astype(np.int64)), 10, FASHION_MNIST_MEAN,
                        FASHION_MNIST_STD, "fashion_mnist", list(torchvision.datasets.FashionMNIST.classes))


def _fashion_mnist_files(folder: Path) -> list[Path] | None:
    """The four idx files in `folder` (each either raw or .gz), or None if any is missing."""
    found = [next((p for p in (folder / s, folder / f"{s}.gz") if p.is_file()), None) for s in FASHION_MNIST_FILES]
    return None if None in found else found


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an idx file (big-endian: magic number, one uint32 per dimension, then uint8 data)."""
    redownload = "delete it and rerun with dataset.download=true (needs internet)"
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"cannot read {path} ({exc}); {redownload}") from exc
    found_magic = int.from_bytes(data[:4], "big")
    if found_magic != magic:
        raise DatasetError(f"{path} is not an idx file of the expected kind (magic number {found_magic}, expected "
                           f"{magic}); {redownload}")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path} is truncated ({body.size} bytes of data for shape {shape}); {redownload}")
    return body.reshape(shape)


