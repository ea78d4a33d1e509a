"""Hydra entry point: `python -m dlb.train dataset=cifar100 backbone=resnet32 method=dlb` (also `dlb-train`)."""
from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dlb.config import ConfigError, register_configs, validate

register_configs()
log = logging.getLogger("dlb")


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from dlb.datasets import DatasetError
    from dlb.trainer import ResumeError, run

    try:
        validate(cfg)
        summary = run(cfg, HydraConfig.get().runtime.output_dir)
    except (ConfigError, DatasetError, ResumeError) as e:
        # A user's mistake: one clear line and exit code 2, never a traceback.
        print(f"dlb: error: {e}", file=sys.stderr)
        sys.exit(2)
    return summary["best_test_err"]  # what a Hydra sweeper would minimise


if __name__ == "__main__":
    main()
