"""``python -m server`` is the ``hearth`` command."""

import sys

from server.cli import main

sys.exit(main())
