"""Where and how fast a run executes: device placement, speed settings, DDP, memory measurement."""
