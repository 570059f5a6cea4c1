"""``python -m framebus`` runs the command-line interface."""

import sys

from framebus.cli import main

sys.exit(main())
