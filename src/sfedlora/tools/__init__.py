"""Tools over run folders and the library: sweeps, reports, the scaling diagnostic, export."""
