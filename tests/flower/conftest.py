"""The Flower tests need the `flower` extra: without flwr installed they are not collected (the rest of the
suite runs; tests/integration/test_without_flower.py checks sfedlora itself without it)."""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("flwr") else ["test_*.py", "flower_grid.py"]
