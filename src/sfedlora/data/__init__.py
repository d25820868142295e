"""Tasks, sources, partitioners and batching."""
