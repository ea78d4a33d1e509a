"""DLB: Self-Distillation from the Last Mini-Batch, reproduced."""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the checkout: configs/, results/, scripts/ beside the package
CONFIGS = REPO / "configs"  # Hydra's config groups
