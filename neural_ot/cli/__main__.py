"""``python -m neural_ot.cli``: the ``neural-ot`` command line."""

import sys

from neural_ot.cli import main

if __name__ == "__main__":
  sys.exit(main())
