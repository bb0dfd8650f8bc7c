"""``python -m stack`` (with ``scripts/`` on the path): what ``scripts/stack.sh`` runs."""

import sys

from .cli import main

sys.exit(main())
