"""What a client does: its side of a round (step.py, both runners' one implementation), local training (losses,
per-client optimisers), evaluation and generation, math scoring."""
