"""The S3 backend streams what it reads and verifies it before handing anything over, so a large
object never sits whole in memory on the way in, and a server's oversized reference is not read."""

from __future__ import annotations

import io
import os
import tracemalloc
import uuid
from pathlib import Path

import pytest

from airlock.errors import IntegrityFailure
from airlock.store.base import CHUNK, sha256_file
from airlock.store.s3 import REF_MAX_BYTES, S3Store

BIG = 48 * CHUNK  # 48 MiB: far above a chunk, and above what a copy in memory would hide


@pytest.fixture
def s3(seaweedfs) -> S3Store:
    return S3Store(endpoint=seaweedfs.endpoint, access_key=seaweedfs.access_key,
                   secret_key=seaweedfs.secret_key, bucket=f"t-{uuid.uuid4().hex[:20]}")


@pytest.fixture
def big_blob(s3: S3Store, tmp_path: Path) -> str:
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for _ in range(BIG // CHUNK):
            f.write(os.urandom(CHUNK))
    digest = s3.put_file(src)
    src.unlink()
    return digest


def peak_of(call) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_get_file_holds_a_few_chunks_of_a_large_object(s3: S3Store, big_blob: str, tmp_path: Path) -> None:
    """If the object were read whole before verification, the traced peak would be the object's
    48 MiB rather than a few chunks."""
    dest, peak = peak_of(lambda: s3.get_file(big_blob, tmp_path / "out" / "big.bin"))
    assert sha256_file(dest) == big_blob
    assert peak < 8 * CHUNK, f"peak {peak / CHUNK:.1f} MiB for a {BIG // CHUNK} MiB object"


def test_get_bytes_holds_the_object_once(s3: S3Store, big_blob: str) -> None:
    """If the download were gathered in memory and then copied (as a bytearray turned into bytes),
    the peak would be twice the object."""
    data, peak = peak_of(lambda: s3.get_bytes(big_blob))
    assert len(data) == BIG
    assert peak < BIG + 8 * CHUNK, f"peak {peak / CHUNK:.1f} MiB for a {BIG // CHUNK} MiB object"


def test_a_changed_large_object_is_refused_and_nothing_is_left(s3: S3Store, big_blob: str, tmp_path: Path) -> None:
    """If bytes were handed over before the digest was checked, a reviewer would find the changed
    object at the destination (or returned)."""
    key = "blobs/sha256/" + big_blob.removeprefix("sha256:")
    # The server's copy is replaced behind the store's back by one of the same size.
    s3.client.put_object(s3.bucket, key, io.BytesIO(b"\0" * BIG), BIG, part_size=16 * CHUNK)
    dest = tmp_path / "out" / "big.bin"
    with pytest.raises(IntegrityFailure, match="has changed"):
        s3.get_file(big_blob, dest)
    assert list(dest.parent.iterdir()) == []
    with pytest.raises(IntegrityFailure, match="has changed"):
        s3.get_bytes(big_blob)


def test_an_oversized_reference_is_refused_unread(s3: S3Store, big_blob: str) -> None:
    """If a reference were read whole, a server (or whoever writes its bucket) could make every
    reader take a 48 MiB answer into memory; it must be refused after a few bytes."""
    huge = (big_blob + "\n").encode() + b" " * BIG
    s3.client.put_object(s3.bucket, "refs/huge", io.BytesIO(huge), len(huge), part_size=16 * CHUNK)
    (_, peak) = peak_of(lambda: pytest.raises(IntegrityFailure, s3.get_ref, "huge"))
    assert peak < 4 * CHUNK
    with pytest.raises(IntegrityFailure, match="does not hold a digest"):
        s3.get_ref("huge")
    assert REF_MAX_BYTES < 1024
