"""TinyImageNet: 200 classes of 64x64 JPEGs, trained at 32 like the official code (augment=rrc_flip:
RandomResizedCrop(32) + flip; test images Resize(32)). Prepare once (download, val/ into class folders):
    python scripts/prepare_tinyimagenet.py --root data --download
The decoded images are cached next to the data (cache_train.pt, cache_val.pt)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from dlb import REPO
from dlb.data.datasets.base import ArrayDataset, cached, decode_images, register_dataset
from dlb.errors import DatasetError

PREPARE_TINYIMAGENET = REPO / "scripts" / "prepare_tinyimagenet.py"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@register_dataset("tinyimagenet", train_size=100000, test_size=10000, augment="rrc_flip", image_size=32)
def load_tinyimagenet(root: Path, train: bool, download: bool, image_size: int) -> ArrayDataset:
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
    classes = sorted(wnids_file.read_text().split() if wnids_file.is_file()  # one wnid a line
                     else (d.name for d in (base / "train").iterdir() if d.is_dir()))
    split = "train" if train else "val"
    paths, labels = [], []
    for label, wnid in enumerate(classes):
        class_dir = base / "train" / wnid / "images" if train else base / "val" / wnid
        files = sorted(p for p in class_dir.glob("*") if p.suffix.lower() in (".jpeg", ".jpg"))  # none if missing
        if not files:
            raise DatasetError(f"TinyImageNet class folder {class_dir} is missing or has no JPEGs; delete {base} "
                               f"and run `{prepare} --download`")
        paths += files
        labels += [label] * len(files)
    extra = sorted({d.name for d in (base / split).iterdir() if d.is_dir()} - set(classes))
    if extra:
        raise DatasetError(f"TinyImageNet {split}/ has folders {extra[:5]} that are not classes in {wnids_file}; "
                           f"delete {base} and run `{prepare} --download`")

    def decode() -> dict:
        images = decode_images(paths)
        if images.shape[2:] != (64, 64):
            raise DatasetError(f"TinyImageNet images must be 64x64 but {paths[0]} is {images.shape[3]}x"
                               f"{images.shape[2]}; delete {base} and run `{prepare} --download`")
        return {"images": images, "labels": torch.tensor(labels, dtype=torch.int64), "classes": classes}

    cache = cached(base / f"cache_{split}.pt", {"num_files": len(paths), "classes": classes}, decode)
    return ArrayDataset(cache["images"], cache["labels"], len(classes), IMAGENET_MEAN, IMAGENET_STD,
                        "tinyimagenet", classes)

