"""``python -m aptune.cli``: the ``aptune`` command (what torchrun runs with ``-m``)."""

import sys

from aptune.cli import main

sys.exit(main())
