"""Structured-config schema (Hydra ConfigStore) and the range checks that types alone can't express.

Hydra rejects unknown keys, wrong types and values outside a Choice while composing; `validate` rejects out-of-range
values before any data is read or model built. Methods and datasets are read from their source (dlb.groups.registry),
so none of this imports torch.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

from hydra import compose as hydra_compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from dlb import CONFIGS
from dlb.choice import (Augment, BatchAugment, CompileMode, CutMixViews, LoaderKind, LoggerName, NoiseName, Precision,
                        WandbMode)
from dlb.errors import ConfigError
from dlb.groups import registry
from dlb.run.identity import register_resolver

# What the schema can't type as a Choice: trainer.device (also cuda:<index>), and options of auto or a bool.
DEVICES = ("auto", "cpu", "cuda", "slot")
AUTO_OR_BOOL = ("auto", True, False)


@dataclass
class DatasetConfig:
    """The schema of every `dataset=<name>` entry; a dataset's file (dlb/data/datasets/) gives that entry's values."""
    name: str = MISSING  # a registered dataset (validate checks it)
    root: Optional[str] = "${data_root}"  # imagefolder: null until given
    download: bool = False  # fetch missing archives (needs internet)
    # first n of a fixed (seed-independent) permutation; null = all. Beyond the split: docs/reliability.md
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    image_size: int = 32  # training resolution; imagefolder images are resized to it on load
    augment: Augment = Augment.crop_flip  # crop_flip (CIFAR) | rrc_flip (TinyImageNet) | none
    padding: int = 4  # crop_flip zero padding
    rotation: float = 0.0  # degrees: a uniform random rotation of each training view after its crop/flip; 0 = none
    cutout_size: int = 16  # augment=cutout hole size (spec: 16 px CIFAR-10, 8 px CIFAR-100)
    loader: LoaderKind = LoaderKind.device  # device: batched augmentation on the device | torch: PIL + DataLoader
    num_workers: int = 4  # torch loader only


@dataclass
class BackboneConfig:
    name: str = MISSING  # any timm model name; the paper's CIFAR nets are registered as cifar_*
    kwargs: Any = field(default_factory=dict)  # extra timm.create_model arguments


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    gamma: float = 0.1
    milestones: Optional[List[int]] = None  # null: milestone_fractions x trainer.epochs
    milestone_fractions: List[float] = field(default_factory=lambda: [0.625, 0.75, 0.875])  # 150/180/210 of 240
    fused: Any = "auto"  # auto | true | false: torch's fused SGD kernel (auto: on CUDA and CPU) or the plain loop
    warmup_epochs: int = 0  # the first n epochs ramp the lr linearly: step k of K at k/K (Tf-KD's WarmUpLR); 0 = none


@dataclass
class TrainerConfig:
    epochs: int = 240
    batch_size: int = 64
    eval_batch_size: Any = "auto"  # auto | n: images per test forward (auto: 128 on CPU, 1000 on CUDA; performance.md)
    device: str = "auto"  # auto | cpu | cuda | cuda:<i> | slot (a free one of num_gpus x jobs_per_gpu GPU slots)
    jobs_per_gpu: int = 1  # device=slot: how many runs share one GPU
    deterministic: bool = False
    precision: Precision = Precision.fp32  # bf16: autocast (CUDA; a CPU with AMX/AVX512-BF16), docs/performance.md
    channels_last: Any = "auto"  # auto | true | false; auto: per device (dlb.device.speed.resolve_speed)
    compile: CompileMode = CompileMode["auto"]  # torch.compile of the model (reduce-overhead: CUDA graphs)
    faithful: bool = False  # the official code's numerics: fp32, eager, contiguous, plain SGD loop
    keep_heap: Any = "auto"  # auto | true | false: glibc keeps the heap a step frees for the next; auto: on CPU
    ddp: bool = False  # DistributedDataParallel, one process per GPU, started by torchrun (dlb/device/distributed.py)
    limit_train_batches: Optional[int] = None  # debugging: stop each epoch after n steps
    limit_eval_batches: Optional[int] = None
    progress: Optional[bool] = None  # null: on when stderr is a terminal
    save_best: bool = True  # keep checkpoints/best.pt (model weights at the best test accuracy)
    threads: Optional[int] = None  # CPU threads; null: $OMP_NUM_THREADS, else the usable cores


@dataclass
class LoggerConfig:
    name: LoggerName = LoggerName.none
    project: str = "dlb-reproduction"
    entity: Optional[str] = None
    mode: Optional[WandbMode] = None  # null: online when an API key is configured, else offline
    group: Optional[str] = None  # null: dataset/backbone/method cell
    tags: List[str] = field(default_factory=list)


@dataclass
class AugmentConfig:
    """Batch-level augmentation on the device, after the dataset's crop/flip (docs/augment_and_noise.md)."""
    name: BatchAugment = BatchAugment.none
    size: int = 16  # cutout hole side in pixels (configs/augment/cutout.yaml takes dataset.cutout_size)
    prob: float = 0.5  # cutmix: probability that a batch is mixed
    beta: float = 1.0  # cutmix: lam ~ Beta(beta, beta)
    # cutmix with several views: one partner, box and lam for all (shared) or per view (independent: one-view methods)
    views: CutMixViews = CutMixViews.shared


