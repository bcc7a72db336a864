import gc
import os

import jax
import pytest

os.environ.setdefault("NEURAL_OT_SMALL", "1")


@pytest.fixture
def x64():
  """Run a test in float64 (for finite differences)."""
  with jax.enable_x64(True):
    yield


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
  """Free the compiled executables of a test module when it ends.

  The suite runs in one process and compiles thousands of programs (hypothesis fuzzing draws
  new shapes); each XLA:CPU executable keeps memory mappings, and the process reached Linux's
  limit of 65,530 mappings (``vm.max_map_count``) late in the suite: XLA then aborted or
  segfaulted while compiling (twice, at the same test). Measured: tests/test_fuzz.py and
  tests/test_conditional.py alone left 18,169 mappings.
  """
  yield
  jax.clear_caches()
  gc.collect()


# A program run once per process by tests/test_multiprocess.py (it parses its own command line
# and starts jax.distributed at import): not a module for pytest to import.
collect_ignore = ["multidevice/multiprocess_checks.py"]
