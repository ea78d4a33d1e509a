import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from dlb.data.datasets import DATASETS, ArrayDataset, cifar, fashion_mnist, imagefolder, load_dataset, tinyimagenet
from dlb.errors import DatasetError
from tests.fakedata import (cifar_class_names, fake_cifar_split, tinyimagenet_colour, write_fake_cifar,
                            write_fake_fashion_mnist, write_fake_imagefolder, write_fake_tinyimagenet)

REPO = Path(__file__).resolve().parents[1]


def _import_prepare_script():
    spec = importlib.util.spec_from_file_location("prepare_tinyimagenet", REPO / "scripts" / "prepare_tinyimagenet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare_tinyimagenet = _import_prepare_script()


def _check_arrays(ds: ArrayDataset, n: int, size: int):
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (n, 3, size, size) and ds.images.is_contiguous()
    assert ds.labels.dtype == torch.int64 and ds.labels.shape == (n,)
    assert len(ds) == n
    assert len(ds.mean) == 3 and len(ds.std) == 3


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10), ("cifar100", 100)])
@pytest.mark.parametrize("train", [True, False])
def test_cifar_round_trip(tmp_path, monkeypatch, name, num_classes, train):
    write_fake_cifar(tmp_path, name, n_train=11, n_test=4, monkeypatch=monkeypatch)
    ds = load_dataset(name, str(tmp_path), train)
    n = 11 if train else 4
    _check_arrays(ds, n, 32)
    data, labels = fake_cifar_split(name, train, n)
    # Rows are R plane, G plane, B plane: the loaded image must be exactly that, channel-first.
    assert torch.equal(ds.images, torch.from_numpy(data).reshape(n, 3, 32, 32))
    assert ds.labels.tolist() == labels
    assert ds.num_classes == num_classes and ds.classes == cifar_class_names(name) and ds.name == name
    assert ds.mean == ((0.4914, 0.4822, 0.4465) if name == "cifar10" else (0.5071, 0.4865, 0.4409))


def test_fake_cifar_is_readable_by_torchvision(tmp_path, monkeypatch):
    # Cross-check that the fake files really have the archive's format.
    write_fake_cifar(tmp_path, "cifar100", n_train=5, n_test=2, monkeypatch=monkeypatch)
    ref = torchvision.datasets.CIFAR100(str(tmp_path), train=True)
    ours = load_dataset("cifar100", str(tmp_path), train=True)
    assert torch.equal(ours.images, torch.from_numpy(ref.data).permute(0, 3, 1, 2))
    assert ours.labels.tolist() == ref.targets and ours.classes == ref.classes


def test_cifar_md5_mismatch(tmp_path, monkeypatch):
    md5s = write_fake_cifar(tmp_path, "cifar10", monkeypatch=monkeypatch)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes() + b"x")
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", str(tmp_path), train=True)
    message = str(err.value)
    assert str(batch) in message and "md5" in message and md5s["data_batch_3"] in message
    assert "dataset.download=true" in message and "delete" in message


def test_cifar_real_md5s_reject_fake_files(tmp_path):
    write_fake_cifar(tmp_path, "cifar100")  # torchvision's real md5 lists left in place
    with pytest.raises(DatasetError, match="md5"):
        load_dataset("cifar100", str(tmp_path), train=False)


