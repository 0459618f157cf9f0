"""The parts, extraction and target modules run on a bare `python3`: standard library only.

They travel in the stand-alone verifier, which a first install runs before any airlock (or any
third-party package) is on the host, so a single stray import would break the first install.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import airlock

SRC = Path(airlock.__file__).parent
MODULES = ("bundle/parts.py", "bundle/extract.py", "bundle/target.py")
ALLOWED_AIRLOCK = {"airlock.errors", "airlock.bundle.parts", "airlock.bundle.extract", "airlock.bundle.target"}


def imported_names(path: Path) -> set[str]:
    """Every module an import statement names anywhere in the file, inside functions too."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: a relative import"
            names.add(node.module or "")
    return names


def test_every_import_is_the_standard_library_or_these_modules() -> None:
    for module in MODULES:
        for name in imported_names(SRC / module):
            if name.startswith("airlock"):
                assert name in ALLOWED_AIRLOCK, f"{module} imports {name}"
            else:
                assert name.split(".")[0] in sys.stdlib_module_names, f"{module} imports {name}"


CHECK = textwrap.dedent("""
    import sys, sysconfig
    sys.path.insert(0, sys.argv[1])  # as the verifier's zipapp puts itself first, and nothing else
    import airlock.bundle.extract, airlock.bundle.parts, airlock.bundle.target
    from airlock.bundle.parts import parse_size
    assert parse_size("4G") == 4 << 30
    stdlib = sysconfig.get_paths()["stdlib"]
    outside = sorted(name for name, mod in sys.modules.items()
                     if getattr(mod, "__file__", None) and not mod.__file__.startswith((stdlib, sys.argv[1])))
    assert not outside, outside
    print("stdlib only")
""")


def test_the_modules_import_and_run_from_a_bare_copy_in_isolated_mode(tmp_path: Path) -> None:
    tree = tmp_path / "verifier"
    for module in (*MODULES, "errors.py"):
        (tree / "airlock" / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SRC / module, tree / "airlock" / module)
    for package in ("airlock", "airlock/bundle"):
        (tree / package / "__init__.py").write_text("")
    # -I: no PYTHONPATH, no user site, no script directory; -S: no site-packages at all.
    done = subprocess.run([sys.executable, "-I", "-S", "-c", CHECK, str(tree)], cwd=tree,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stdlib only"
