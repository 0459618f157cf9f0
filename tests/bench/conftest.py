"""Make the repository's `bench` package importable, however pytest was started.

`bench/` sits beside `src/`, not inside the installed package, so the repository root has to be
on sys.path; a regular package there wins over this tests/bench folder as a namespace package.
"""

from __future__ import annotations

import sys

from airlock.config import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
