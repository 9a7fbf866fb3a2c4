"""`python -m gitar` is the gitar command."""

from __future__ import annotations

import sys

from gitar.cli import main

sys.exit(main())
