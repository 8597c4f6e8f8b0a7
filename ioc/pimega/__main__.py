"""``python -m pimega``: the ``pimega`` command."""

import sys

from pimega.cli.main import main

sys.exit(main())