@dataclass
class NoiseConfig:
    """Training-label noise (configs/noise/, docs/augment_and_noise.md); the test set stays clean."""
    name: NoiseName = NoiseName.none
    rate: float = 0.0  # in [0, 1): probability that a training label is flipped
    seed: int = 0  # the noisy labels are a pure function of (dataset, name, rate, seed), not of the run seed


@dataclass
class Config:
    dataset: DatasetConfig = MISSING
    backbone: BackboneConfig = MISSING
    method: Any = MISSING  # each method's own schema, see dlb/methods
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    data_root: str = "${oc.env:DLB_DATA,data}"
    seed: int = 0
    experiment_name: Optional[str] = None  # set by configs/experiment/* grids; names the sweep dir
    resume: bool = True  # continue from checkpoints/ in the output dir when there is one


def register_configs() -> None:
    register_resolver()
    if not OmegaConf.has_resolver("dlb_scale"):  # a recipe's lr per batch: ${dlb_scale:0.1,${trainer.batch_size},128}
        # in Tf-KD's order, lr * (batch_size / 128): the same float as its lr
        OmegaConf.register_new_resolver("dlb_scale", lambda x, num, den: x * (num / den))
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, schema in (("backbone", BackboneConfig), ("logger", LoggerConfig), ("augment", AugmentConfig),
                          ("noise", NoiseConfig)):
        cs.store(group=f"schema/{group}", name="base", node=schema)
    for name, cls in registry("method").items():  # `method=<name>`: the method's Config dataclass and its defaults
        cs.store(group="method", name=name, node=cls.Config)
    for name, spec in registry("dataset").items():  # `dataset=<name>`: the schema, with the values its file declares
        cs.store(group="dataset", name=name, node=DatasetConfig(name=name, **spec.config))


def compose(overrides: Sequence[str] = (), with_hydra: bool = False) -> DictConfig:
    """The config `python -m dlb.train <overrides>` runs with, unvalidated and without Hydra's run-dir side
    effects; `with_hydra` keeps the `hydra` node (run dir, sweeper params)."""
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=with_hydra)


def _fail(key: str, value: Any, why: str) -> None:
    raise ConfigError(f"{key}={value!r}: {why}")


