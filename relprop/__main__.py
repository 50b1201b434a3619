"""``python -m relprop``: the ``relprop`` command (also what ``torchrun -m relprop`` runs)."""

import sys

from relprop.apps.cli import main

if __name__ == "__main__":
    sys.exit(main())
