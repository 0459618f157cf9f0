"""What a role may do is said in one place, access/roles.py (PERMISSIONS), and docs/security.md's
table says the same. Everywhere else the code asks for a permission: a role name compared outside
access/ (`role == "admin"`, `key["role"] in ("trainer", "admin")`, a constant `ADMIN = "admin"`
compared later, a `case "admin":`) is a second, silent place that decides who may do what, and
fails here. Read from the source itself, like tests/test_import_graph.py."""

from __future__ import annotations

import ast
import re

from airlock.access.roles import PERMISSIONS, ROLES
from airlock.config import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "airlock"
ALLOWED = PACKAGE / "access"
ROLE_NAMES = frozenset(ROLES)


def _role_constants(node: ast.AST) -> list[str]:
    """The role names a literal holds: a string, or a tuple, list or set of strings."""
    if isinstance(node, ast.Constant) and node.value in ROLE_NAMES:
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [name for item in node.elts for name in _role_constants(item)]
    return []


def role_comparisons(source: str, filename: str = "<source>") -> list[str]:
    """`file:line: ...` for each comparison with a role name in `source`: a literal, a name bound
    to one at module level, or a `case` pattern."""
    tree = ast.parse(source, filename)
    named = {target.id for node in tree.body if isinstance(node, ast.Assign) and _role_constants(node.value)
             for target in node.targets if isinstance(target, ast.Name)}
    found = []
    for node in ast.walk(tree):
        operands: list[ast.AST] = []
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.MatchValue):
            operands = [node.value]
        for operand in operands:
            names = _role_constants(operand)
            if isinstance(operand, ast.Name) and operand.id in named:
                names = [operand.id]
            if names:
                found.append(f"{filename}:{node.lineno}: compares {', '.join(names)}")
    return found


def test_no_role_name_is_compared_outside_access():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) if ALLOWED not in path.parents
             for hit in role_comparisons(path.read_text(), str(path.relative_to(PACKAGE.parent)))]
    assert found == [], "ask access/roles.py for a permission instead:\n" + "\n".join(found)


def test_the_guard_sees_each_way_of_comparing_a_role():
    # Each of these once decided a right outside access/; the guard must see every one.
    sources = [
        'def f(key):\n    return key.get("role") == "admin"\n',
        'def f(key):\n    return key["role"] in ("trainer", "admin")\n',
        'def f(role):\n    return "approver" != role\n',
        'ADMIN = "admin"\ndef f(key):\n    return key["role"] == ADMIN\n',
        'UI = ("trainer", "approver", "admin")\ndef f(key):\n    return key["role"] not in UI\n',
        'def f(role):\n    match role:\n        case "inference":\n            return 1\n',
    ]
    assert [len(role_comparisons(s)) for s in sources] == [1] * len(sources)
    # Naming a role is not comparing one: a key made with a role, a permission named `inference`.
    assert role_comparisons('create_key(meta, "x", role="trainer")\npermit("inference")\n'
                            'DESCRIPTIONS = {"admin": "everything"}\n') == []


def _docs_table() -> dict[str, set[str]]:
    """The role table of docs/security.md: {role: the permissions its last column names}."""
    text = (REPO_ROOT / "docs" / "security.md").read_text()
    section = text.split("## Who may do what", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 3:
            table[cells[0].strip("`")] = set(re.findall(r"`([^`]+)`", cells[2]))
    return table


def test_the_docs_table_says_what_the_role_table_says():
    assert _docs_table() == {role: set(permissions) for role, permissions in PERMISSIONS.items()}


def test_web_pages_take_their_dependencies_from_deps_not_from_the_api_routes():
    """The pages and /api share gateway/deps.py; a page importing the /api route module would
    grow a second way to build the context or the key's rights."""
    wrong = []
    for path in sorted((PACKAGE / "web").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "airlock.gateway.control":
                wrong.append(f"{path.name}:{node.lineno}")
    assert wrong == []
    assert "from airlock.gateway.deps import" in (PACKAGE / "web" / "runs.py").read_text()
