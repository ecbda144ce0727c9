"""Tooling beside the daemon: local brokers, the embedded run, the sandbox, the benchmark."""
