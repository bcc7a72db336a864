import os

import jax
import pytest

os.environ.setdefault("NEURAL_OT_SMALL", "1")


@pytest.fixture
def x64():
  """Run a test in float64 (for finite differences)."""
  with jax.enable_x64(True):
    yield
