"""Micro-benchmarks anyone can rerun (``python -m tests.perf.<name>``)."""
