"""``python -m tuner.cli``: the ``lenstune`` command."""

import sys

from tuner.cli import main

sys.exit(main())