# The checks of one value each, in the order validate applies them: (key, whether a value is usable, the fix)
RANGES = (
    ("dataset.train_subset", lambda v: v is None or v >= 1, "must be >= 1, or null for the whole split"),
    ("dataset.test_subset", lambda v: v is None or v >= 1, "must be >= 1, or null for the whole split"),
    ("dataset.image_size", lambda v: v >= 8, "must be >= 8 pixels"),
    ("dataset.padding", lambda v: v >= 0, "must be >= 0"),
    ("dataset.rotation", lambda v: 0 <= v <= 180,
     "the rotation range in degrees must be in [0, 180] (0: none; Tf-KD's recipe uses 15)"),
    ("trainer.epochs", lambda v: v >= 1, "must be >= 1"),
    ("trainer.batch_size", lambda v: v >= 1, "must be >= 1 (the paper uses 64)"),
    ("trainer.eval_batch_size", lambda v: v == "auto" or type(v) is int and v >= 1, "use auto, or a whole number >= 1"),
    ("trainer.device", lambda v: v in DEVICES or v.startswith("cuda:"),
     f"use one of {', '.join(DEVICES)} or cuda:<index>"),
    ("trainer.jobs_per_gpu", lambda v: v >= 1, "must be >= 1 (runs sharing one GPU with trainer.device=slot)"),
    ("optim.fused", lambda v: v in AUTO_OR_BOOL, "use auto, true or false"),
    ("trainer.channels_last", lambda v: v in AUTO_OR_BOOL, "use auto, true or false"),
    ("trainer.keep_heap", lambda v: v in AUTO_OR_BOOL, "use auto, true or false"),
    ("trainer.threads", lambda v: v is None or v >= 1,
     "must be >= 1, or null for $OMP_NUM_THREADS or every usable core"),
    ("trainer.limit_train_batches", lambda v: v is None or v >= 1, "must be >= 1, or null for no limit"),
    ("trainer.limit_eval_batches", lambda v: v is None or v >= 1, "must be >= 1, or null for no limit"),
    ("optim.name", lambda v: v == "sgd", "only sgd (the official recipe) is implemented"),
    ("optim.lr", lambda v: v > 0, "must be > 0 (the official recipe uses 0.05)"),
    ("optim.momentum", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("optim.weight_decay", lambda v: v >= 0, "must be >= 0"),
    ("optim.gamma", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("optim.milestones", lambda v: v is None or all(m >= 1 for m in v), "epochs must be >= 1"),
    ("optim.milestone_fractions", lambda v: all(0 < f < 1 for f in v), "fractions must be in (0, 1)"),
    ("augment.prob", lambda v: 0 <= v <= 1, "the CutMix probability must be in [0, 1] (the paper uses 0.5)"),
    ("augment.beta", lambda v: v > 0, "lam ~ Beta(beta, beta) needs beta > 0 (the paper uses 1)"),
    ("noise.rate", lambda v: 0 <= v < 1, "the flip probability must be in [0, 1)"),
    ("noise.seed", lambda v: v >= 0, "must be >= 0"),
    ("seed", lambda v: v >= 0, "must be >= 0"),
)


def validate(cfg: DictConfig) -> None:
    """Reject values that are well-typed but unusable. Raises ConfigError naming the key and the fix."""
    d, t, o, a = cfg.dataset, cfg.trainer, cfg.optim, cfg.augment
    for group in ("dataset", "method"):
        if cfg[group].name not in registry(group):
            _fail(f"{group}.name", cfg[group].name, f"unknown {group}; use one of {', '.join(sorted(registry(group)))}")
    if not d.root:
        _fail("dataset.root", d.root, f"dataset={d.name} needs a data folder: set dataset.root=<dir>"
              + ("" if d.name == "imagefolder" else " (or the DLB_DATA environment variable)"))
    # Keys added with +key=... that no code reads (most likely a typo of a real key: the run would silently ignore
    # it), and NaN/Inf numbers (before the range checks, which would call NaN out of range).
    sections = [(f"{key}.", node) for key, node in cfg.items_ex(resolve=False) if isinstance(node, DictConfig)]
    for prefix, node in [("", cfg), *sections]:
        schema = OmegaConf.get_type(node)  # the section's dataclass (a method's own: its Config)
        known = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else list(node)
        for key in node.keys():
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                _fail(f"{prefix}{key}", OmegaConf.to_container(node)[key], "no such key, the run would ignore it; "
                      + (f"did you mean {prefix}{close[0]}?" if close else "remove it"))
    stack = [("", OmegaConf.to_container(cfg, resolve=True))]
    while stack:
        prefix, node = stack.pop()
        for k, v in (node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(v, (dict, list)):
                stack.append((f"{prefix}{k}.", v))
            elif isinstance(v, float) and not math.isfinite(v):
                _fail(f"{prefix}{k}", v, "must be a finite number")
    method = registry("method")[cfg.method.name]
    method.validate_config(cfg.method)
    for key, usable, why in RANGES:
        if not usable(OmegaConf.select(cfg, key)):
            _fail(key, OmegaConf.select(cfg, key), why)
    spec = registry("dataset")[d.name]
    for key, split, size in (("train_subset", "training", spec.train_size), ("test_subset", "test", spec.test_size)):
        if d[key] is not None and size is not None and d[key] > size:
            _fail(f"dataset.{key}", d[key], f"dataset={d.name}'s {split} split has only {size} images; use at most "
                  f"{size}, or null for the whole split")
    if t.faithful:
        for key, value, faithful in (("trainer.channels_last", t.channels_last, False),
                                     ("trainer.compile", t.compile, "none"), ("optim.fused", o.fused, False),
                                     ("trainer.precision", t.precision, "fp32")):
            if value not in ("auto", faithful):
                _fail(key, value, f"conflicts with trainer.faithful=true (which means {key}={str(faithful).lower()});"
                      " drop one of the two")
    if t.ddp and t.device == "slot":
        _fail("trainer.device", t.device, "trainer.ddp=true places one process per GPU itself (LOCAL_RANK); use "
              "trainer.device=auto")
    if t.ddp and d.loader != "device":
        _fail("dataset.loader", d.loader, "trainer.ddp=true shards the device loader's batches; use "
              "dataset.loader=device")
    ruled_out = method.rules_out(cfg.method)  # what this configuration can't run with
    for rule, wanted in (("cuda_graphs", t.compile == "reduce-overhead"), ("ddp", t.ddp)):
        if wanted and rule in ruled_out:
            _fail(*ruled_out[rule])
    if o.nesterov and o.momentum == 0:
        _fail("optim.nesterov", o.nesterov, "nesterov needs optim.momentum > 0; set optim.nesterov=false")
    if not 0 <= o.warmup_epochs <= t.epochs:
        _fail("optim.warmup_epochs", o.warmup_epochs, f"must be in [0, trainer.epochs={t.epochs}] (0: no warm-up; "
              "Tf-KD's recipe uses 1)")
    if a.name == "cutout" and not 1 <= a.size < d.image_size:
        _fail("augment.size", a.size, f"the CutOut hole must be >= 1 and smaller than dataset.image_size="
              f"{d.image_size} pixels (the paper uses 16 on CIFAR-10, 8 on CIFAR-100)")
    if a.name == "cutmix" and a.views == "independent" and method.num_views > 1:
        _fail("augment.views", a.views, f"method={cfg.method.name} trains on {method.num_views} views and a batch "
              "holds one mixed target per sample, so the views must share the CutMix partner and box; use "
              "augment.views=shared")
    if cfg.noise.name == "none" and cfg.noise.rate != 0:
        _fail("noise.rate", cfg.noise.rate, "has no effect without a noise type; add noise=symmetric or "
              "noise=asymmetric")


def milestones(cfg: DictConfig) -> list[int]:
    """Explicit optim.milestones, else the official 150/180/210-of-240 fractions scaled to trainer.epochs."""
    if cfg.optim.milestones is not None:
        return list(cfg.optim.milestones)
    return [round(f * cfg.trainer.epochs) for f in cfg.optim.milestone_fractions]


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain Python values (Choice members as their strings), for json and checkpoints."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
