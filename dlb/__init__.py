"""DLB: Self-Distillation from the Last Mini-Batch, reproduced."""
