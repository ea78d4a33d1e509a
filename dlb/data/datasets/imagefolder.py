"""Any class-per-folder image dataset: <root>/train/<class>/<image> and <root>/test/ (else <root>/val/) with the same
class folders. Images are resized to dataset.image_size once, held in memory and cached next to the data;
normalisation is the train split's per-channel mean and std.
    python -m dlb.train dataset=imagefolder dataset.root=/path/to/data dataset.image_size=32"""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from dlb.data.datasets.base import ArrayDataset, cached, decode_images, register_dataset
from dlb.errors import DatasetError


# root=None: there is no default folder for your own images; dataset.root=<dir> is required
@register_dataset("imagefolder", root=None, augment="crop_flip", image_size=32)
def load_imagefolder(root: Path, train: bool, download: bool, image_size: int) -> ArrayDataset:
    if image_size < 1:
        raise DatasetError(f"image_size must be positive, got {image_size}; set dataset.image_size")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DatasetError(f"image folder dataset needs {train_dir} with one subfolder per class; create it "
                           f"(root/train/<class>/<image>) or point dataset.root at the right folder")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"{train_dir} has no class subfolders; put images at {train_dir}/<class>/<image>")
    data = train_data = _imagefolder_split(train_dir, classes, image_size)
    if not train:
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

    def decode() -> dict:
        images = decode_images(paths, image_size)
        mean, std = _channel_mean_std(images)
        return {"images": images, "labels": torch.tensor(labels, dtype=torch.int64), "mean": mean, "std": std}

    fingerprint = {"num_files": len(paths), "total_bytes": sum(p.stat().st_size for p in paths), "classes": classes}
    return cached(split_dir.parent / f".dlb_cache_{split_dir.name}_{image_size}.pt", fingerprint, decode)


def _channel_mean_std(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std in [0,1] units, accumulated in float64 chunks to bound memory."""
    total, total_sq = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for x in (chunk.to(torch.float64) / 255 for chunk in images.split(1024)):
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    return mean.tolist(), (total_sq / count - mean * mean).clamp_min(0).sqrt().tolist()
