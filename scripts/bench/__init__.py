"""The training-speed benchmark behind scripts/benchmark.py and scripts/method_costs.py: measure (child processes),
tables (results files), throughput, defaults, official (the modes), cli (settings); docs/performance.md."""
