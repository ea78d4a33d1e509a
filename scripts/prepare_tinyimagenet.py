"""Download TinyImageNet and reorganise its val/ split into class folders.

    python scripts/prepare_tinyimagenet.py --root data [--download]

Afterwards root/tiny-imagenet-200 has train/<wnid>/images/*.JPEG and val/<wnid>/*.JPEG,
which is what `dlb.data.datasets.load_dataset("tinyimagenet", root, ...)` reads. Safe to run
again: finished steps are skipped. Exit code 2 on any problem.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
FOLDER = "tiny-imagenet-200"


class PrepareError(Exception):
    """A problem with the data on disk; the message says what and how to fix it."""


def redownload(root: Path) -> str:
    """The fix for a damaged copy: remove it and fetch it again."""
    root = Path(root)
    return f"delete {root / FOLDER} and run `python scripts/prepare_tinyimagenet.py --root {root} --download`"


def download(root: Path) -> bool:
    """Download and extract the archive into root unless the extracted folder is already there; True if downloaded."""
    base = Path(root) / FOLDER
    if (base / "wnids.txt").is_file() and (base / "train").is_dir():
        # Re-extracting would put the moved val images back into val/images.
        return False
    from torchvision.datasets.utils import download_and_extract_archive  # imported late: the other steps need no torch

    try:
        download_and_extract_archive(URL, str(root), filename=f"{FOLDER}.zip", md5=MD5)
    except Exception as exc:  # network errors come in many types; all mean the same thing to the user
        raise PrepareError(f"downloading {URL} failed ({exc}); check internet access, or download it elsewhere "
                           f"and unzip it into {root}") from exc
    return True


def reorganise_val(root: Path) -> int:
    """Move val/images/<file> to val/<wnid>/<file> using val_annotations.txt; return how many files moved."""
    val = Path(root) / FOLDER / "val"
    images = val / "images"
    if not images.is_dir():
        return 0  # already reorganised
    annotations = val / "val_annotations.txt"
    if not annotations.is_file():
        raise PrepareError(f"{annotations} is missing, so val images cannot be sorted into classes; {redownload(root)}")
    wnids_file = val.parent / "wnids.txt"
    wnids = set(wnids_file.read_text().split()) if wnids_file.is_file() else None

    moved = 0
    for line_number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise PrepareError(f"{annotations} line {line_number} is malformed ({line!r}); {redownload(root)}")
        filename, wnid = fields[0], fields[1]
        if wnids is not None and wnid not in wnids:
            raise PrepareError(f"{annotations} line {line_number} names class {wnid} that is not in {wnids_file}; "
                               f"{redownload(root)}")
        source, target = images / filename, val / wnid / filename
        if source.is_file():
            target.parent.mkdir(exist_ok=True)
            source.replace(target)  # a move within one folder tree: no copy, no extra disk space
            moved += 1
        elif not target.is_file():
            raise PrepareError(f"val image {filename} from {annotations} is in neither {images} nor {target.parent}; "
                               f"{redownload(root)}")
    left = sorted(p.name for p in images.iterdir())
    if left:
        raise PrepareError(f"{images} still holds {len(left)} files not listed in {annotations} (e.g. {left[0]}); "
                           f"{redownload(root)}")
    images.rmdir()  # its absence is how the loader knows val/ is reorganised
    return moved


def count_images(root: Path) -> dict[str, dict[str, int]]:
    """{"train": {wnid: n}, "val": {wnid: n}} for the reorganised layout."""
    base = Path(root) / FOLDER
    counts = {}
    for split, pattern in (("train", "images/*.JPEG"), ("val", "*.JPEG")):
        split_dir = base / split
        counts[split] = {d.name: len(list(d.glob(pattern))) for d in sorted(split_dir.iterdir()) if d.is_dir()} \
            if split_dir.is_dir() else {}
    return counts


def verify_counts(root: Path, n_classes: int = 200, train_per_class: int = 500, val_per_class: int = 50) -> None:
    """Check the class count and images per class of the reorganised layout; raise PrepareError on a mismatch."""
    counts = count_images(root)
    base = Path(root) / FOLDER
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        if len(counts[split]) != n_classes:
            raise PrepareError(f"{base / split} has {len(counts[split])} class folders, expected {n_classes}; "
                               f"{redownload(root)} (for a smaller copy pass --expect-classes / --expect-per-class)")
        wrong = {wnid: n for wnid, n in counts[split].items() if n != per_class}
        if wrong:
            wnid, n = next(iter(wrong.items()))
            raise PrepareError(f"{len(wrong)} {split} classes do not have {per_class} images (e.g. {base / split / wnid} "
                               f"has {n}); {redownload(root)} (for a smaller copy pass --expect-classes / --expect-per-class)")


def prepare(root: Path, download_archive: bool = False, verify: bool = True, n_classes: int = 200,
            expect_per_class: tuple[int, int] = (500, 50)) -> None:
    """Download (if asked), reorganise val/, verify counts (if asked); print each step."""
    root = Path(root).expanduser()
    base = root / FOLDER
    if download_archive:
        print(f"downloaded and extracted {URL} into {root}" if download(root) else f"{base} already present, not downloading")
    if not (base / "train").is_dir() or not (base / "val").is_dir():
        raise PrepareError(f"TinyImageNet not found at {base}; run `python scripts/prepare_tinyimagenet.py "
                           f"--root {root} --download` (needs internet)")
    moved = reorganise_val(root)
    print(f"moved {moved} val images into class folders under {base / 'val'}" if moved
          else f"{base / 'val'} already organised in class folders")
    if verify:
        verify_counts(root, n_classes, *expect_per_class)
        print(f"verified {n_classes} classes with {expect_per_class[0]} train / {expect_per_class[1]} val images each")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, type=Path, help="folder that holds (or will hold) tiny-imagenet-200/")
    parser.add_argument("--download", action="store_true", help=f"download {URL} first if not present")
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                        help="check class and image counts (default: on)")
    parser.add_argument("--expect-classes", type=int, default=200, metavar="N")
    parser.add_argument("--expect-per-class", type=int, nargs=2, default=(500, 50), metavar=("TRAIN", "VAL"))
    args = parser.parse_args(argv)
    try:
        prepare(args.root, args.download, args.verify, args.expect_classes, tuple(args.expect_per_class))
    except (PrepareError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