def test_cifar_missing(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar100", str(tmp_path), train=True)
    message = str(err.value)
    assert str(tmp_path / "cifar-100-python" / "train") in message
    assert "dataset.download=true" in message and str(tmp_path / "cifar-100-python") in message


def test_cifar_download_uses_torchvision_archive(tmp_path, monkeypatch):
    write_fake_cifar(tmp_path / "staging", "cifar10", n_train=5, n_test=3, monkeypatch=monkeypatch)  # patch md5s
    calls = []

    def fake_download(url, root, filename=None, md5=None):
        calls.append((url, root, filename, md5))
        write_fake_cifar(root, "cifar10", n_train=5, n_test=3)  # same bytes as in staging

    monkeypatch.setattr(cifar, "download_and_extract_archive", fake_download)
    spec = torchvision.datasets.CIFAR10
    ds = load_dataset("cifar10", str(tmp_path), train=False, download=True)
    assert calls == [(spec.url, str(tmp_path), spec.filename, spec.tgz_md5)] and len(ds) == 3
    load_dataset("cifar10", str(tmp_path), train=True, download=True)
    assert len(calls) == 1  # present now: no second download


def test_cifar_download_failure_is_a_dataset_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(DatasetError, match="Network is unreachable"):
        load_dataset("cifar10", str(tmp_path), train=True, download=True)


# ---------------------------------------------------------------- Fashion-MNIST


@pytest.mark.skipif(not fashion_mnist.FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_real_debian_files(tmp_path):
    for train, n in ((True, 60000), (False, 10000)):
        ds = load_dataset("fashion_mnist", str(tmp_path), train)
        _check_arrays(ds, n, 32)
        assert ds.labels.min() == 0 and ds.labels.max() == 9
        assert torch.bincount(ds.labels).tolist() == [n // 10] * 10
        border = torch.ones(32, 32, dtype=torch.bool)
        border[2:30, 2:30] = False
        assert ds.images[:, :, border].max() == 0  # the 2-pixel padding is black
        assert ds.images[:, :, ~border].max() > 0
        assert torch.equal(ds.images[:, 0], ds.images[:, 2])
        if train:  # the normalisation constants are those of this padded train set
            x = ds.images[:, 0].double() / 255
            assert abs(x.mean().item() - ds.mean[0]) < 5e-4 and abs(x.std().item() - ds.std[0]) < 5e-4


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_fake_idx_in_torchvision_layout(tmp_path, gz):
    arrays = write_fake_fashion_mnist(tmp_path / "FashionMNIST" / "raw", n_train=6, n_test=3, gz=gz)
    for train, prefix, n in ((True, "train", 6), (False, "t10k", 3)):
        ds = load_dataset("fashion_mnist", str(tmp_path), train)
        _check_arrays(ds, n, 32)
        expected = torch.zeros(n, 32, 32, dtype=torch.uint8)
        expected[:, 2:30, 2:30] = torch.from_numpy(arrays[f"{prefix}-images-idx3-ubyte"])
        assert all(torch.equal(ds.images[:, c], expected) for c in range(3))
        assert ds.labels.tolist() == arrays[f"{prefix}-labels-idx1-ubyte"].tolist()
        assert ds.classes == torchvision.datasets.FashionMNIST.classes and ds.num_classes == 10


def test_fashion_mnist_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion_mnist", str(tmp_path), train=True)
    assert "apt-get install -y dataset-fashion-mnist" in str(err.value)
    assert "dataset.download=true" in str(err.value)


def test_fashion_mnist_bad_magic(tmp_path):
    write_fake_fashion_mnist(tmp_path / "fashion-mnist", gz=False)
    (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03" + bytes(12))
    with pytest.raises(DatasetError, match="magic number 2051, expected 2049"):
        load_dataset("fashion_mnist", str(tmp_path), train=False)


# ---------------------------------------------------------------- TinyImageNet


def test_prepare_reorganises_val_and_is_idempotent(tmp_path, capsys):
    wnids = write_fake_tinyimagenet(tmp_path, n_classes=3, n_train_per_class=4, n_val_per_class=2)
    val = tmp_path / "tiny-imagenet-200" / "val"
    assert prepare_tinyimagenet.reorganise_val(tmp_path) == 6
    assert not (val / "images").exists()
    layout = sorted(str(p.relative_to(val)) for p in val.rglob("*.JPEG"))
    assert layout == [f"{w}/val_{2 * c + i}.JPEG" for c, w in enumerate(wnids) for i in range(2)]
    assert prepare_tinyimagenet.reorganise_val(tmp_path) == 0
    assert sorted(str(p.relative_to(val)) for p in val.rglob("*.JPEG")) == layout

    argv = ["--root", str(tmp_path), "--expect-classes", "3", "--expect-per-class", "4", "2"]
    assert prepare_tinyimagenet.main(argv) == 0
    assert "verified 3 classes" in capsys.readouterr().out
    assert prepare_tinyimagenet.main(["--root", str(tmp_path)]) == 2  # the real 200 x 500/50 counts
    assert "expected 200" in capsys.readouterr().err
    assert prepare_tinyimagenet.main(["--root", str(tmp_path), "--no-verify"]) == 0


def test_prepare_resumes_interrupted_reorganisation(tmp_path):
    wnids = write_fake_tinyimagenet(tmp_path, n_classes=2, n_train_per_class=1, n_val_per_class=2)
    val = tmp_path / "tiny-imagenet-200" / "val"
    (val / wnids[0]).mkdir()
    (val / "images" / "val_0.JPEG").replace(val / wnids[0] / "val_0.JPEG")  # as if stopped after one move
    assert prepare_tinyimagenet.reorganise_val(tmp_path) == 3
    prepare_tinyimagenet.verify_counts(tmp_path, n_classes=2, train_per_class=1, val_per_class=2)
    with pytest.raises(prepare_tinyimagenet.PrepareError, match="do not have 3 images"):
        prepare_tinyimagenet.verify_counts(tmp_path, n_classes=2, train_per_class=1, val_per_class=3)


def test_prepare_script_command_line_when_missing(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_tinyimagenet.py"), "--root", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--download" in result.stderr


def test_tinyimagenet_load_and_cache(tmp_path, monkeypatch):
    wnids = write_fake_tinyimagenet(tmp_path, n_classes=3, n_train_per_class=4, n_val_per_class=2, reorganised=True)
    train = load_dataset("tinyimagenet", str(tmp_path), train=True)
    _check_arrays(train, 12, 64)
    assert train.classes == wnids and train.num_classes == 3 and train.mean == (0.485, 0.456, 0.406)
    assert train.labels.tolist() == [c for c in range(3) for _ in range(4)]
    for i, label in enumerate(train.labels.tolist()):
        pixel = train.images[i, :, 32, 32].int()
        if i % 4 == 0:  # the greyscale JPEG: converted to RGB, all channels equal
            assert pixel[0] == pixel[1] == pixel[2]
        else:
            assert (pixel - torch.tensor(tinyimagenet_colour(label))).abs().max() <= 3
    val = load_dataset("tinyimagenet", str(tmp_path), train=False)
    _check_arrays(val, 6, 64)
    assert val.labels.tolist() == [0, 0, 1, 1, 2, 2]
    base = tmp_path / "tiny-imagenet-200"
    assert (base / "cache_train.pt").is_file() and (base / "cache_val.pt").is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache matches")

    monkeypatch.setattr(tinyimagenet, "decode_images", no_decoding)
    again = load_dataset("tinyimagenet", str(tmp_path), train=True)
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)

    # One more file changes the fingerprint, so the cache is rebuilt.
    (base / "val" / wnids[2] / "extra.JPEG").write_bytes((base / "val" / wnids[2] / "val_4.JPEG").read_bytes())
    with pytest.raises(AssertionError, match="decoded although"):
        load_dataset("tinyimagenet", str(tmp_path), train=False)


def test_tinyimagenet_not_reorganised(tmp_path):
    write_fake_tinyimagenet(tmp_path, n_classes=2, n_train_per_class=1, n_val_per_class=1)
    with pytest.raises(DatasetError) as err:
        load_dataset("tinyimagenet", str(tmp_path), train=False)
    assert f"python scripts/prepare_tinyimagenet.py --root {tmp_path}" in str(err.value)
    assert "--download" not in str(err.value)


def test_tinyimagenet_missing(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("tinyimagenet", str(tmp_path), train=True)
    assert f"python scripts/prepare_tinyimagenet.py --root {tmp_path} --download" in str(err.value)


def test_tinyimagenet_download_runs_prepare_script(tmp_path, monkeypatch):
    write_fake_tinyimagenet(tmp_path, n_classes=2, n_train_per_class=2, n_val_per_class=1)
    commands = []

    def run_in_process(command, **kwargs):
        commands.append(command)
        # Tiny fake data cannot pass the real-size count check, so skip it here.
        return subprocess.CompletedProcess(command, prepare_tinyimagenet.main(command[2:] + ["--no-verify"]))

    monkeypatch.setattr(tinyimagenet.subprocess, "run", run_in_process)
    ds = load_dataset("tinyimagenet", str(tmp_path), train=False, download=True)
    assert commands == [[sys.executable, str(REPO / "scripts" / "prepare_tinyimagenet.py"), "--root", str(tmp_path),
                         "--download"]]
    assert len(ds) == 2


def test_tinyimagenet_empty_class_and_wrong_size(tmp_path):
    wnids = write_fake_tinyimagenet(tmp_path, n_classes=2, n_train_per_class=2, n_val_per_class=1, reorganised=True)
    val = tmp_path / "tiny-imagenet-200" / "val"
    (val / wnids[1] / "val_1.JPEG").unlink()
    with pytest.raises(DatasetError, match=f"{val / wnids[1]} is missing or has no JPEGs"):
        load_dataset("tinyimagenet", str(tmp_path), train=False)
    from PIL import Image
    Image.new("RGB", (32, 32)).save(val / wnids[1] / "small.JPEG")
    with pytest.raises(DatasetError, match="small.JPEG is 32x32"):
        load_dataset("tinyimagenet", str(tmp_path), train=False)


# ---------------------------------------------------------------- imagefolder


def test_imagefolder_exact_pixels_and_splits(tmp_path):
    written = write_fake_imagefolder(tmp_path, size=(8, 8), test_dir="val")
    train = load_dataset("imagefolder", str(tmp_path), train=True, image_size=8)
    _check_arrays(train, 9, 8)
    assert train.classes == ["cat", "dog", "emu"] and train.num_classes == 3 and train.name == "imagefolder"
    for i, (_, label, pixels) in enumerate(written["train"]):
        assert torch.equal(train.images[i], torch.from_numpy(pixels).permute(2, 0, 1))
        assert train.labels[i] == label
    x = train.images.double() / 255
    assert np.allclose(train.mean, x.mean(dim=(0, 2, 3)).tolist())
    assert np.allclose(train.std, x.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False).tolist())

    val = load_dataset("imagefolder", str(tmp_path), train=False, image_size=8)
    _check_arrays(val, 6, 8)
    assert val.labels.tolist() == [label for _, label, _ in written["val"]]
    assert val.mean == train.mean and val.std == train.std  # normalised with train statistics


def test_imagefolder_resize_prefers_test_and_caches(tmp_path, monkeypatch):
    write_fake_imagefolder(tmp_path, size=(20, 12), test_dir="val")
    write_fake_imagefolder(tmp_path / "t", classes=("cat",), n_test_per_class=4, size=(5, 30), test_dir="test")
    (tmp_path / "t" / "test").rename(tmp_path / "test")
    test = load_dataset("imagefolder", str(tmp_path), train=False, image_size=16)
    _check_arrays(test, 4, 16)  # test/ wins over val/
    assert test.labels.tolist() == [0] * 4
    train16 = load_dataset("imagefolder", str(tmp_path), train=True, image_size=16)
    assert (tmp_path / ".dlb_cache_train_16.pt").is_file() and (tmp_path / ".dlb_cache_test_16.pt").is_file()

    real_decode = imagefolder.decode_images
    monkeypatch.setattr(imagefolder, "decode_images", lambda *a, **k: pytest.fail("decoded although the cache matches"))
    assert torch.equal(load_dataset("imagefolder", str(tmp_path), train=True, image_size=16).images, train16.images)
    monkeypatch.setattr(imagefolder, "decode_images", real_decode)
    train24 = load_dataset("imagefolder", str(tmp_path), train=True, image_size=24)  # own cache per size
    _check_arrays(train24, 9, 24)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DatasetError, match="train"):
        load_dataset("imagefolder", str(tmp_path), train=True)
    write_fake_imagefolder(tmp_path, classes=("a", "b"))
    (tmp_path / "val" / "zebra").mkdir()
    with pytest.raises(DatasetError, match="zebra"):
        load_dataset("imagefolder", str(tmp_path), train=False)
    (tmp_path / "val" / "zebra").rmdir()
    (tmp_path / "train" / "c").mkdir()
    with pytest.raises(DatasetError, match=f"{tmp_path / 'train' / 'c'} has no images"):
        load_dataset("imagefolder", str(tmp_path), train=True)


# ---------------------------------------------------------------- common


def test_subset_keeps_metadata(tmp_path):
    write_fake_imagefolder(tmp_path)
    ds = load_dataset("imagefolder", str(tmp_path), train=True, image_size=8)
    part = ds.subset(torch.tensor([4, 0, 4]))
    assert torch.equal(part.images, ds.images[[4, 0, 4]]) and part.labels.tolist() == [1, 0, 1]
    assert part.images.is_contiguous() and len(part) == 3
    assert (part.num_classes, part.mean, part.std, part.name, part.classes) == \
           (ds.num_classes, ds.mean, ds.std, ds.name, ds.classes)
    assert len(ds.subset(ds.labels == 2)) == 3


def test_array_dataset_rejects_wrong_dtypes():
    with pytest.raises(ValueError):
        ArrayDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64), 2, (0,) * 3, (1,) * 3, "x")
    with pytest.raises(ValueError):
        ArrayDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), 2, (0,) * 3,
                     (1,) * 3, "x")


