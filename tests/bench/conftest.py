"""The benchmark's modules live in bench/ (scripts, not a package): make them importable."""

from __future__ import annotations

import sys

from tests.support import ROOT

BENCH = str(ROOT / "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
