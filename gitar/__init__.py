"""gitar: git as the loop, the lab notebook and the referee of autonomous ML research."""

from __future__ import annotations

__version__ = "0.1.0"
