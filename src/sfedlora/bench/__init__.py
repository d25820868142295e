"""Benchmarks: the batched engine against the sequential peer, and what N clients cost in memory."""
