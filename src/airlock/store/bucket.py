"""Preparing the S3 artifact store at provisioning: its bucket, and versioning where the server has it.

Versioning keeps an overwritten or deleted reference recoverable on the server itself; the store's
own code never relies on it (blobs are content-addressed, refs are verified on read), so a server
without it is reported, not refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from minio.commonconfig import ENABLED
from minio.error import S3Error
from minio.versioningconfig import VersioningConfig

from airlock.store.s3 import S3Store


@dataclass(frozen=True)
class BucketState:
    bucket: str
    endpoint: str
    created: bool
    versioning: str  # "Enabled", "Suspended", "Off" or "unsupported: <the server's answer>"
    changed: bool


def ensure_bucket(*, endpoint: str, access_key: str, secret_key: str, bucket: str, secure: bool,
                  versioning: bool = True, ca: Path | None = None) -> BucketState:
    """Create the bucket if missing and turn versioning on if asked; `changed` says whether anything was done."""
    probe = S3Store(endpoint=endpoint, access_key=access_key, secret_key=secret_key, bucket=bucket,
                    secure=secure, ca=ca, create=False)
    created = probe.ensure_bucket()
    status, changed = _versioning(probe, versioning)
    return BucketState(bucket=bucket, endpoint=probe.endpoint, created=created, versioning=status,
                       changed=created or changed)


def _versioning(store: S3Store, wanted: bool) -> tuple[str, bool]:
    try:
        status = store.client.get_bucket_versioning(store.bucket).status or "Off"
        if wanted and status != ENABLED:
            store.client.set_bucket_versioning(store.bucket, VersioningConfig(ENABLED))
            return store.client.get_bucket_versioning(store.bucket).status or "Off", True
        return status, False
    except S3Error as e:
        if e.code in {"NotImplemented", "MethodNotAllowed"}:
            return f"unsupported: {e.code}", False
        raise
