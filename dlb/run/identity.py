"""What identifies a run: the config keys that change what is computed (all but FREE_KEYS and each method's
Method.speed_only_options), and its data's fingerprint (`dataset.root` may move, the data may not change). It decides
resuming, the seeds of a table cell, tfkd_self's teacher, the default run folder (README.md, "Run folders")."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from dlb import CONFIGS

# Keys (a name covers its sub-keys) that never change what a run computes, at most float rounding.
FREE_KEYS = (
    "hydra", "resume", "logger", "experiment_name",  # Hydra's own settings, logging, the sweep's label
    "data_root", "dataset.root", "dataset.download", "dataset.num_workers",  # where data is (its fingerprint counts)
    "trainer.device", "trainer.jobs_per_gpu", "trainer.progress", "trainer.eval_batch_size", "trainer.save_best",
    "trainer.threads", "trainer.compile", "trainer.channels_last", "optim.fused", "trainer.faithful",  # speed
    "trainer.keep_heap",
    "method_info",  # config.json: what the method resolved itself (tfkd_self's teacher, found by identity)
)
# The parts of the identity already spelled out by the cell's folder (dataset/backbone/method[+augment][+noise]).
CELL_KEYS = ("dataset.name", "backbone.name", "method.name", "augment.name", "noise.name", "noise.rate", "seed")
# Config groups (with their default choice) whose other choices name the folder (debug=step, recipe=cskd): the
# defaults a name is measured against are composed from the same choices, so without it their values would not show.
NAMED_GROUPS = {"debug": None, "recipe": "dlb"}
# Identity keys added after runs existed, with the value that computes what those runs computed (no warm-up, no
# rotation): at that value a key is left out of the identity, so the older runs keep theirs (resume, seeds, teachers).
NEUTRAL = {"optim.warmup_epochs": 0, "dataset.rotation": 0}
MAX_NAME = 120  # longer folder names end in a hash of the full name


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) and v else {key: v})
    return out


def is_free(key: str, method: str | None = None) -> bool:
    """Whether `key` never changes what a run of `method` computes."""
    from dlb.methods.base import METHODS  # (here: the methods' package imports the teacher search, which imports us)

    speed_only = METHODS[method].speed_only_options if method in METHODS else ()
    return key.startswith("_") or any(key == f or key.startswith(f + ".") for f in FREE_KEYS) or \
        key.removeprefix("method.") in speed_only


def has_noise(name: str, rate: float) -> bool:
    return name != "none" and rate > 0  # a rate of 0 flips no label


def identity(config: dict) -> dict:
    """The flattened keys of a resolved config that change what a run computes. Without label noise the noise keys
    compute nothing and are left out: a noise sweep's 0% runs are the clean runs of other grids."""
    flat = flatten(config)
    ident = {k: v for k, v in flat.items()
             if not is_free(k, flat.get("method.name")) and not (k in NEUTRAL and v == NEUTRAL[k])}
    if not has_noise(ident.get("noise.name", "none"), ident.get("noise.rate", 0)):
        ident = {k: v for k, v in ident.items() if not k.startswith("noise.")}
    return ident


def differences(saved: dict, current: dict) -> list[str]:
    """'key: old -> new' for each identity key that differs between two resolved configs."""
    a, b = identity(saved), identity(current)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def data_differences(saved: dict | None, current: dict | None) -> list[str]:
    """What differs between two data fingerprints (dlb.data.datasets.fingerprint); [] when either is unknown."""
    if not saved or not current:
        return []
    short = lambda v: v[:12] if isinstance(v, str) and len(v) == 64 else v  # noqa: E731  (a sha256)
    return [f"{k}: {short(saved.get(k))!r} -> {short(current.get(k))!r}" for k in sorted(set(saved) | set(current))
            if saved.get(k) != current.get(k) and k != "classes"] + \
        (["class names differ"] if saved.get("classes") != current.get("classes") else [])


