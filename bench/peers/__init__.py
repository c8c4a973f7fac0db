"""Peers for bench/peers_compare.py: the same critical-path semantics without Flink."""
