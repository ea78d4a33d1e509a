"""CIFAR-style backbones of the DLB paper (the official code's models/: ResNet-8/20/32/56/110, WRN-20-8,
DenseNet-BC-40-12, VGG-16/19 with BatchNorm), registered in timm's model registry with a ``cifar_`` prefix so timm's
own models (vgg16, ...) stay untouched: ``timm.create_model("cifar_resnet32", num_classes=100)`` after importing
dlb.models. All end in global average pooling, so they also run on 64x64 (or larger) inputs."""
from functools import partial

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

from dlb.errors import ConfigError


class _CifarNet(nn.Module):
    """timm-style API shared by all nets: features (`layers`, global average pool) -> (B, D), head -> logits (B, K)."""

    def __init__(self, layers, num_features, head, num_classes):
        super().__init__()
        self.num_classes, self.num_features = num_classes, num_features
        self.features, self.head = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), head

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, x, pre_logits=False):
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self):
        return self.head

    def init_weights(self, conv_mode, linear_std=None, linear_bias_zero=False):
        """The official init: kaiming-normal convs with zero bias; BatchNorm keeps PyTorch's (weight 1, bias 0)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode=conv_mode, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                if linear_std is not None:
                    nn.init.normal_(m.weight, 0, linear_std)
                if linear_bias_zero:
                    nn.init.zeros_(m.bias)


def conv_bn(cin, cout, k=3, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class ResidualBlock(nn.Module):
    """conv-BN layers of kernel sizes `kernels` (ReLU between, the first 3x3 one strided) added to the shortcut, then
    ReLU. (3, 3): the basic block (cin -> mid -> cout); (1, 3, 1): the bottleneck (cin -> mid -> mid -> cout)."""

    def __init__(self, cin, mid, cout, stride, kernels):
        super().__init__()
        widths, layers = [cin] + [mid] * (len(kernels) - 1) + [cout], []
        for i, k in enumerate(kernels):
            s = stride if i == kernels.index(3) else 1
            layers += [conv_bn(widths[i], widths[i + 1], k, s), nn.ReLU(inplace=True)]
        self.branch = nn.Sequential(*layers[:-1])
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return F.relu(self.branch(x) + self.shortcut(x))


class CifarResNet(_CifarNet):
    """3-stage CIFAR ResNet: 3x3 stem (16 ch), stages of blocks at planes 16/32/64 and strides 1/2/2. Block outputs
    are planes (basic) or 4 x planes (bottleneck); the inner width is planes * width (width=8 turns the bottleneck
    ResNet-20 into WRN-20-8, as in the official code's width_per_group=64*8)."""

    def __init__(self, depths, bottleneck=False, width=1, num_classes=100, in_chans=3, planes=(16, 32, 64)):
        kernels, expansion = ((1, 3, 1), 4) if bottleneck else ((3, 3), 1)
        cin = 16
        layers = [conv_bn(in_chans, cin), nn.ReLU(inplace=True)]
        for i, (p, n) in enumerate(zip(planes, depths)):
            for j in range(n):
                layers.append(ResidualBlock(cin, p * width, p * expansion, 2 if i > 0 and j == 0 else 1, kernels))
                cin = p * expansion
        super().__init__(layers, cin, nn.Linear(cin, num_classes), num_classes)
        self.init_weights("fan_out")  # the official code leaves the Linear head at PyTorch's default init


def bn_relu_conv(cin, cout, k):
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                         nn.Conv2d(cin, cout, k, padding=k // 2, bias=False))


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
        c = 2 * growth
        layers = [nn.Conv2d(in_chans, c, 3, padding=1, bias=False)]
        for i, n in enumerate(depths):
            for _ in range(n):
                layers.append(DenseLayer(c, growth, bn_size))
                c += growth
            if i < len(depths) - 1:
                layers += [bn_relu_conv(c, int(c * compression), 1), nn.AvgPool2d(2)]
                c = int(c * compression)
        super().__init__([*layers, nn.BatchNorm2d(c), nn.ReLU(inplace=True)], c, nn.Linear(c, num_classes), num_classes)
        self.init_weights("fan_in", linear_bias_zero=True)  # official: PyTorch's kaiming_normal_ defaults (fan_in)


class CifarVGG(_CifarNet):
    """VGG-16/19 with BN after every 3x3 conv, 5 max-pools (1x1 map at 32x32), global pool,
    and a 512-512-K MLP head. Convs keep their bias, as in the official code."""

    def __init__(self, depth=16, num_classes=100, in_chans=3, dropout=0.0):
        n = {16: 3, 19: 4}[depth]
        cfg = [64, 64, "M", 128, 128, "M"] + [256] * n + ["M"] + ([512] * n + ["M"]) * 2
        layers, c = [], in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        # The official head has Dropout layers, but with p=0.0 by default (no-ops).
        head = nn.Sequential(nn.Linear(c, 512), nn.ReLU(inplace=True), nn.Dropout(dropout),
                             nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(dropout),
                             nn.Linear(512, num_classes))
        super().__init__(layers, c, head, num_classes)
        self.init_weights("fan_out", linear_std=0.01, linear_bias_zero=True)


# timm name -> constructor (parameter counts for 100 classes)
CIFAR_MODELS = {
    "cifar_resnet8": partial(CifarResNet, (1, 1, 1)),
    "cifar_resnet20": partial(CifarResNet, (3, 3, 3)),
    "cifar_resnet32": partial(CifarResNet, (5, 5, 5)),  # ~0.47M params
    "cifar_resnet56": partial(CifarResNet, (9, 9, 9)),
    "cifar_resnet110": partial(CifarResNet, (12, 12, 12), bottleneck=True),  # outputs 64/128/256, ~1.17M
    "cifar_wrn20_8": partial(CifarResNet, (2, 2, 2), bottleneck=True, width=8),  # ~6.87M
    "cifar_densenet40_12": CifarDenseNet,  # 3 dense blocks x 6 bottleneck layers, growth 12, ~0.19M
    "cifar_vgg16": partial(CifarVGG, 16),  # ~15.3M
    "cifar_vgg19": partial(CifarVGG, 19),  # ~20.6M
}


def _entrypoint(name, ctor):
    def create(pretrained=False, num_classes=100, in_chans=3, **kwargs):
        if pretrained:
            raise ValueError(f"{name}: no pretrained weights exist for the CIFAR models; use pretrained=False")
        # timm.create_model always passes these three; they only matter for pretrained weights
        unsupported = sorted(set(kwargs) - {"pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"})
        if unsupported:
            raise TypeError(f"{name}: unsupported arguments {unsupported} (only num_classes, in_chans)")
        return ctor(num_classes=num_classes, in_chans=in_chans)

    create.__name__ = create.__qualname__ = name  # timm registers an entrypoint under its function name
    return register_model(create)


for _name, _ctor in CIFAR_MODELS.items():
    globals()[_name] = _entrypoint(_name, _ctor)


def build_model(cfg, num_classes: int) -> torch.nn.Module:
    """The run config's backbone (`cfg.backbone`) for `cfg.dataset.image_size` images and `num_classes` classes; a
    ConfigError when timm has no such model or it cannot take that image size."""
    name, size = cfg.backbone.name, cfg.dataset.image_size
    try:
        model = timm.create_model(name, num_classes=num_classes, **dict(cfg.backbone.kwargs))
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ConfigError(f"backbone.name={name!r}: not a timm model; use a backbone config "
                              "(resnet32, vgg16, ...) or a name from timm.list_models()") from None
        raise
    # Fail before training when the backbone can't take the images at all (a ViT built for 224 px given 32 px, a VGG
    # whose pooling shrinks 8 px to nothing): one forward of one blank image on the CPU, in eval mode (no BatchNorm
    # statistics change, no random numbers drawn).
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    except (RuntimeError, AssertionError, ValueError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"backbone.name={name}: cannot take {size}x{size} images (dataset.image_size={size}): "
                          f"{why}; use a backbone made for this size (the cifar_* ones take any size >= 8) or tell "
                          f"the timm model the size, e.g. +backbone.kwargs.img_size={size}") from None
    return model.train()  # as timm.create_model made it
