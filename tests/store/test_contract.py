"""One contract, two backends: every test here runs on the folder store and on a real S3 server."""

from __future__ import annotations

import io
import os
import stat
import uuid
from pathlib import Path

import pytest

from airlock.config import Settings
from airlock.errors import IntegrityFailure, InvalidInput, NotFound
from airlock.store import ArtifactStore, open_store, sha256_bytes, sha256_file
from airlock.store.base import DIGEST_RE
from airlock.store.local import LocalStore
from airlock.store.s3 import S3Store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    settings = {"home": tmp_path / "home", "store_backend": request.param}
    if request.param == "s3":
        # Requested lazily, so `-k local` never starts the server.
        server = request.getfixturevalue("seaweedfs")
        settings |= {
            "s3_endpoint": server.endpoint,
            "s3_access_key": server.access_key,
            "s3_secret_key": server.secret_key,
            # A bucket per test keeps tests apart, and proves the store creates it.
            "s3_bucket": f"t-{uuid.uuid4().hex[:20]}",
        }
    return open_store(Settings(**settings))


def tamper(store: ArtifactStore, digest: str) -> None:
    """Flip one byte of a stored blob behind the store's back, where the layout says it lives."""
    hexdigest = digest.removeprefix("sha256:")
    if isinstance(store, LocalStore):
        path = store.root / "blobs" / "sha256" / hexdigest[:2] / hexdigest
        path.chmod(0o644)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(data)
        return
    key = f"blobs/sha256/{hexdigest}"
    response = store.client.get_object(store.bucket, key)
    data = bytearray(response.read())
    response.close()
    response.release_conn()
    data[len(data) // 2] ^= 0x01
    store.client.put_object(store.bucket, key, io.BytesIO(bytes(data)), len(data))


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if "~" in p.name]


# Blobs


@pytest.mark.parametrize("data", [b"hello airlock\n", b"", bytes(range(256)) * 100])
def test_bytes_round_trip(store: ArtifactStore, data: bytes) -> None:
    digest = store.put_bytes(data)
    assert DIGEST_RE.match(digest)
    assert digest == sha256_bytes(data)
    assert store.exists(digest)
    assert store.get_bytes(digest) == data


