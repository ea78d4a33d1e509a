"""The training-speed benchmark behind scripts/benchmark.py and scripts/method_costs.py: measure (child processes),
tables (results files), modes and official (what is measured), cli (settings); docs/performance.md."""
