"""Convex conjugate solvers."""

from neural_ot.conjugate.solvers import ConjugateResult, ConjugateSolver, conjugate

__all__ = ["ConjugateResult", "ConjugateSolver", "conjugate"]
