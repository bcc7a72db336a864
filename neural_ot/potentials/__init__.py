"""Potentials (flax modules) for Wasserstein-2 dual solvers."""

from neural_ot.potentials.icnn import ICNN, MLPPotential, MLPPredictor

__all__ = ["ICNN", "MLPPotential", "MLPPredictor"]
