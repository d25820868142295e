"""The math of federated LoRA: adapter state, the scaling factor, aggregation, spectra. Imports no model
and no engine code."""
