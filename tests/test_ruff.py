"""`ruff check` over the sources, the tests and the benchmarks, with the rules in pyproject.toml's
[tool.ruff]: an unused import, an undefined name or a redefinition fails the suite here rather
than in a reader's head."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from airlock.config import REPO_ROOT

# The venv's own ruff (pinned in pyproject.toml's [test] extra), next to the interpreter running the suite.
RUFF = Path(sys.executable).parent / "ruff"


def ruff(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    assert RUFF.is_file(), f"{RUFF}: no ruff beside this Python; install the [test] extra (install.sh does)"
    return subprocess.run([str(RUFF), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_sources_tests_and_benchmarks_pass_ruff_check():
    result = ruff("check", "--no-cache", "src", "tests", "bench")
    assert result.returncode == 0, f"ruff check found problems:\n{result.stdout}{result.stderr}"


def test_the_rules_are_the_projects_and_they_catch_an_unused_import(tmp_path: Path):
    # The check above must be able to fail: the same configuration, over a file with a defect.
    (tmp_path / "bad.py").write_text("import os\n\n\ndef f(x=[]):\n    return undefined_name\n")
    result = ruff("check", "--no-cache", "--config", str(REPO_ROOT / "pyproject.toml"), "--output-format",
                  "concise", str(tmp_path / "bad.py"))
    assert result.returncode == 1
    for code in ("F401", "B006", "F821"):
        assert code in result.stdout, result.stdout
