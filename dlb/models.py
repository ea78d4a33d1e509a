"""CIFAR-style backbones used in the DLB paper, registered in timm's model registry.

Architectures follow the official DLB code (github Meta-knowledge-Lab/DLB, models/):
ResNet-8/20/32/56/110, WRN-20-8, DenseNet-BC-40-12 and VGG-16/19 with BatchNorm.
Every name carries a ``cifar_`` prefix so timm's own models (vgg16, ...) stay untouched:

    import timm, dlb.models
    model = timm.create_model("cifar_resnet32", num_classes=100)

All nets end in global average pooling, so they also run on 64x64 (or larger) inputs.
``forward_features(x)`` gives the pooled feature vector (B, num_features),
``forward_head`` maps it to logits and ``get_classifier()`` returns the head.
"""

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

from dlb.errors import ConfigError

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet", "CifarDenseNet", "CifarVGG", "build_model"]


class _CifarNet(nn.Module):
    """timm-style API shared by all nets: features -> pooled (B, D), head -> logits (B, K)."""

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, x, pre_logits=False):
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self):
        return self.head


# --------------------------------------------------------------------------- ResNet / WRN


def conv_bn(cin, cout, k=3, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU-3x3 conv-BN, added to the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, cin, mid, cout, stride=1):
        super().__init__()
        self.branch = nn.Sequential(conv_bn(cin, mid, 3, stride), nn.ReLU(inplace=True), conv_bn(mid, cout))
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return F.relu(self.branch(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 (cin->mid) - 3x3 (mid->mid, strided) - 1x1 (mid->cout) convs with BN, then residual add + ReLU."""

    expansion = 4

    def __init__(self, cin, mid, cout, stride=1):
        super().__init__()
        self.branch = nn.Sequential(
            conv_bn(cin, mid, 1), nn.ReLU(inplace=True),
            conv_bn(mid, mid, 3, stride), nn.ReLU(inplace=True),
            conv_bn(mid, cout, 1),
        )
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return F.relu(self.branch(x) + self.shortcut(x))


class CifarResNet(_CifarNet):
    """3-stage CIFAR ResNet: 3x3 stem (16 ch), stages of `block` at planes 16/32/64 and strides 1/2/2.

    Block outputs are planes * block.expansion; the inner width is planes * width
    (width=8 turns the Bottleneck ResNet-20 into WRN-20-8, as in the official code's
    width_per_group=64*8).
    """

    def __init__(self, block, depths, num_classes=100, in_chans=3, width=1, planes=(16, 32, 64)):
        super().__init__()
        self.num_classes = num_classes
        cin = 16
        layers = [conv_bn(in_chans, cin), nn.ReLU(inplace=True)]
        for i, (p, n) in enumerate(zip(planes, depths)):
            cout = p * block.expansion
            for j in range(n):
                layers.append(block(cin, p * width, cout, stride=2 if i > 0 and j == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = cin
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # the official code leaves the Linear head at PyTorch's default init


# --------------------------------------------------------------------------- DenseNet-BC


def bn_relu_conv(cin, cout, k):
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, k, padding=k // 2, bias=False))


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bn_size*growth) - BN-ReLU-3x3 conv (growth); output concatenated to the input."""

    def __init__(self, cin, growth, bn_size=4):
        super().__init__()
        self.body = nn.Sequential(bn_relu_conv(cin, bn_size * growth, 1), bn_relu_conv(bn_size * growth, growth, 3))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class CifarDenseNet(_CifarNet):
    """DenseNet-BC for 32x32 inputs: 3x3 stem (2*growth ch), dense blocks joined by
    compressing transitions (BN-ReLU-1x1 conv-avgpool 2), final BN-ReLU-global pool."""

    def __init__(self, depths=(6, 6, 6), growth=12, compression=0.5, bn_size=4, num_classes=100, in_chans=3):
        super().__init__()
        self.num_classes = num_classes
        c = 2 * growth
        layers = [nn.Conv2d(in_chans, c, 3, padding=1, bias=False)]
        for i, n in enumerate(depths):
            for _ in range(n):
                layers.append(DenseLayer(c, growth, bn_size))
                c += growth
            if i < len(depths) - 1:
                layers += [bn_relu_conv(c, int(c * compression), 1), nn.AvgPool2d(2)]
                c = int(c * compression)
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.num_features = c
        self.head = nn.Linear(c, num_classes)
        # official init: Kaiming-normal convs with PyTorch defaults (fan_in), BN 1/0, Linear bias 0
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- VGG


class CifarVGG(_CifarNet):
    """VGG-16/19 with BN after every 3x3 conv, 5 max-pools (1x1 map at 32x32), global pool,
    and a 512-512-K MLP head. Convs keep their bias, as in the official code."""

    def __init__(self, depth=16, num_classes=100, in_chans=3, dropout=0.0):
        super().__init__()
        self.num_classes = num_classes
        n = {16: 3, 19: 4}[depth]
        cfg = [64, 64, "M", 128, 128, "M"] + [256] * n + ["M"] + ([512] * n + ["M"]) * 2
        layers, c = [], in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        # at 32x32 the map is already 1x1 so pooling is a no-op; it lets larger inputs work
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = c
        # the official head has Dropout layers, but with p=0.0 by default (no-ops)
        self.head = nn.Sequential(
            nn.Linear(c, 512), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(512, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- timm entrypoints

# timm.create_model always passes these to the entrypoint; they only matter for pretrained weights
_TIMM_CFG_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _create(name, ctor, pretrained, kwargs):
    if pretrained:
        raise ValueError(f"{name}: no pretrained weights exist for the CIFAR models; use pretrained=False")
    for k in _TIMM_CFG_KWARGS:
        kwargs.pop(k, None)
    num_classes, in_chans = kwargs.pop("num_classes", 100), kwargs.pop("in_chans", 3)
    if kwargs:
        raise TypeError(f"{name}: unsupported arguments {sorted(kwargs)} (only num_classes, in_chans)")
    return ctor(num_classes=num_classes, in_chans=in_chans)


def _resnet(name, pretrained, kwargs, block, depths, width=1):
    return _create(name, lambda **kw: CifarResNet(block, depths, width=width, **kw), pretrained, kwargs)


@register_model
def cifar_resnet8(pretrained=False, **kwargs):
    """ResNet-8: BasicBlock x [1, 1, 1]."""
    return _resnet("cifar_resnet8", pretrained, kwargs, BasicBlock, (1, 1, 1))


@register_model
def cifar_resnet20(pretrained=False, **kwargs):
    """ResNet-20: BasicBlock x [3, 3, 3]."""
    return _resnet("cifar_resnet20", pretrained, kwargs, BasicBlock, (3, 3, 3))


@register_model
def cifar_resnet32(pretrained=False, **kwargs):
    """ResNet-32: BasicBlock x [5, 5, 5] (~0.47M params, 100 classes)."""
    return _resnet("cifar_resnet32", pretrained, kwargs, BasicBlock, (5, 5, 5))


@register_model
def cifar_resnet56(pretrained=False, **kwargs):
    """ResNet-56: BasicBlock x [9, 9, 9]."""
    return _resnet("cifar_resnet56", pretrained, kwargs, BasicBlock, (9, 9, 9))


@register_model
def cifar_resnet110(pretrained=False, **kwargs):
    """ResNet-110: Bottleneck x [12, 12, 12], outputs 64/128/256 (~1.17M params)."""
    return _resnet("cifar_resnet110", pretrained, kwargs, Bottleneck, (12, 12, 12))


@register_model
def cifar_wrn20_8(pretrained=False, **kwargs):
    """WRN-20-8: Bottleneck x [2, 2, 2], inner width 8x planes (~6.87M params)."""
    return _resnet("cifar_wrn20_8", pretrained, kwargs, Bottleneck, (2, 2, 2), width=8)


@register_model
def cifar_densenet40_12(pretrained=False, **kwargs):
    """DenseNet-BC-40, growth 12: 3 dense blocks x 6 bottleneck layers (~0.19M params)."""
    return _create("cifar_densenet40_12", CifarDenseNet, pretrained, kwargs)


@register_model
def cifar_vgg16(pretrained=False, **kwargs):
    """VGG-16 with BN (~15.3M params)."""
    return _create("cifar_vgg16", lambda **kw: CifarVGG(16, **kw), pretrained, kwargs)


@register_model
def cifar_vgg19(pretrained=False, **kwargs):
    """VGG-19 with BN (~20.6M params)."""
    return _create("cifar_vgg19", lambda **kw: CifarVGG(19, **kw), pretrained, kwargs)


def build_model(cfg, num_classes: int) -> torch.nn.Module:
    """The run config's backbone (`cfg.backbone`) for `cfg.dataset.image_size` images and `num_classes` classes; a
    ConfigError when timm has no such model or it cannot take that image size."""
    try:
        model = timm.create_model(cfg.backbone.name, num_classes=num_classes, **dict(cfg.backbone.kwargs))
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ConfigError(f"backbone.name={cfg.backbone.name!r}: not a timm model; use a backbone config "
                              "(resnet32, vgg16, ...) or a name from timm.list_models()") from None
        raise
    _check_input_size(model, cfg.backbone.name, cfg.dataset.image_size)
    return model


def _check_input_size(model: torch.nn.Module, name: str, size: int) -> None:
    """Fail before training when the backbone can't take the dataset's images at all (a ViT built for 224 px given
    32 px, a VGG whose pooling shrinks 8 px to nothing): one forward of one blank image on the CPU, in eval mode
    (no BatchNorm statistics change, no random numbers drawn)."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    except (RuntimeError, AssertionError, ValueError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"backbone.name={name}: cannot take {size}x{size} images (dataset.image_size={size}): "
                          f"{why}; use a backbone made for this size (the cifar_* ones take any size >= 8) or tell "
                          f"the timm model the size, e.g. +backbone.kwargs.img_size={size}") from None
    finally:
        model.train(was_training)
