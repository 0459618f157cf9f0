"""A local user who can write `airlock.db` but is not the appliance's user: a database file left
group- or world-writable, a home on a share another account writes to, an operator's helper
account given the file to "clean up". Not someone who holds the appliance's own account: they can
read its key, and then only the copy of each anchor at the site's log host (syslog) holds.

The attacker deletes the newest audit rows (their own doings) with the sqlite3 command line and
resets `sqlite_sequence`, so the shorter chain is intact on its own. `airlock audit verify` must
still fail, naming the deleted range, from the signed anchors kept outside the database, which
this user can neither rewrite nor sign anew.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from local_user import as_nobody

from airlock.config import Settings
from airlock.context import Airlock
from airlock.meta.audit import check_anchors, verify

AIRLOCK = Path(sys.executable).parent / "airlock"
# CI runs as root, so there the attack always runs: a missing root fails rather than skips.
pytestmark = pytest.mark.skipif(os.getuid() != 0 and not os.environ.get("CI"),
                                reason="runs the attacker as another user (needs root)")


@pytest.fixture
def shared_home():
    """A home whose database (not its keys/ or audit/, both 0700) the user nobody may write."""
    top = Path(tempfile.mkdtemp(prefix="airlock-shared-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        settings = Settings(home=top / "home")
        airlock = Airlock.open(settings)
        for n in range(1, 11):
            airlock.meta.audit("os:operator", "apikey.create", f"k{n}", n=n)
        airlock.meta.db.conn.close()
        os.chmod(settings.home, 0o777)  # SQLite makes its journal files beside the database
        for path in settings.home.glob("airlock.db*"):
            os.chmod(path, 0o666)
        yield settings
    finally:
        shutil.rmtree(top, ignore_errors=True)


ATTACK = """
DELETE FROM audit WHERE id > 7;
UPDATE sqlite_sequence SET seq = 7 WHERE name = 'audit';
"""


def test_deleting_the_newest_rows_and_resetting_the_sequence_is_named(shared_home: Settings) -> None:
    """Had it worked, `airlock audit verify` would call the shortened log intact and rows 8-10
    would be gone without a trace."""
    done = as_nobody("sqlite3", str(shared_home.db_path), ATTACK)
    assert done.returncode == 0, done.stderr
    # The operator finds the home open and closes it again (airlock refuses to start on it
    # meanwhile: tests/attacks/test_local_user_home.py); the deletion is what is left to find.
    os.chmod(shared_home.home, 0o700)
    for path in shared_home.home.glob("airlock.db*"):
        os.chmod(path, 0o600)
    meta = Airlock.open(shared_home).meta
    assert meta.one("SELECT MAX(id) AS last FROM audit")["last"] == 7  # the attack itself went through
    assert verify(meta).ok  # the chain alone cannot tell: this is the hole the anchors close

    problems = check_anchors(meta, meta.anchors)
    assert [(p.kind, p.id) for p in problems] == [("truncated", 8)]
    result = subprocess.run([str(AIRLOCK), "audit", "verify"], env={**os.environ, "AIRLOCK_HOME": str(shared_home.home)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 5, result.stdout + result.stderr
    assert "rows 8-10 were deleted" in result.stderr and "ends at row 7" in result.stderr


def test_the_attacker_can_neither_rewrite_the_anchors_nor_sign_new_ones(shared_home: Settings) -> None:
    """Had it worked, the attacker could cut the anchor file back to row 7 and the deletion would
    verify as intact."""
    anchors, key = shared_home.audit_anchor_path, shared_home.keys_dir / "appliance.key"
    for target, how in ((anchors, "a"), (anchors, "r"), (key, "r")):
        tried = as_nobody("/usr/bin/python3", "-c", f"open({str(target)!r}, {how!r})")
        assert tried.returncode == 1 and f"Permission denied: {str(target)!r}" in tried.stderr, tried.stderr
