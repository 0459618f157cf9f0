"""Artifact store: content-addressed blobs and named references, on a folder or on S3."""

from airlock.store.base import ArtifactStore, sha256_bytes, sha256_file

__all__ = ["ArtifactStore", "open_store", "sha256_bytes", "sha256_file", "without_store_credentials"]

# The S3 store's settings, its access and secret keys among them (config.Settings.s3_*).
STORE_ENV_PREFIX = "AIRLOCK_S3_"


def without_store_credentials(env: dict[str, str]) -> dict[str, str]:
    """`env` less the S3 store's settings: for a child that never opens the store (the engine,
    a training job), which then cannot hand the store's keys to anything it runs or leaks."""
    return {name: value for name, value in env.items() if not name.startswith(STORE_ENV_PREFIX)}


def open_store(settings) -> ArtifactStore:
    if settings.store_backend == "s3":
        from airlock.store.s3 import S3Store

        return S3Store(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            bucket=settings.s3_bucket,
            secure=settings.s3_secure,
            ca=settings.s3_ca,
        )
    from airlock.store.local import LocalStore

    return LocalStore(settings.store_dir)
