"""DLB_PLUGINS: a dataset (or method, tests/test_package.py) from a file outside the source tree, and one line with
exit code 2 for a plugin that is missing or fails."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

BLOBS = '''
"""A generated dataset: four classes of flat grey levels with a little noise."""
import torch

from dlb.data.datasets.base import ArrayDataset, register_dataset


@register_dataset("blobs", train_size=300, test_size=260, augment="none")
def load_blobs(root, train, download, image_size):
    n = 300 if train else 260
    labels = torch.arange(n) % 4
    noise = torch.randint(0, 20, (n, 3, image_size, image_size), generator=torch.Generator().manual_seed(int(train)))
    images = (labels[:, None, None, None] * 60 + noise).to(torch.uint8)
    return ArrayDataset(images, labels, 4, (0.45,) * 3, (0.3,) * 3, "blobs", ["a", "b", "c", "d"])
'''

CHECK = '''
from dlb.config import compose, validate
from dlb.groups import group_options
from dlb.data.datasets import TRAIN_SIZES
from dlb.errors import ConfigError
assert "blobs" in group_options("dataset") and TRAIN_SIZES["blobs"] == 300, (group_options("dataset"), TRAIN_SIZES)
assert compose(["dataset=blobs"]).dataset.augment == "none"
try:
    validate(compose(["dataset=blobs", "dataset.test_subset=261"]))
except ConfigError as e:
    print(e)
'''


def plugin_env(*paths) -> dict:
    return {**os.environ, "DLB_PLUGINS": os.pathsep.join(map(str, paths)), "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


def test_a_dataset_from_a_plugin_file_is_an_option_and_trains(tmp_path):
    (tmp_path / "blobs.py").write_text(BLOBS)
    env = plugin_env(tmp_path / "blobs.py")
    r = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == ("dataset.test_subset=261: dataset=blobs's test split has only 260 images; use at "
                                "most 260, or null for the whole split")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "dlb.train", "dataset=blobs", "backbone=resnet8", "method=dlb",
                        "debug=step", f"hydra.run.dir={out}"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["dataset"] == "blobs"
    assert (summary["data"]["train_size"], summary["data"]["num_classes"]) == (300, 4)


TINY_NET = '''
"""A backbone in one file: a timm model registered by name (any timm model trains as backbone=timm backbone.name=...)."""
from timm.models import register_model
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes=10, **kwargs):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


@register_model
def tiny_plugin_net(pretrained=False, **kwargs):
    return TinyNet(**kwargs)
'''


def test_a_backbone_from_a_plugin_file_trains_through_timms_registry(tmp_path):
    """Adding a backbone is one file: a @register_model function, used as backbone=timm backbone.name=<it>."""
    (tmp_path / "tiny_net.py").write_text(TINY_NET)
    (tmp_path / "blobs.py").write_text(BLOBS)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "dlb.train", "dataset=blobs", "backbone=timm",
                        "backbone.name=tiny_plugin_net", "method=dlb", "debug=step", f"hydra.run.dir={out}"], cwd=REPO,
                       env=plugin_env(tmp_path),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["backbone"] == "tiny_plugin_net"
    assert summary["num_params"] == 3 * 8 * 9 + 8 + 2 * 8 + 8 * 4 + 4


@pytest.mark.parametrize("plugin,message", [
    (None, r"^dlb: error: DLB_PLUGINS: \S+nowhere\.py is not a \.py file or a folder; fix the path, or remove it "
           r"from DLB_PLUGINS$"),
    ("x = 1\nraise RuntimeError('no data here')\n",
     r"^dlb: error: DLB_PLUGINS: importing \S+broken\.py failed \(RuntimeError, line 2: no data here\); fix that "
     r"file, or remove it from DLB_PLUGINS$"),
    ("from dlb.data.datasets.base import register_dataset\nregister_dataset('cifar10')(print)\n",
     r"^dlb: error: DLB_PLUGINS: importing \S+broken\.py failed \(ValueError, line 2: dataset 'cifar10' is registered "
     r"twice .*\); fix that file, or remove it from DLB_PLUGINS$"),
])
def test_a_bad_plugin_is_one_line_and_exit_code_2(tmp_path, plugin, message):
    path = tmp_path / ("nowhere.py" if plugin is None else "broken.py")
    if plugin is not None:
        path.write_text(plugin)
    r = subprocess.run([sys.executable, "-m", "dlb.train", "--cfg", "job"], cwd=REPO, env=plugin_env(path),
                       capture_output=True, text=True, timeout=300)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert re.match(message, lines[0]), lines[0]
