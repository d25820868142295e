"""The runtime both runners share: set-up, what auto settings resolve to, group sizes, the round protocol,
the run folder, records and checkpoints."""
