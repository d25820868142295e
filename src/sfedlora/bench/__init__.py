"""Benchmarks: the batched engine against the sequential peer, evaluation, a round's profile, and what N clients
cost in memory."""
