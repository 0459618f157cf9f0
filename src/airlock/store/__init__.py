"""Artifact store: content-addressed blobs and named references, on a folder or on S3."""

from airlock.store.base import ArtifactStore, sha256_bytes, sha256_file

__all__ = ["ArtifactStore", "open_store", "sha256_bytes", "sha256_file"]


def open_store(settings) -> ArtifactStore:
    if settings.store_backend == "s3":
        from airlock.store.s3 import S3Store

        return S3Store(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            bucket=settings.s3_bucket,
            secure=settings.s3_secure,
        )
    from airlock.store.local import LocalStore

    return LocalStore(settings.store_dir)
