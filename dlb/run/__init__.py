"""A run folder and what identifies, records and protects it: identity, files, checkpoints, logs, teacher search."""
