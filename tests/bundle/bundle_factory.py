"""Small real bundles for tests: real keys, a real signed root, a real tar split into real parts.

Built with the same functions `airlock bundle build` uses for the tar, the parts and the manifest;
only the payload is a handful of small files instead of gigabytes of wheels.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import zipfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airlock.bundle import manifest as bm
from airlock.bundle.parts import write_parts
from airlock.bundle.payload import file_entries, sha256_file, write_tar
from airlock.trust.ed25519 import key_id
from airlock.trust.root import canonical_json, pae

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
HOST = {"arch": "x86_64", "os": "linux", "glibc": "2.36", "python": "3.11", "cuda": None, "gpus": 0}
TARGET = {"arch": "x86_64", "os": "linux", "glibc": "2.28", "python": "3.11", "cuda": None}


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def kid(key: Ed25519PrivateKey) -> str:
    return key_id(raw(key))


@dataclass
class Keys:
    root: list[Ed25519PrivateKey] = field(default_factory=lambda: [Ed25519PrivateKey.generate() for _ in range(3)])
    bundle: list[Ed25519PrivateKey] = field(default_factory=lambda: [Ed25519PrivateKey.generate() for _ in range(2)])
    model: list[Ed25519PrivateKey] = field(default_factory=lambda: [Ed25519PrivateKey.generate()])


def root_doc(keys: Keys, *, version: int = 1, signers: list | None = None, expires: datetime | None = None,
             thresholds: tuple[int, int, int] = (2, 1, 1)) -> dict:
    every = [*keys.root, *keys.bundle, *keys.model]
    signed = {"_type": "airlock.root/v1", "version": version,
              "expires": bm.utc_text(expires or NOW + timedelta(days=365)),
              "keys": {kid(k): {"keytype": "ed25519", "public": raw(k).hex()} for k in every},
              "roles": {name: {"keyids": [kid(k) for k in group], "threshold": t}
                        for name, group, t in zip(("root", "bundle", "model"),
                                                  (keys.root, keys.bundle, keys.model), thresholds)}}
    message = canonical_json(signed)
    signers = keys.root[:2] if signers is None else signers
    return {"signed": signed, "signatures": [{"keyid": kid(k), "sig": k.sign(message).hex()} for k in signers]}


def envelope(payload: bytes, signers: list, payload_type: str = bm.PAYLOAD_TYPE) -> dict:
    message = pae(payload_type, payload)
    return {"payloadType": payload_type, "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": kid(k), "sig": base64.b64encode(k.sign(message)).decode()} for k in signers]}


def tiny_wheel(folder: Path, name: str = "airlock_demo", version: str = "1.0") -> Path:
    """A real, installable pure-Python wheel (with random ballast so parts split)."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n".encode(),
             f"{name}/ballast.bin": os.urandom(200_000),
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for path, data in files.items()) + f"{dist}/RECORD,,\n"
    files[f"{dist}/RECORD"] = record.encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for arc, data in files.items():
            zf.writestr(arc, data)
    return path


def payload_tree(root: Path) -> None:
    (root / "wheels").mkdir(parents=True)
    wheel = tiny_wheel(root / "wheels")
    (root / "wheels" / "requirements.lock").write_text(f"airlock-demo==1.0 --hash=sha256:{sha256_file(wheel)}\n")
    (root / "models" / "tiny").mkdir(parents=True)
    (root / "models" / "tiny" / "model.safetensors").write_bytes(os.urandom(300_000))
    (root / "models" / "tiny" / "config.json").write_text('{"model_type": "llama"}')
    (root / "images").mkdir()
    (root / "images" / "airlock-gateway.oci.tar").write_bytes(os.urandom(200_000))  # the signed file's bytes
    (root / "sbom.cdx.json").write_text("{}")


def tar_into_parts(payload: Path, files: dict, out: Path, part_size: int) -> list[dict]:
    read_fd, write_fd = os.pipe()

    def produce() -> None:
        with os.fdopen(write_fd, "wb") as w:
            write_tar(payload, files, w)

    writer = threading.Thread(target=produce)
    writer.start()
    with os.fdopen(read_fd, "rb") as r:
        parts = write_parts(r, out, part_size=part_size)
    writer.join()
    return parts


def make_bundle(out: Path, keys: Keys, *, sequence: int = 5, signers: list | None = None,
                expires: datetime | None = None, root: dict | None = None, target: dict | None = None,
                part_size: int = 128 * 1024, images: dict[str, tuple[Path, str]] | None = None) -> dict:
    """A signed bundle in `out`; returns its manifest. `images`: service -> (an OCI archive, the tag
    the manifest says it holds), carried under images/ and named in the manifest's contents."""
    staging = out.parent / f"{out.name}-payload"
    payload_tree(staging)
    listed = []
    for service, (archive, tag) in (images or {}).items():
        shutil.copy2(archive, staging / "images" / f"airlock-{service}.oci.tar")
        listed.append({"service": service, "tag": tag, "file": f"images/airlock-{service}.oci.tar"})
    files = file_entries(staging)
    out.mkdir(parents=True)
    parts = tar_into_parts(staging, files, out, part_size)
    (out / "install.sh").write_text("#!/bin/sh\necho install\n")
    (out / bm.ROOT_NAME).write_bytes(canonical_json(root or root_doc(keys)))
    outside = {n: {"size": (out / n).stat().st_size, "sha256": sha256_file(out / n)} for n in ("install.sh", bm.ROOT_NAME)}
    manifest = bm.new_manifest(version="0.1.0", sequence=sequence, target=target or TARGET, files=files,
                               parts=parts, outside=outside, contents={"wheels": 1, "images": listed},
                               created=NOW - timedelta(hours=1), expires=expires or NOW + timedelta(days=30))
    payload = canonical_json(manifest)
    (out / bm.MANIFEST_NAME).write_bytes(payload)
    (out / bm.ENVELOPE_NAME).write_bytes(canonical_json(envelope(payload, keys.bundle[:1] if signers is None
                                                                 else signers)))
    return manifest
