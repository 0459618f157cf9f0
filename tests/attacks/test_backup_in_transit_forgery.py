"""Someone who holds a backup in transit (a courier, a backup server, a shared drive) and wants
the appliance restored from it to let them in: an admin key of their own, the audit rows that
would show it rewritten with every hash recomputed, the file list rewritten to match.

They cannot decrypt the backup without the operator's passphrase, so they try what is left:
edit the ciphertext, or build a backup of their own from an edited database, sealed with a
passphrase they chose, and hand that over instead. Restoring with the operator's passphrase must
refuse both and write nothing; and the backup must not give them the appliance's private key.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from airlock.access.keys import create_key
from airlock.backup.seal import MAGIC
from airlock.backup.service import create_backup, restore_backup
from airlock.config import Settings
from airlock.context import Airlock
from airlock.errors import IntegrityFailure
from airlock.meta.audit import verify
from airlock.meta.chain import chain_unhashed
from airlock.trust.keys import ensure_appliance_key

OPERATOR = b"the operator's own passphrase"
ATTACKER = b"the attacker's chosen passphrase"


@pytest.fixture
def taken(airlock: Airlock, tmp_path: Path) -> Path:
    """A real backup of a home with its key, an API key, audit rows and a stored blob."""
    ensure_appliance_key(airlock.settings)
    create_key(airlock.meta, "app", role="trainer", actor="os:operator")
    airlock.store.set_ref("adapters/a1", airlock.store.put_bytes(b"adapter weights" * 2000))
    out = tmp_path / "in-transit.airlock-backup"
    create_backup(airlock.settings, out, passphrase=OPERATOR, trust_dir=None, actor="os:operator",
                  chunk_bytes=4096)
    return out


def restore(backup: Path, home: Path) -> None:
    restore_backup(Settings(home=home), backup, passphrase=OPERATOR, trust_dir=None, actor="os:operator")


def nothing_written(home: Path) -> bool:
    return not home.exists() and not [p for p in home.parent.iterdir() if "restoring" in p.name]


def header_end(data: bytes) -> int:
    return len(MAGIC) + 4 + int.from_bytes(data[len(MAGIC):len(MAGIC) + 4], "big")


@pytest.mark.parametrize("where", ["header", "database", "end"])
def test_edited_ciphertext_is_refused(taken: Path, tmp_path: Path, where: str) -> None:
    """Had it worked, the restored home would hold bytes the attacker chose."""
    data = bytearray(taken.read_bytes())
    offset = {"header": header_end(data) - 5, "database": header_end(data) + 700, "end": len(data) - 20}[where]
    data[offset] ^= 0x80
    taken.write_bytes(bytes(data))
    with pytest.raises(IntegrityFailure):
        restore(taken, tmp_path / "restored")
    assert nothing_written(tmp_path / "restored")


def forge_home(source: Settings, into: Path) -> Settings:
    """The attacker's database: an admin key added, an audit row rewritten, every hash recomputed."""
    shutil.copytree(source.home, into)
    forged = Settings(home=into)
    meta = Airlock.open(forged).meta
    create_key(meta, "backdoor", role="admin", actor="os:operator")
    conn = sqlite3.connect(forged.db_path)
    with conn:  # the row that shows the new key rewritten, then every hash recomputed with airlock's own code
        conn.execute("UPDATE audit SET actor = 'os:operator', action = 'apikey.rotate' "
                     "WHERE action = 'apikey.create' AND subject IN (SELECT id FROM api_keys WHERE name = 'backdoor')")
        conn.execute("UPDATE audit SET hash = NULL")
        chain_unhashed(conn)
    conn.close()
    assert verify(Airlock.open(forged).meta).ok  # a forgery the chain alone cannot see
    return forged


def test_a_backup_built_from_a_forged_database_is_refused(airlock: Airlock, taken: Path, tmp_path: Path) -> None:
    """Had it worked, the restored appliance would hold an admin key the attacker made, and its
    audit log would verify as intact."""
    forged = forge_home(airlock.settings, tmp_path / "attacker-home")
    own = tmp_path / "forged.airlock-backup"
    create_backup(forged, own, passphrase=ATTACKER, trust_dir=None, actor="os:operator", chunk_bytes=4096)
    with pytest.raises(IntegrityFailure, match="passphrase does not open this backup"):
        restore(own, tmp_path / "restored")
    assert nothing_written(tmp_path / "restored")
    # The operator's header (salt, key check) in front of the attacker's chunks: the chunks fail.
    original, fake = taken.read_bytes(), own.read_bytes()
    spliced = tmp_path / "spliced.airlock-backup"
    spliced.write_bytes(original[:header_end(original)] + fake[header_end(fake):])
    with pytest.raises(IntegrityFailure, match="chunk 0 .* does not authenticate"):
        restore(spliced, tmp_path / "restored")
    assert nothing_written(tmp_path / "restored")


def test_the_private_key_is_nowhere_in_the_backup(airlock: Airlock, taken: Path) -> None:
    """Had it failed, anyone holding the backup could sign adapters and audit anchors as the appliance."""
    from cryptography.hazmat.primitives import serialization

    pem = (airlock.settings.keys_dir / "appliance.key").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    data = taken.read_bytes()
    for secret in (pem, body, raw, der, base64.b64encode(raw), raw.hex().encode()):
        assert secret not in data
    assert b"PRIVATE KEY" not in data and b"airlock.db" not in data  # not even the archive's names
    header = json.loads(data[len(MAGIC) + 4:header_end(data)])
    assert set(header) == {"format", "aead", "kdf", "key_check", "chunk_bytes", "nonce_prefix"}
