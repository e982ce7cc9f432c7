"""``python -m bayes_sws`` is the ``bayes-sws`` command."""

import sys

from .runs.cli import main

if __name__ == "__main__":
    sys.exit(main())
