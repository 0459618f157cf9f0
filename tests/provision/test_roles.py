"""The provisioning roles as code: they pass ansible-lint's production profile (fully qualified
module names and quoted file modes among its rules), every variable a
role defines is documented in its defaults (a comment above it), typed in its argument specs and
listed in docs/provisioning.md, and the playbooks parse with the vendored collections only."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
ROLES = sorted(p for p in (PLAYBOOKS / "roles").iterdir() if p.is_dir())
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    import os

    return dict(os.environ, ANSIBLE_CONFIG=str(PLAYBOOKS / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                PATH=f"{BIN}:{os.environ.get('PATH', '')}")


def test_the_playbooks_pass_ansible_lint_production_run_as_an_operator_would() -> None:
    # No arguments: everything in playbooks/ (roles, inventories, task files) as
    # playbooks/.ansible-lint says (the production profile, the vendored collections left out).
    done = subprocess.run([str(BIN / "ansible-lint")], cwd=PLAYBOOKS, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "Profile 'production' was required, and it passed" in done.stderr + done.stdout


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_argument_specs_hold_only_option_fields(role: Path) -> None:
    """A comma in an unquoted flow-mapping description splits it into extra keys; Ansible takes
    them for fields it does not know."""
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    fields = {"type", "default", "description", "elements", "required", "choices", "options"}
    for name, option in specs.items():
        assert set(option) <= fields, f"{role.name}: {name} has fields {sorted(set(option) - fields)}"


@pytest.mark.parametrize("playbook", ["site.yml", "upgrade.yml"])
def test_the_playbooks_parse_with_the_vendored_collections(playbook: str) -> None:
    done = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(PLAYBOOKS / "inventory" / "example.yml"),
                           "--syntax-check", playbook], cwd=PLAYBOOKS, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def _defaults(role: Path) -> tuple[dict, str]:
    path = role / "defaults" / "main.yml"
    return yaml.safe_load(path.read_text()) or {}, path.read_text()


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_default_is_documented_and_in_the_argument_specs(role: Path) -> None:
    defaults, text = _defaults(role)
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    lines = text.splitlines()
    for name in defaults:
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{name}:"))
        # a comment may document a block of related variables: climb over the block to it
        while at > 0 and (re.match(r"^[a-z0-9_]+:", lines[at - 1]) or lines[at - 1].startswith(" ")):
            at -= 1
        assert at > 0 and lines[at - 1].startswith("#"), f"{role.name}: {name} has no comment above it"
        assert name in specs, f"{role.name}: {name} is not in meta/argument_specs.yml"
    assert set(specs) <= set(defaults), f"{role.name}: specs without a default: {set(specs) - set(defaults)}"


def test_docs_list_every_variable_of_every_role() -> None:
    doc = (REPO / "docs" / "provisioning.md").read_text().split("## Variables", 1)[1]
    for role in ROLES:
        row = re.search(rf"^\| `{role.name}`[^|]*\| (.*) \|$", doc, re.MULTILINE)
        assert row, f"docs/provisioning.md has no variables row for {role.name}"
        listed = set(re.findall(r"`([a-z0-9_]+)`", row.group(1)))
        assert listed == set(_defaults(role)[0]), f"{role.name}: {listed ^ set(_defaults(role)[0])}"
