"""Tasks, sources (the built-in sets, files, the hub), record checks, partitioners, prompts, tokenisation and
batching."""