def test_put_is_idempotent_and_content_addressed(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "weights.bin"
    src.write_bytes(b"same bytes")
    first = store.put_bytes(b"same bytes")
    assert store.put_bytes(b"same bytes") == first
    assert store.put_file(src) == first
    assert store.put_file(src) == first
    assert store.get_bytes(first) == b"same bytes"


def test_file_round_trip_creates_parent_folders(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "adapter_config.json"
    src.write_text('{"r": 8}')
    digest = store.put_file(src)
    assert digest == sha256_file(src)
    dest = tmp_path / "out" / "deep" / "adapter_config.json"
    assert store.get_file(digest, dest) == dest
    assert dest.read_text() == '{"r": 8}'
    assert no_temp_files(dest.parent)


def test_get_file_replaces_an_existing_file(store: ArtifactStore, tmp_path: Path) -> None:
    dest = tmp_path / "f.txt"
    dest.write_text("old")
    store.get_file(store.put_bytes(b"new"), dest)
    assert dest.read_bytes() == b"new"


def test_multi_megabyte_file_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "model.safetensors"
    src.write_bytes(os.urandom(12 * 1024 * 1024 + 123))
    digest = store.put_file(src)
    assert digest == sha256_file(src)
    assert store.put_file(src) == digest
    dest = store.get_file(digest, tmp_path / "copy" / "model.safetensors")
    assert sha256_file(dest) == digest
    assert dest.stat().st_size == src.stat().st_size


def test_stored_layout(store: ArtifactStore) -> None:
    digest = store.put_bytes(b"layout")
    hexdigest = digest.removeprefix("sha256:")
    if isinstance(store, LocalStore):
        path = store.root / "blobs" / "sha256" / hexdigest[:2] / hexdigest
        assert path.read_bytes() == b"layout"
        assert stat.S_IMODE(path.stat().st_mode) == 0o400  # read-only, the owner's alone
        assert no_temp_files(path.parent)
    else:
        assert isinstance(store, S3Store)
        store.client.stat_object(store.bucket, f"blobs/sha256/{hexdigest}")


def test_missing_blob_is_not_found(store: ArtifactStore, tmp_path: Path) -> None:
    digest = sha256_bytes(b"never stored")
    assert not store.exists(digest)
    with pytest.raises(NotFound, match=digest):
        store.get_bytes(digest)
    dest = tmp_path / "dest.bin"
    with pytest.raises(NotFound):
        store.get_file(digest, dest)
    assert not dest.exists()
    assert no_temp_files(tmp_path)


def test_put_file_of_a_missing_path_is_not_found(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no such file"):
        store.put_file(tmp_path / "absent.bin")


BAD_DIGESTS = [
    "",
    "abc",
    "sha256:",
    "sha256:" + "0" * 63,
    "sha256:" + "0" * 65,
    "sha256:" + "A" * 64,
    "md5:" + "0" * 64,
    "0" * 64,
    "sha256:../../" + "0" * 58,
]


@pytest.mark.parametrize("bad", BAD_DIGESTS)
def test_malformed_digest_is_invalid_input(store: ArtifactStore, tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidInput, match="not a digest"):
        store.get_bytes(bad)
    with pytest.raises(InvalidInput):
        store.get_file(bad, tmp_path / "x")
    with pytest.raises(InvalidInput):
        store.exists(bad)
    with pytest.raises(InvalidInput):
        store.set_ref("models/x", bad)
    assert not (tmp_path / "x").exists()


def test_tampered_blob_fails_get_bytes(store: ArtifactStore) -> None:
    digest = store.put_bytes(b"the approved adapter weights " * 100)
    tamper(store, digest)
    with pytest.raises(IntegrityFailure) as err:
        store.get_bytes(digest)
    hexdigest = digest.removeprefix("sha256:")
    # The message says where the bad bytes are: the blob file or the object key.
    where = f"sha256/{hexdigest[:2]}/{hexdigest}" if isinstance(store, LocalStore) else (
        f"s3://{store.bucket}/blobs/sha256/{hexdigest}"
    )
    assert digest in str(err.value)
    assert where in str(err.value)


def test_tampered_blob_fails_get_file_and_leaves_dest_alone(
    store: ArtifactStore, tmp_path: Path
) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    digest = store.put_file(src)
    tamper(store, digest)

    out = tmp_path / "out"
    with pytest.raises(IntegrityFailure, match=digest):
        store.get_file(digest, out / "fresh.bin")
    assert not (out / "fresh.bin").exists()

    kept = out / "kept.bin"
    kept.write_bytes(b"previous good copy")
    with pytest.raises(IntegrityFailure):
        store.get_file(digest, kept)
    assert kept.read_bytes() == b"previous good copy"
    assert no_temp_files(out)


# References


def test_refs_set_get_overwrite_delete(store: ArtifactStore) -> None:
    one, two = store.put_bytes(b"one"), store.put_bytes(b"two")
    store.set_ref("models/tiny/champion", one)
    assert store.get_ref("models/tiny/champion") == one
    store.set_ref("models/tiny/champion", two)
    assert store.get_ref("models/tiny/champion") == two
    store.delete_ref("models/tiny/champion")
    with pytest.raises(NotFound, match="models/tiny/champion"):
        store.get_ref("models/tiny/champion")
    assert store.list_refs() == {}
    # The name is free again, even as a plain name at what was a folder.
    store.set_ref("models", one)
    assert store.get_ref("models") == one


def test_list_refs_by_prefix(store: ArtifactStore) -> None:
    a, b = store.put_bytes(b"a"), store.put_bytes(b"b")
    store.set_ref("models/tiny/champion", a)
    store.set_ref("models/tiny/challenger", b)
    store.set_ref("models/small/champion", b)
    store.set_ref("datasets/faq", a)
    assert store.list_refs() == {
        "datasets/faq": a,
        "models/small/champion": b,
        "models/tiny/challenger": b,
        "models/tiny/champion": a,
    }
    assert store.list_refs("models/tiny/") == {
        "models/tiny/challenger": b,
        "models/tiny/champion": a,
    }
    assert store.list_refs("datasets") == {"datasets/faq": a}
    assert store.list_refs("nothing/") == {}


def test_missing_ref_is_not_found(store: ArtifactStore) -> None:
    with pytest.raises(NotFound):
        store.get_ref("models/none")
    with pytest.raises(NotFound):
        store.delete_ref("models/none")


def test_ref_to_a_missing_blob_is_refused(store: ArtifactStore) -> None:
    with pytest.raises(NotFound):
        store.set_ref("models/ghost", sha256_bytes(b"not stored"))
    assert store.list_refs() == {}


@pytest.mark.parametrize(
    "name", ["", "../escape", "/abs", "a/../../b", "-dash", ".hidden", "has space", "a\nb"]
)
def test_bad_ref_names_are_invalid_input(store: ArtifactStore, name: str) -> None:
    digest = store.put_bytes(b"x")
    with pytest.raises(InvalidInput, match="reference name"):
        store.set_ref(name, digest)
    with pytest.raises(InvalidInput):
        store.get_ref(name)
    with pytest.raises(InvalidInput):
        store.delete_ref(name)


# Trees


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "adapter_config.json": b'{"r": 8, "lora_alpha": 16}',
        "adapter_model.safetensors": os.urandom(64 * 1024),
        "tokenizer/tokenizer.json": b'{"version": "1.0"}',
        "tokenizer/special/tokens.txt": b"<s>\n</s>\n",
        "empty.txt": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_tree_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "adapter")
    digest = store.put_tree(tmp_path / "adapter")
    assert DIGEST_RE.match(digest)
    assert store.put_tree(tmp_path / "adapter") == digest

    index = store.tree_index(digest)
    assert sorted(index) == sorted(files)
    for rel, data in files.items():
        assert index[rel] == {"sha256": sha256_bytes(data), "size": len(data)}

    out = store.get_tree(digest, tmp_path / "restored")
    restored = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
                if p.is_file()}
    assert restored == files


def test_tree_with_a_tampered_file_fails(store: ArtifactStore, tmp_path: Path) -> None:
    make_tree(tmp_path / "adapter")
    digest = store.put_tree(tmp_path / "adapter")
    weights = store.tree_index(digest)["adapter_model.safetensors"]["sha256"]
    tamper(store, weights)
    with pytest.raises(IntegrityFailure, match=weights):
        store.get_tree(digest, tmp_path / "restored")
    assert not (tmp_path / "restored" / "adapter_model.safetensors").exists()


def test_tree_index_of_a_plain_blob_is_refused(store: ArtifactStore) -> None:
    with pytest.raises(IntegrityFailure, match="not a tree"):
        store.tree_index(store.put_bytes(b'{"kind": "something else"}'))
