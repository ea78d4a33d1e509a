"""The options with a fixed set of values (dataset.loader, augment.name, trainer.precision, ...): each is a `Choice`.

The structured-config schema (dlb/config.py) types a field with its Choice, so Hydra rejects any other value while
composing, with a message listing the valid ones. The schema's own are defined here, apart from the torch code that
uses them, so a config is checked before torch is imported; a method's are in its own file (dlb/methods/).
"""
import enum


class Choice(str, enum.Enum):
    """A str Enum whose member names equal their values (OmegaConf converts a string to a member by its name): made
    by `choice`, or as a subclass with one `value = "value"` line per member. A member is its plain value in ==,
    str(), f-strings, repr() in messages and json (dlb.config.to_container makes them plain strings for torch.save)."""

    __str__ = str.__str__
    __format__ = str.__format__

    def __repr__(self) -> str:
        return repr(self.value)


def choice(name: str, *values: str) -> type[Choice]:
    """The Choice `name` whose members are `values` (also values no Python name can spell: "reduce-overhead")."""
    return Choice(name, [(value, value) for value in values], module=__name__)


# dataset.augment: the per-image augmentation of a training batch (dlb/data/loader.py; rrc: random resized crop)
Augment = choice("Augment", "crop_flip", "rrc_flip", "none")
# dataset.loader: make_loader's kind (dlb/data/loader.py): DeviceLoader (augments on the device) or TorchLoader (PIL)
LoaderKind = choice("LoaderKind", "device", "torch")
BatchAugment = choice("BatchAugment", "none", "cutout", "cutmix")  # augment.name: what dlb.data.augment.build returns
CutMixViews = choice("CutMixViews", "shared", "independent")  # augment.views: see dlb.data.augment.CutMix
NoiseName = choice("NoiseName", "none", "symmetric", "asymmetric")  # noise.name: how dlb.data.noise.noisy_labels flips
# trainer.precision: fp32 (the official numerics) or bf16 autocast of the forwards (docs/performance.md)
Precision = choice("Precision", "fp32", "bf16")
# trainer.compile: torch.compile's modes, none (eager), and auto (dlb.device.speed.resolve_speed picks one per device)
CompileMode = choice("CompileMode", "auto", "none", "default", "reduce-overhead", "max-autotune")
# logger.name: where rows go besides metrics.jsonl (dlb/run/loggers.py)
LoggerName = choice("LoggerName", "none", "wandb")
# logger.mode: wandb.init's mode (null: dlb.run.loggers.wandb_mode decides)
WandbMode = choice("WandbMode", "online", "offline", "disabled")
