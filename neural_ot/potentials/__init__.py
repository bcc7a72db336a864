"""Potentials (flax modules) for Wasserstein-2 dual solvers."""

from neural_ot.potentials.icnn import ICNN, MLPPotential

__all__ = ["ICNN", "MLPPotential"]
