"""Tiny fake datasets written in the real on-disk formats, for tests.

Each writer is deterministic, so a test can regenerate the expected pixels and labels and
compare them with what the loader returns.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from dlb.data.datasets.cifar import write_py2_pickle


# ---------------------------------------------------------------- CIFAR


def fake_cifar_split(name: str, train: bool, n: int) -> tuple[np.ndarray, list[int]]:
    """The deterministic rows a fake CIFAR split holds: data uint8 (n, 3072) and labels."""
    num_classes = 10 if name == "cifar10" else 100
    rng = np.random.default_rng(1 if train else 2)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, num_classes, n).tolist()


def cifar_class_names(name: str) -> list[str]:
    return [f"class_{i}" for i in range(10 if name == "cifar10" else 100)]


def write_fake_cifar(root, name: str = "cifar10", n_train: int = 10, n_test: int = 4, monkeypatch=None) -> dict[str, str]:
    """Write a fake extracted CIFAR archive under root; return {file name: md5}.

    With a pytest monkeypatch fixture, torchvision's CIFAR md5 lists are patched to these files' md5s."""
    import torchvision

    spec = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    folder = Path(root) / spec.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "labels" if name == "cifar10" else "fine_labels"
    train_data, train_labels = fake_cifar_split(name, True, n_train)
    test_data, test_labels = fake_cifar_split(name, False, n_test)

    md5s = {}
    train_files = [fname for fname, _ in spec.train_list]
    for i, (fname, index) in enumerate(zip(train_files, np.array_split(np.arange(n_train), len(train_files)))):
        batch = {"batch_label": f"training batch {i + 1} of {len(train_files)}", label_key: [train_labels[j] for j in index],
                 "data": train_data[index], "filenames": [f"img_{j}.png" for j in index]}
        if name == "cifar100":
            batch["coarse_labels"] = [label // 5 for label in batch[label_key]]
        md5s[fname] = write_py2_pickle(folder / fname, batch)
    test_file = spec.test_list[0][0]
    batch = {"batch_label": "testing batch 1 of 1", label_key: test_labels, "data": test_data,
             "filenames": [f"test_{j}.png" for j in range(n_test)]}
    if name == "cifar100":
        batch["coarse_labels"] = [label // 5 for label in test_labels]
    md5s[test_file] = write_py2_pickle(folder / test_file, batch)

    if name == "cifar10":
        meta = {"num_cases_per_batch": 10000, "label_names": cifar_class_names(name), "num_vis": 3072}
    else:
        meta = {"fine_label_names": cifar_class_names(name), "coarse_label_names": [f"super_{i}" for i in range(20)]}
    md5s[spec.meta["filename"]] = write_py2_pickle(folder / spec.meta["filename"], meta)

    if monkeypatch is not None:
        monkeypatch.setattr(spec, "train_list", [[f, md5s[f]] for f in train_files])
        monkeypatch.setattr(spec, "test_list", [[test_file, md5s[test_file]]])
        monkeypatch.setattr(spec, "meta", {**spec.meta, "md5": md5s[spec.meta["filename"]]})
    return md5s


# ---------------------------------------------------------------- Fashion-MNIST (idx files)


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    """Write a uint8 idx file: magic 0x0000080N (N = ndim), big-endian uint32 dims, then the bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        Path(path).write_bytes(payload)


def write_fake_fashion_mnist(folder, n_train: int = 6, n_test: int = 3, gz: bool = True) -> dict[str, np.ndarray]:
    """Write the four idx files into folder; return the arrays (28x28 images, labels) written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8)}
    for stem, array in arrays.items():
        write_idx(folder / stem, array, gz)
    return arrays


# ---------------------------------------------------------------- TinyImageNet


def tinyimagenet_colour(class_index: int) -> tuple[int, int, int]:
    """The flat colour of every fake image of a class (JPEG keeps flat colours almost exactly)."""
    return (40 * class_index % 256, 255 - 30 * class_index % 256, 100)


def write_fake_tinyimagenet(root, n_classes: int = 3, n_train_per_class: int = 4, n_val_per_class: int = 2,
                            reorganised: bool = False) -> list[str]:
    """Write root/tiny-imagenet-200 as the zip extracts it (or, with reorganised=True, with val/ already in
    class folders); return the wnids in their sorted (= label) order. Each class's images have one flat colour;
    the first train image of each class is greyscale, as some real ones are."""
    base = Path(root) / "tiny-imagenet-200"
    wnids = [f"n{1000 + 7 * i:08d}" for i in range(n_classes)]
    # wnids.txt is not sorted in the real archive either.
    (base).mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in reversed(wnids)))
    (base / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in wnids))
    for c, wnid in enumerate(wnids):
        images = base / "train" / wnid / "images"
        images.mkdir(parents=True)
        boxes = []
        for i in range(n_train_per_class):
            img = Image.new("RGB", (64, 64), tinyimagenet_colour(c))
            (img.convert("L") if i == 0 else img).save(images / f"{wnid}_{i}.JPEG", quality=95)
            boxes.append(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))

    annotations, k = [], 0
    for c, wnid in enumerate(wnids):
        for _ in range(n_val_per_class):
            folder = base / "val" / (wnid if reorganised else "images")
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), tinyimagenet_colour(c)).save(folder / f"val_{k}.JPEG", quality=95)
            annotations.append(f"val_{k}.JPEG\t{wnid}\t1\t2\t60\t61\n")
            k += 1
    (base / "val" / "val_annotations.txt").write_text("".join(annotations))
    (base / "test" / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64), (0, 0, 0)).save(base / "test" / "images" / "test_0.JPEG")
    return sorted(wnids)


# ---------------------------------------------------------------- class-per-folder


def write_fake_imagefolder(root, classes=("cat", "dog", "emu"), n_train_per_class: int = 3, n_test_per_class: int = 2,
                           size: tuple[int, int] = (8, 8), test_dir: str = "val") -> dict[str, list[tuple[Path, int, np.ndarray]]]:
    """Write root/{train,test_dir}/<class>/<i>.png with random pixels (size = width, height); return per split the
    (path, label, HxWx3 uint8 pixels) of every image in the order the loader sorts them. The last image of each
    class is saved greyscale (its expected pixels are the grey value replicated) and a stray .txt file is added."""
    rng = np.random.default_rng(4)
    written = {}
    for split, n in (("train", n_train_per_class), (test_dir, n_test_per_class)):
        written[split] = []
        for label, name in enumerate(sorted(classes)):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "notes.txt").write_text("not an image")
            for i in range(n):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                if i == n - 1:
                    pixels[:] = pixels[..., :1]  # grey: all channels equal
                    Image.fromarray(pixels[..., 0], mode="L").save(folder / f"{i:03d}.png")
                else:
                    Image.fromarray(pixels).save(folder / f"{i:03d}.png")
                written[split].append((folder / f"{i:03d}.png", label, pixels))
    return written


def subprocess_env_for_fake_cifar(md5s_by_name: dict[str, dict[str, str]], tmp_dir) -> dict[str, str]:
    """Environment for a child process that must accept fake CIFAR files (see tests/subproc/sitecustomize.py)."""
    import json
    import os

    path = Path(tmp_dir) / "fake_md5.json"
    path.write_text(json.dumps(md5s_by_name))
    here = Path(__file__).resolve().parent
    pythonpath = os.pathsep.join([str(here / "subproc"), str(here), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "DLB_TEST_FAKE_MD5": str(path), "PYTHONPATH": pythonpath}
