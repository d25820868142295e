"""What a client does: local training (losses, per-client optimisers), evaluation and generation, math scoring."""
