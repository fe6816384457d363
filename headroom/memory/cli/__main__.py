"""``python -m headroom.memory.cli``: the ``headroom-memory`` command."""

import sys

from .main import main

sys.exit(main())
