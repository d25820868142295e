"""The batched per-client LoRA layer, the per-client task head, and their injection into Hugging Face models."""