def test_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", str(tmp_path), train=True)
    assert all(name in str(err.value) for name in DATASETS)


def test_a_subset_larger_than_the_split_is_one_line_and_exit_code_2(tmp_path):
    write_fake_fashion_mnist(tmp_path / "FashionMNIST" / "raw", n_train=40, n_test=20)
    r = subprocess.run([sys.executable, "-m", "dlb.train", "dataset=fashion_mnist", f"dataset.root={tmp_path}",
                        "dataset.train_subset=10000000", "backbone=resnet8", "debug=step",
                        f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "dlb: error: dataset.train_subset=10000000: dataset=fashion_mnist's training split has only 60000 images; "
        "use at most 60000, or null for the whole split"], r.stderr[-2000:]
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize("name,key,size", [("cifar10", "test_subset", 10000), ("tinyimagenet", "train_subset", 100000)])
def test_a_subset_is_checked_against_the_declared_split_size(name, key, size):
    from dlb.config import compose, validate
    from dlb.errors import ConfigError

    validate(compose([f"dataset={name}", f"dataset.{key}={size}"]))  # all of it: allowed
    too_many = compose([f"dataset={name}", f"dataset.{key}={size + 1}"])
    with pytest.raises(ConfigError, match=rf"^dataset\.{key}={size + 1}: .* has only {size} images; use at most"):
        validate(too_many)
