"""The in-process runner and what only it needs: the transport of the round loop that runs every client on one base
model in batched groups (runner.py), the store that keeps clients between rounds (clientstore.py), and the group
size rule (grouping.py)."""

from sfedlora.simulation.runner import Simulation

__all__ = ["Simulation"]
