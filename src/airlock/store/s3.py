"""The S3 backend: blobs and refs as objects in one bucket, through the MinIO SDK.

Keys:
    blobs/sha256/<64 hex>   blob bytes
    refs/<name>             the digest the ref points at

The SDK speaks plain S3, so the same code runs against MinIO on appliance hosts and against any
other S3-compatible server. Reads are verified exactly as in the folder backend: the server is
trusted to store bytes, never to return the right ones.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

from airlock.errors import AirlockError, IntegrityFailure, InvalidInput, NotFound, NotReady
from airlock.private import PRIVATE_FILE, make_private_dir
from airlock.store.base import CHUNK, ArtifactStore, check_digest, check_ref_name, sha256_file

BLOBS = "blobs/sha256/"
REFS = "refs/"
MISSING = {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}
# Blobs smaller than this are verified in memory by get_bytes; bigger ones on disk.
SPOOL_BYTES = 8 * CHUNK
REF_MAX_BYTES = 128  # "sha256:" and 64 hex digits, a newline, room to spare


def _verifying_pool(ca: Path) -> urllib3.PoolManager:
    """The SDK's own connection pool (its timeouts and retries), checking the endpoint's
    certificate against `ca` alone: the site's CA, not every CA the system trusts."""
    if not ca.is_file():
        raise NotFound(f"the S3 store's CA certificate {ca} (AIRLOCK_S3_CA) does not exist")
    timeout = 300
    return urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeout, read=timeout), maxsize=10,
                               cert_reqs="CERT_REQUIRED", ca_certs=str(ca),
                               retries=urllib3.Retry(total=5, backoff_factor=0.2,
                                                     status_forcelist=[500, 502, 503, 504]))


