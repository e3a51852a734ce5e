"""``python -m launcher``: the ``hitl`` command without its console script."""

from __future__ import annotations

import sys

from launcher.cli import main

sys.exit(main())
