"""Durability tests: a broker subprocess per test, killed and restarted on purpose.

``harness.py`` (beside this file) holds the helpers; test directories have no
``__init__.py`` and run with ``--import-mode=importlib``, so this directory is put on
``sys.path`` for the test modules' ``from harness import ...``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
