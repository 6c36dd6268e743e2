"""``python -m zoo.cli`` (and ``torchrun -m zoo.cli``): the ``zoo`` command line."""

import sys

from zoo.cli import main

sys.exit(main())
