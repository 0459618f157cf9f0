"""`airlock store init` against the real SeaweedFS server: the bucket made once, versioning on, and
a repeat that reports no change (what provisioning needs to stay idempotent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from airlock.store.bucket import ensure_bucket


def _init(server, bucket: str) -> dict:
    env = dict(os.environ, AIRLOCK_STORE_BACKEND="s3", AIRLOCK_S3_ENDPOINT=server.endpoint,
               AIRLOCK_S3_ACCESS_KEY=server.access_key, AIRLOCK_S3_SECRET_KEY=server.secret_key,
               AIRLOCK_S3_BUCKET=bucket)
    done = subprocess.run([sys.executable, "-m", "airlock", "store", "init", "--json"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_init_creates_the_bucket_once_and_then_reports_no_change(seaweedfs) -> None:
    bucket = f"init-{uuid.uuid4().hex[:8]}"
    first = _init(seaweedfs, bucket)
    assert first["created"] and first["changed"] and first["bucket"] == bucket
    second = _init(seaweedfs, bucket)
    assert not second["created"] and not second["changed"]
    assert second["versioning"] == first["versioning"]


def test_wrong_credentials_are_refused_naming_the_endpoint(seaweedfs) -> None:
    from airlock.errors import AirlockError

    with pytest.raises(AirlockError, match=seaweedfs.endpoint):
        ensure_bucket(endpoint=seaweedfs.endpoint, access_key=seaweedfs.access_key, secret_key="wrong" * 8,
                      bucket="never-made", secure=False)


def test_init_with_the_local_backend_says_which_setting_to_change() -> None:
    env = dict(os.environ, AIRLOCK_STORE_BACKEND="local")
    done = subprocess.run([sys.executable, "-m", "airlock", "store", "init"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "AIRLOCK_STORE_BACKEND" in done.stderr