def cell_name(dataset: str, backbone: str, method: str) -> str:
    """A table cell's name, also the W&B group."""
    return f"{dataset}/{backbone}/{method}"


def cell_dir(config: dict) -> str:
    """dataset/backbone/method[+augment][+noise<rate>]: the folders of a run's table cell."""
    augment, noise = config["augment"]["name"], config["noise"]
    tag = ("" if augment == "none" else f"+{augment}") + (f"+{noise['name']}{noise['rate']:g}"
                                                          if has_noise(noise["name"], noise["rate"]) else "")
    return cell_name(config["dataset"]["name"], config["backbone"]["name"], config["method"]["name"]) + tag


def value_text(value: Any, safe: bool = False) -> str:
    """A config value as an override spells it (method.T=4, not method.T=4.0); `safe`: fit for a folder name."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    return re.sub(r"[^A-Za-z0-9._=,+\-\[\]]", "_", text) if safe else text


def variant_name(config: dict, defaults: dict, groups: dict[str, str] | None = None) -> str:
    """The folder naming a run's configuration within its cell: the named groups chosen, then the identity values
    that differ from `defaults` (composed from the same group choices alone), key=value joined by commas."""
    ident, ref = identity(config), identity(defaults)
    parts = [f"{g}={c}" for g, c in sorted((groups or {}).items())
             if g in NAMED_GROUPS and c not in (None, NAMED_GROUPS[g])]
    parts += [f"{k}={value_text(v, safe=True)}" for k, v in sorted(ident.items())
              if k not in CELL_KEYS and (k not in ref or ref[k] != v)]
    parts += [f"{k}={value_text(NEUTRAL[k], safe=True)}" if k in NEUTRAL else f"~{k}"  # set back to neutral, or removed
              for k in sorted(set(ref) - set(ident))
              if k not in CELL_KEYS and not k.startswith("noise.")]  # (no noise: the cell says so)
    name = ",".join(parts)
    if len(name) > MAX_NAME:
        name = name[: MAX_NAME - 9].rstrip(",") + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return name


def run_name(config: dict, defaults: dict, groups: dict[str, str] | None = None) -> str:
    """The run's path below the results root: <cell>/[<variant>/]seed<n>."""
    variant = variant_name(config, defaults, groups)
    return "/".join([cell_dir(config), *([variant] if variant else []), f"seed{config['seed']}"])


# --- the Hydra resolver -----------------------------------------------------------------------------------------
def _resolved(cfg) -> dict:
    """A composed config (Hydra's own settings aside) as plain values."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True, enum_to_str=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in cfg if k != "hydra"}


def defaults_for(choices: dict[str, str]) -> dict:
    """The resolved config composed from the group choices alone (no value overrides), cached per choice set."""
    return _composed(tuple(f"{g}={c}" for g, c in sorted(choices.items())))


@functools.cache
def _composed(overrides: tuple[str, ...]) -> dict:
    # inside a Hydra app or compose context its config dir, else (a config composed earlier, resolved now) ours
    with contextlib.nullcontext() if GlobalHydra.instance().is_initialized() else \
            initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        return _resolved(compose("config", overrides=list(overrides)))


def resolve_run_name(*, _root_) -> str:
    """`${dlb_run_name:}` in hydra.run.dir and hydra.sweep.subdir: run_name of the job's own config, against the
    defaults of its group choices (experiments count as value overrides, so their values name the folder)."""
    choices = {g: c for g, c in _root_.hydra.runtime.choices.items()
               if c is not None and not g.startswith(("hydra/", "schema/")) and g != "experiment"}
    return run_name(_resolved(_root_), defaults_for(choices), choices)


def register_resolver() -> None:
    """`${dlb_run_name:}` for the configs in dlb.CONFIGS."""
    if not OmegaConf.has_resolver("dlb_run_name"):
        OmegaConf.register_new_resolver("dlb_run_name", resolve_run_name)