class S3Store(ArtifactStore):
    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str = "",
        secret_key: str = "",
        bucket: str = "airlock",
        secure: bool = False,
        ca: Path | None = None,
        create: bool = True,
    ) -> None:
        # Accept "http://host:port" as well as the bare "host:port" the SDK wants.
        for scheme, is_secure in (("https://", True), ("http://", False)):
            if endpoint.startswith(scheme):
                endpoint, secure = endpoint.removeprefix(scheme).rstrip("/"), is_secure
        self.endpoint = endpoint
        self.bucket = bucket
        self.client = Minio(
            endpoint,
            access_key=access_key or None,
            secret_key=secret_key or None,
            secure=secure,
            http_client=_verifying_pool(Path(ca)) if secure and ca else None,
        )
        if create:
            self.ensure_bucket()

    def ensure_bucket(self) -> bool:
        """Create the bucket unless it exists; True if this call created it."""
        with self._errors(f"bucket {self.bucket!r}"):
            if self.client.bucket_exists(self.bucket):
                return False
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as e:
                # Another process created it between the check and the create.
                if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
                return False
            return True

    def __repr__(self) -> str:
        return f"S3Store({self.endpoint!r}, bucket={self.bucket!r})"

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key} on {self.endpoint}"

    @contextmanager
    def _errors(self, what: str, key: str = ""):
        """Turn SDK and transport errors into the store's own error tree, naming what failed."""
        try:
            yield
        except S3Error as e:
            if e.code in MISSING:
                raise NotFound(f"{what} is not in the store ({self._where(key)})") from None
            detail = f"{e.code}: {e.message}"
            raise AirlockError(f"S3 refused {what} at {self.endpoint}: {detail}") from e
        except urllib3.exceptions.HTTPError as e:
            raise NotReady(f"S3 endpoint {self.endpoint} is not reachable ({what}): {e}") from e
        except (InvalidResponseError, ServerError) as e:
            # Plain HTTP to a TLS endpoint (or the reverse) gets an answer that is not S3's.
            raise NotReady(f"S3 endpoint {self.endpoint} did not answer as S3 ({what}): {str(e).strip()}; "
                           "does AIRLOCK_S3_SECURE match the endpoint?") from e

    @staticmethod
    def _blob_key(digest: str) -> str:
        return BLOBS + check_digest(digest).removeprefix("sha256:")

    # Blobs

    def exists(self, digest: str) -> bool:
        key = self._blob_key(digest)
        try:
            with self._errors(f"artifact {digest}", key):
                self.client.stat_object(self.bucket, key)
        except NotFound:
            return False
        return True

    def put_bytes(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.exists(digest):
            key = self._blob_key(digest)
            with self._errors(f"artifact {digest}", key):
                self.client.put_object(self.bucket, key, io.BytesIO(data), len(data))
        return digest

    def put_file(self, path: Path) -> str:
        path = Path(path)
        if not path.is_file():
            raise NotFound(f"cannot store {path}: no such file")
        digest = sha256_file(path)
        if not self.exists(digest):
            key = self._blob_key(digest)
            # fput_object switches to a multipart upload for big files on its own.
            with self._errors(f"artifact {digest}", key):
                self.client.fput_object(self.bucket, key, str(path))
        return digest

    @contextmanager
    def _download(self, digest: str):
        """Yield (key, chunks) of a blob; the connection goes back to the pool afterwards."""
        key = self._blob_key(digest)
        with self._errors(f"artifact {digest}", key):
            response = self.client.get_object(self.bucket, key)
            try:
                yield key, response.stream(CHUNK)
            finally:
                response.close()
                response.release_conn()

    def _verify(self, digest: str, key: str, h) -> None:
        actual = "sha256:" + h.hexdigest()
        if actual != digest:
            raise IntegrityFailure(
                f"artifact {digest} at {self._where(key)} has changed: it hashes to {actual}"
            )

    def _fetch_into(self, digest: str, out: BinaryIO) -> None:
        """Stream the blob into `out` chunk by chunk, hashing on the way; IntegrityFailure unless
        what arrived is the digest's bytes. Never more than a chunk of it is held in memory."""
        h = hashlib.sha256()
        with self._download(digest) as (key, chunks):
            for chunk in chunks:
                h.update(chunk)
                out.write(chunk)
        self._verify(digest, key, h)

    def get_bytes(self, digest: str) -> bytes:
        # Spooled (to an unnamed temp file past SPOOL_BYTES) and verified there first: the caller
        # gets the bytes once they are known to be the digest's, and they are held in memory once.
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            self._fetch_into(digest, spool)
            spool.seek(0)
            return spool.read()

    def get_file(self, digest: str, dest: Path) -> Path:
        dest = Path(dest)
        make_private_dir(dest.parent)
        # The download lands in a temp file beside dest and only becomes dest once verified.
        fd, name = tempfile.mkstemp(prefix=".~tmp-", dir=dest.parent)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                self._fetch_into(digest, out)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, PRIVATE_FILE)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return dest

    # Refs

    def set_ref(self, name: str, digest: str) -> None:
        key = REFS + check_ref_name(name)
        check_digest(digest)
        if not self.exists(digest):
            raise NotFound(f"cannot point reference {name!r} at {digest}: not in the store")
        body = (digest + "\n").encode()
        with self._errors(f"reference {name!r}", key):
            self.client.put_object(self.bucket, key, io.BytesIO(body), len(body))

    def _read_ref(self, name: str, key: str) -> str:
        with self._errors(f"reference {name!r}", key):
            response = self.client.get_object(self.bucket, key)
            try:
                # A reference is one digest: whatever a server sends past that is not read.
                raw = response.read(REF_MAX_BYTES + 1)
            finally:
                response.close()
                response.release_conn()
        try:
            if len(raw) > REF_MAX_BYTES:
                raise InvalidInput(f"more than {REF_MAX_BYTES} bytes")
            return check_digest(raw.decode(errors="replace").strip())
        except InvalidInput:
            raise IntegrityFailure(
                f"reference {name!r} at {self._where(key)} does not hold a digest"
            ) from None

    def get_ref(self, name: str) -> str:
        return self._read_ref(name, REFS + check_ref_name(name))

    def list_refs(self, prefix: str = "") -> dict[str, str]:
        with self._errors(f"references under {prefix!r}", REFS + prefix):
            listing = self.client.list_objects(self.bucket, prefix=REFS + prefix, recursive=True)
            keys = sorted(o.object_name for o in listing if not o.is_dir)
        return {key.removeprefix(REFS): self._read_ref(key.removeprefix(REFS), key) for key in keys}

    def delete_ref(self, name: str) -> None:
        key = REFS + check_ref_name(name)
        # S3 deletes are silent about missing keys; look first so both backends answer alike.
        with self._errors(f"reference {name!r}", key):
            self.client.stat_object(self.bucket, key)
            self.client.remove_object(self.bucket, key)
