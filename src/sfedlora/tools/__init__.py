"""Tools over run folders and the library: sweeps, reports, the scaling diagnostic, export, lm-eval, and this
architecture's page."""
