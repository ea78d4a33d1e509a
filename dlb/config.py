"""Structured-config schema (Hydra ConfigStore) and the range checks that types alone can't express.

The YAML files in configs/ fill these dataclasses (a method's own Config dataclass is the whole `method=<name>`
entry; a dataset's file gives the values of its `dataset=<name>` entry); Hydra rejects unknown keys, wrong types and
values outside a Choice while composing, and `validate` rejects out-of-range values before any data is read or model
built. `compose` gives the config a command line runs with. The methods' and datasets' facts come from their files'
source (dlb.groups.registry), so none of this imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from dlb import CONFIGS
from dlb.choice import (Augment, BatchAugment, CompileMode, CutMixViews, LoaderKind, LoggerName, NoiseName, Precision,
                        WandbMode)
from dlb.errors import ConfigError
from dlb.groups import group_options, registry  # noqa: F401  (group_options: for the tests)

# Options the schema can't type as a Choice: trainer.device also takes cuda:<index>; optim.fused and
# trainer.channels_last take auto or a bool.
DEVICES = ("auto", "cpu", "cuda", "slot")
AUTO_OR_BOOL = ("auto", True, False)


@dataclass
class DatasetConfig:
    """The schema of every `dataset=<name>` entry; a dataset's file (dlb/data/datasets/) gives that entry's values."""
    name: str = MISSING  # a registered dataset (validate checks it)
    root: Optional[str] = "${data_root}"  # imagefolder: null until given
    download: bool = False  # fetch missing archives (needs internet)
    # first n of a fixed (seed-independent) permutation; null = all. More than the split holds: refused by validate
    # for a dataset that declares its sizes; for an image folder (size unknown until read) all of it, with a warning
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    image_size: int = 32  # training resolution; imagefolder images are resized to it on load
    augment: Augment = Augment.crop_flip  # crop_flip (CIFAR) | rrc_flip (TinyImageNet) | none
    padding: int = 4  # crop_flip zero padding
    # degrees: after the crop/flip, rotate each training view by an angle uniform in [-rotation, rotation] (nearest
    # neighbour, zero fill: torchvision's RandomRotation, as Tf-KD's recipe uses it); 0 = none
    rotation: float = 0.0
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
    # the first warmup_epochs epochs' optimizer steps ramp the lr linearly: step k of K runs at k/K of the scheduled
    # lr (Tf-KD's WarmUpLR); 0 = none
    warmup_epochs: int = 0


@dataclass
class TrainerConfig:
    epochs: int = 240
    batch_size: int = 64
    # auto | an int: test images per forward; auto = 128 on CPU (cache-sized batches evaluate ~2x faster there,
    # results/bench/cpu_eval_batch.md), 1000 on CUDA
    eval_batch_size: Any = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:<i> | slot (a free one of num_gpus x jobs_per_gpu GPU slots)
    jobs_per_gpu: int = 1  # device=slot: how many runs share one GPU
    deterministic: bool = False
    precision: Precision = Precision.fp32  # bf16: autocast (CUDA; a CPU with AMX/AVX512-BF16), docs/performance.md
    # Speed (docs/performance.md); auto: per device (dlb.device.speed.resolve_speed). channels_last: auto | true | false
    channels_last: Any = "auto"
    # auto | none | default | reduce-overhead (CUDA graphs) | max-autotune: torch.compile of the model
    compile: CompileMode = CompileMode["auto"]
    faithful: bool = False  # the official code's numerics: fp32, eager, contiguous, plain SGD loop
    # auto | true | false: glibc keeps the heap a step frees for the next (dlb.device.speed.keep_heap); auto: on CPU runs
    keep_heap: Any = "auto"
    ddp: bool = False  # DistributedDataParallel, one process per GPU, started by torchrun (dlb/device/distributed.py)
    limit_train_batches: Optional[int] = None  # debugging: stop each epoch after n steps
    limit_eval_batches: Optional[int] = None
    progress: Optional[bool] = None  # null: on when stderr is a terminal
    save_best: bool = True  # keep checkpoints/best.pt (model weights at the best test accuracy)
    threads: Optional[int] = None  # CPU threads (dlb.device.placement.set_threads); null: $OMP_NUM_THREADS, else the usable cores


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
    """Batch-level augmentation on the device, after the dataset's crop/flip and normalisation (configs/augment/,
    docs/augment_and_noise.md)."""
    name: BatchAugment = BatchAugment.none
    size: int = 16  # cutout hole side in pixels (configs/augment/cutout.yaml takes dataset.cutout_size)
    prob: float = 0.5  # cutmix: probability that a batch is mixed
    beta: float = 1.0  # cutmix: lam ~ Beta(beta, beta)
    # cutmix with several views: shared partner, box and lam for all views | independent (needs per-view targets:
    # one-view methods only)
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
    from dlb.run.identity import register_resolver

    register_resolver(CONFIGS)
    if not OmegaConf.has_resolver("dlb_scale"):  # a recipe's lr per batch: ${dlb_scale:0.1,${trainer.batch_size},128}
        OmegaConf.register_new_resolver("dlb_scale", scale)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="schema/backbone", name="base", node=BackboneConfig)
    cs.store(group="schema/logger", name="base", node=LoggerConfig)
    cs.store(group="schema/augment", name="base", node=AugmentConfig)
    cs.store(group="schema/noise", name="base", node=NoiseConfig)
    for name, cls in registry("method").items():  # `method=<name>`: the method's Config dataclass and its defaults
        cs.store(group="method", name=name, node=cls.Config)
    for name, spec in registry("dataset").items():  # `dataset=<name>`: the schema, with the values its file declares
        cs.store(group="dataset", name=name, node=DatasetConfig(name=name, **spec.config))


def scale(x: float, num: float, den: float) -> float:
    """`${dlb_scale:x,num,den}` = x * (num / den), in that order (Tf-KD's lr * (batch_size / 128))."""
    return x * (num / den)


def compose(overrides: Sequence[str] = (), with_hydra: bool = False) -> DictConfig:
    """The config `python -m dlb.train <overrides>` runs with, unvalidated and without Hydra's run-dir side
    effects; `with_hydra` keeps the `hydra` node (run dir, sweeper params)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=with_hydra)


def _fail(key: str, value: Any, why: str) -> None:
    raise ConfigError(f"{key}={value!r}: {why}")


def validate(cfg: DictConfig) -> None:
    """Reject values that are well-typed but unusable. Raises ConfigError naming the key and the fix."""
    d, t, o = cfg.dataset, cfg.trainer, cfg.optim
    datasets, methods = registry("dataset"), registry("method")
    if d.name not in datasets:
        _fail("dataset.name", d.name, f"unknown dataset; use one of {', '.join(sorted(datasets))}")
    if not d.root:
        _fail("dataset.root", d.root, f"dataset={d.name} needs a data folder: set dataset.root=<dir>"
              + ("" if d.name == "imagefolder" else " (or the DLB_DATA environment variable)"))
    spec = datasets[d.name]
    for key, split, size in (("train_subset", "training", spec.train_size), ("test_subset", "test", spec.test_size)):
        if d[key] is not None and d[key] < 1:
            _fail(f"dataset.{key}", d[key], "must be >= 1, or null for the whole split")
        if d[key] is not None and size is not None and d[key] > size:
            _fail(f"dataset.{key}", d[key], f"dataset={d.name}'s {split} split has only {size} images; use at most "
                  f"{size}, or null for the whole split")
    if d.image_size < 8:
        _fail("dataset.image_size", d.image_size, "must be >= 8 pixels")
    if d.padding < 0:
        _fail("dataset.padding", d.padding, "must be >= 0")
    if not 0 <= d.rotation <= 180:
        _fail("dataset.rotation", d.rotation, "the rotation range in degrees must be in [0, 180] (0: none; Tf-KD's "
              "recipe uses 15)")
    if cfg.method.name not in methods:
        _fail("method.name", cfg.method.name, f"unknown method; use one of {', '.join(sorted(methods))}")
    method = methods[cfg.method.name]
    _check_keys_and_numbers(cfg, method.Config)
    method.validate_config(cfg.method)
    if t.epochs < 1:
        _fail("trainer.epochs", t.epochs, "must be >= 1")
    if t.batch_size < 1:
        _fail("trainer.batch_size", t.batch_size, "must be >= 1 (the paper uses 64)")
    if t.eval_batch_size != "auto" and (not isinstance(t.eval_batch_size, int) or isinstance(t.eval_batch_size, bool)
                                        or t.eval_batch_size < 1):
        _fail("trainer.eval_batch_size", t.eval_batch_size, "use auto, or a whole number >= 1")
    if t.device not in DEVICES and not str(t.device).startswith("cuda:"):
        _fail("trainer.device", t.device, f"use one of {', '.join(DEVICES)} or cuda:<index>")
    _validate_speed(cfg)
    if t.threads is not None and t.threads < 1:
        _fail("trainer.threads", t.threads, "must be >= 1, or null for $OMP_NUM_THREADS or every usable core")
    for key in ("limit_train_batches", "limit_eval_batches"):
        if t[key] is not None and t[key] < 1:
            _fail(f"trainer.{key}", t[key], "must be >= 1, or null for no limit")
    if o.name != "sgd":
        _fail("optim.name", o.name, "only sgd (the official recipe) is implemented")
    if o.lr <= 0:
        _fail("optim.lr", o.lr, "must be > 0 (the official recipe uses 0.05)")
    if not 0 <= o.momentum < 1:
        _fail("optim.momentum", o.momentum, "must be in [0, 1)")
    if o.nesterov and o.momentum == 0:
        _fail("optim.nesterov", o.nesterov, "nesterov needs optim.momentum > 0; set optim.nesterov=false")
    if o.weight_decay < 0:
        _fail("optim.weight_decay", o.weight_decay, "must be >= 0")
    if not 0 < o.gamma <= 1:
        _fail("optim.gamma", o.gamma, "must be in (0, 1]")
    if not 0 <= o.warmup_epochs <= t.epochs:
        _fail("optim.warmup_epochs", o.warmup_epochs, f"must be in [0, trainer.epochs={t.epochs}] (0: no warm-up; "
              "Tf-KD's recipe uses 1)")
    if o.milestones is not None and any(m < 1 for m in o.milestones):
        _fail("optim.milestones", list(o.milestones), "epochs must be >= 1")
    if any(not 0 < f < 1 for f in o.milestone_fractions):
        _fail("optim.milestone_fractions", list(o.milestone_fractions), "fractions must be in (0, 1)")
    _validate_augment_and_noise(cfg, method.num_views)
    if cfg.seed < 0:
        _fail("seed", cfg.seed, "must be >= 0")


def _validate_speed(cfg: DictConfig) -> None:
    """Speed and placement switches (docs/performance.md)."""
    t = cfg.trainer
    if t.jobs_per_gpu < 1:
        _fail("trainer.jobs_per_gpu", t.jobs_per_gpu, "must be >= 1 (runs sharing one GPU with trainer.device=slot)")
    if cfg.optim.fused not in AUTO_OR_BOOL:
        _fail("optim.fused", cfg.optim.fused, "use auto, true or false")
    if t.channels_last not in AUTO_OR_BOOL:
        _fail("trainer.channels_last", t.channels_last, "use auto, true or false")
    if t.keep_heap not in AUTO_OR_BOOL:
        _fail("trainer.keep_heap", t.keep_heap, "use auto, true or false")
    if t.faithful:
        for key, value, faithful in (("trainer.channels_last", t.channels_last, False),
                                     ("trainer.compile", t.compile, "none"), ("optim.fused", cfg.optim.fused, False),
                                     ("trainer.precision", t.precision, "fp32")):
            if value not in ("auto", faithful):
                _fail(key, value, f"conflicts with trainer.faithful=true (which means {key}={str(faithful).lower()});"
                      " drop one of the two")
    ruled_out = registry("method")[cfg.method.name].rules_out(cfg.method)  # what this configuration can't run with
    if t.compile == "reduce-overhead" and "cuda_graphs" in ruled_out:
        _fail(*ruled_out["cuda_graphs"])
    if t.ddp:
        if t.device == "slot":
            _fail("trainer.device", t.device, "trainer.ddp=true places one process per GPU itself (LOCAL_RANK); "
                  "use trainer.device=auto")
        if cfg.dataset.loader != "device":
            _fail("dataset.loader", cfg.dataset.loader, "trainer.ddp=true shards the device loader's batches; use "
                  "dataset.loader=device")
        if "ddp" in ruled_out:
            _fail(*ruled_out["ddp"])


def _validate_augment_and_noise(cfg: DictConfig, num_views: int) -> None:
    a, n = cfg.augment, cfg.noise
    if a.name == "cutout" and not 1 <= a.size < cfg.dataset.image_size:
        _fail("augment.size", a.size, f"the CutOut hole must be >= 1 and smaller than dataset.image_size="
              f"{cfg.dataset.image_size} pixels (the paper uses 16 on CIFAR-10, 8 on CIFAR-100)")
    if not 0 <= a.prob <= 1:
        _fail("augment.prob", a.prob, "the CutMix probability must be in [0, 1] (the paper uses 0.5)")
    if a.beta <= 0:
        _fail("augment.beta", a.beta, "lam ~ Beta(beta, beta) needs beta > 0 (the paper uses 1)")
    if a.name == "cutmix" and a.views == "independent" and num_views > 1:
        _fail("augment.views", a.views, f"method={cfg.method.name} trains on {num_views} views and a batch holds one "
              "mixed target per sample, so the views must share the CutMix partner and box; use augment.views=shared")
    if not 0 <= n.rate < 1:
        _fail("noise.rate", n.rate, "the flip probability must be in [0, 1)")
    if n.name == "none" and n.rate != 0:
        _fail("noise.rate", n.rate, "has no effect without a noise type; add noise=symmetric or noise=asymmetric")
    if n.seed < 0:
        _fail("noise.seed", n.seed, "must be >= 0")


def _check_keys_and_numbers(cfg: DictConfig, method_schema: type) -> None:
    """Keys added with +key=... that no code reads (most likely a typo of a real key: the run would silently ignore
    it), and NaN/Inf numbers, which pass every range check."""
    import dataclasses
    import difflib
    import math

    sections = {"dataset": DatasetConfig, "backbone": BackboneConfig, "method": method_schema, "optim": OptimConfig,
                "augment": AugmentConfig, "noise": NoiseConfig, "trainer": TrainerConfig, "logger": LoggerConfig}
    for prefix, schema, node in [("", Config, cfg), *((f"{s}.", c, cfg[s]) for s, c in sections.items())]:
        known = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                _fail(f"{prefix}{key}", OmegaConf.to_container(node)[key], "no such key, the run would ignore it; "
                      + (f"did you mean {prefix}{close[0]}?" if close else "remove it"))
    numbers = OmegaConf.to_container(cfg, resolve=True)
    stack = [("", numbers)]
    while stack:
        prefix, d = stack.pop()
        for k, v in (d.items() if isinstance(d, dict) else enumerate(d)):
            if isinstance(v, (dict, list)):
                stack.append((f"{prefix}{k}.", v))
            elif isinstance(v, float) and not math.isfinite(v):
                _fail(f"{prefix}{k}".rstrip("."), v, "must be a finite number")


def milestones(cfg: DictConfig) -> list[int]:
    """Explicit optim.milestones, else the official 150/180/210-of-240 fractions scaled to trainer.epochs."""
    if cfg.optim.milestones is not None:
        return list(cfg.optim.milestones)
    return [round(f * cfg.trainer.epochs) for f in cfg.optim.milestone_fractions]


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain Python values (Choice members as their strings), for json and checkpoints."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
