"""Seeded simulation of a raftd cluster over a faulty network, with safety checks after every step."""

from .checker import Checker, Violation
from .cluster import Params, Simulation

__all__ = ["Checker", "Params", "Simulation", "Violation"]
