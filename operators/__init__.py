"""Flink operators: thin wrappers that hold state and clients and delegate decisions to `herald`."""
