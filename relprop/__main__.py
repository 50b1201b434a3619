"""``python -m relprop``: the ``relprop`` command (also what ``torchrun -m relprop`` runs)."""

import sys

from relprop.apps.cli import main
from relprop.apps.distributed import end_worker

if __name__ == "__main__":
    code = main()
    end_worker(code)  # under torchrun: exit without the teardown that can abort in gloo
    sys.exit(code)
