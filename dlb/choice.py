"""The options with a fixed set of values (dataset.loader, augment.name, trainer.precision, ...): each is a `Choice`.

The structured-config schema (dlb/config.py) types a field with its Choice, so Hydra rejects any other value while
composing, with a message listing the valid ones. The schema's own are defined here, apart from the torch code that
uses them, so a config is checked before torch is imported; a method's are in its own file (dlb/methods/).
"""
import enum


class Choice(str, enum.Enum):
    """A str Enum whose member names equal their values (OmegaConf converts a string to a member by its name; values
    like "reduce-overhead" need the functional API: Choice("Name", [(v, v) for v in values])). A member is its plain
    value in ==, str(), f-strings, repr() in messages and json. (Files written with torch.save get plain strings:
    dlb.config.to_container converts a config's members.)"""

    __str__ = str.__str__
    __format__ = str.__format__

    def __repr__(self) -> str:
        return repr(self.value)


class Augment(Choice):
    """dataset.augment: the per-image augmentation of a training batch (dlb/data/loader.py)."""
    crop_flip = "crop_flip"  # random crop with zero padding, horizontal flip (CIFAR)
    rrc_flip = "rrc_flip"  # random resized crop, horizontal flip (TinyImageNet)
    none = "none"


class LoaderKind(Choice):
    """dataset.loader: make_loader's kind (dlb/data/loader.py)."""
    device = "device"  # DeviceLoader: uint8 data and batched augmentation on the device
    torch = "torch"  # TorchLoader: PIL transforms in DataLoader workers


class BatchAugment(Choice):
    """augment.name: the batch augmentation dlb.data.augment.build returns."""
    none = "none"
    cutout = "cutout"
    cutmix = "cutmix"


class CutMixViews(Choice):
    """augment.views: see dlb.data.augment.CutMix."""
    shared = "shared"
    independent = "independent"


class NoiseName(Choice):
    """noise.name: how dlb.data.noise.noisy_labels flips a label."""
    none = "none"
    symmetric = "symmetric"
    asymmetric = "asymmetric"


class Precision(Choice):
    """trainer.precision: fp32 (the official numerics) or bf16 autocast of the forwards (CUDA, or a CPU with native
    bf16: dlb.device.speed.native_bf16); losses and metrics are computed from fp32 logits either way."""
    fp32 = "fp32"
    bf16 = "bf16"


# trainer.compile: torch.compile's modes, none (eager), and auto (dlb.device.speed.resolve_speed picks one per device).
CompileMode = Choice("CompileMode", [(m, m) for m in ("auto", "none", "default", "reduce-overhead", "max-autotune")])


class LoggerName(Choice):
    """logger.name: where rows go besides metrics.jsonl (dlb/run/loggers.py)."""
    none = "none"
    wandb = "wandb"


class WandbMode(Choice):
    """logger.mode: wandb.init's mode (null: dlb.run.loggers.wandb_mode decides)."""
    online = "online"
    offline = "offline"
    disabled = "disabled"
