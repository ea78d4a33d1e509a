"""Tests for dlb.models: timm registration, output shapes, parameter counts, init."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import functools

import pytest
import timm
import torch
import torch.nn as nn

import dlb.models  # noqa: F401  (registers the cifar_* models)

# name -> (params in millions for a 100-class head, tolerance). Spec numbers where the
# spec gives one; resnet8/20/56 have none and are pinned to the measured value.
PARAMS_M = {
    "cifar_resnet8": (0.084, 0.001),
    "cifar_resnet20": (0.28, 0.01),
    "cifar_resnet32": (0.47, 0.01),
    "cifar_resnet56": (0.86, 0.01),
    "cifar_resnet110": (1.17, 0.01),
    "cifar_wrn20_8": (6.87, 0.01),
    "cifar_densenet40_12": (0.19, 0.01),
    "cifar_vgg16": (15.3, 0.05),
    "cifar_vgg19": (20.6, 0.05),
}
NAMES = list(PARAMS_M)


@functools.lru_cache(maxsize=None)
def build(name, num_classes):
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=num_classes).eval()


def test_all_registered():
    assert sorted(timm.list_models("cifar_*")) == sorted(NAMES)


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", NAMES)
def test_forward_shape(name, num_classes):
    model = build(name, num_classes)
    assert model.num_classes == num_classes
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, num_classes)
        if num_classes == 10:  # global pooling: larger inputs work too
            assert model(torch.randn(2, 3, 64, 64)).shape == (2, num_classes)


@pytest.mark.parametrize("name", NAMES)
def test_param_count(name):
    expected, tol = PARAMS_M[name]
    count = sum(p.numel() for p in build(name, 100).parameters())
    assert abs(count / 1e6 - expected) < tol, f"{name}: {count} params, spec {expected}M"


def test_in_chans():
    model = timm.create_model("cifar_resnet8", num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_stock_timm_untouched():
    assert timm.list_models("vgg16") == ["vgg16"]
    assert timm.models.model_entrypoint("vgg16").__module__ == "timm.models.vgg"
    model = timm.create_model("resnet18", num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("name,dim", [("cifar_resnet32", 64), ("cifar_wrn20_8", 256),
                                      ("cifar_densenet40_12", 132), ("cifar_vgg16", 512)])
def test_forward_features(name, dim):
    model = build(name, 100)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        f = model.forward_features(x)
        assert f.shape == (3, dim) and model.num_features == dim
        torch.testing.assert_close(model.get_classifier()(f), model(x))


def test_init():
    model = build("cifar_resnet32", 100)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all((m.weight == 1).all() and (m.bias == 0).all() for m in bns)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    # Kaiming fan_out: std = sqrt(2 / (cout * k * k)); check the widest 3x3 conv
    w = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    assert abs(w.std().item() / (2 / (w.shape[0] * 9)) ** 0.5 - 1) < 0.1
    linears = [m for m in build("cifar_vgg16", 100).modules() if isinstance(m, nn.Linear)]
    assert all(abs(m.weight.std().item() - 0.01) < 1e-3 and (m.bias == 0).all() for m in linears)


def test_pretrained_raises():
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("cifar_resnet32", pretrained=True)


def test_unknown_kwarg_raises():
    with pytest.raises(TypeError, match="unsupported"):
        timm.create_model("cifar_resnet32", drop_rate=0.1)


@pytest.mark.parametrize("name", ["cifar_resnet8", "cifar_densenet40_12"])
def test_train_backward(name):
    model = timm.create_model(name, num_classes=10).train()
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
