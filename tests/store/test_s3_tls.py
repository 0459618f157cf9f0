"""The S3 store over TLS, its certificate checked against the site's CA (AIRLOCK_S3_CA), as the
playbooks set it up between hosts: a store whose certificate the CA did not sign is refused."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from airlock.config import Settings
from airlock.errors import NotFound, NotReady
from airlock.store import open_store
from airlock.tls.generate import generate_self_signed


def settings_for(server, tmp_path: Path, **overrides) -> Settings:
    return Settings(home=tmp_path / "home", store_backend="s3", s3_endpoint=server.endpoint,
                    s3_access_key=server.access_key, s3_secret_key=server.secret_key,
                    s3_bucket=f"t-{uuid.uuid4().hex[:20]}", **overrides)


def test_the_store_over_tls_with_the_sites_ca(seaweedfs_tls, tmp_path: Path) -> None:
    store = open_store(settings_for(seaweedfs_tls, tmp_path, s3_secure=True, s3_ca=seaweedfs_tls.ca))
    digest = store.put_bytes(b"over TLS")
    store.set_ref("greeting", digest)
    assert store.get_bytes(store.get_ref("greeting")) == b"over TLS"


def test_a_certificate_the_ca_did_not_sign_is_refused(seaweedfs_tls, tmp_path: Path) -> None:
    """If the certificate were not checked, a reviewer would see the store talk to whoever answers
    on the endpoint's address (and hand it the store's keys)."""
    other = tmp_path / "other"
    generate_self_signed(other / "ca.crt", other / "ca.key", ["127.0.0.1"])
    with pytest.raises(NotReady, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        open_store(settings_for(seaweedfs_tls, tmp_path, s3_secure=True, s3_ca=other / "ca.crt"))


def test_plain_http_to_a_tls_store_fails_and_a_missing_ca_is_named(seaweedfs_tls, tmp_path: Path) -> None:
    with pytest.raises(NotReady, match="did not answer as S3 .*AIRLOCK_S3_SECURE"):
        open_store(settings_for(seaweedfs_tls, tmp_path, s3_secure=False))
    with pytest.raises(NotFound, match=r"CA certificate .*missing\.crt \(AIRLOCK_S3_CA\) does not exist"):
        open_store(settings_for(seaweedfs_tls, tmp_path, s3_secure=True, s3_ca=tmp_path / "missing.crt"))
