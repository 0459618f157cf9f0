"""Safe extraction: real tar archives with the hostile member really in them, refused before it lands.

Every refusal also checks that nothing is left beside the destination: the listing of its parent
directory (recursively) is the same before and after, so neither the private directory nor a
stray file survived.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from airlock.bundle.extract import extract_verified, safe_relpath
from airlock.bundle.parts import open_payload, verify_parts, write_parts
from airlock.errors import IntegrityFailure, InvalidInput, NotFound

OK = b"a file that is fine\n"


def entry(data: bytes, mode: str = "0644") -> dict:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "mode": mode}


def member(name: str, kind: bytes = tarfile.REGTYPE, *, mode: int = 0o644, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def listing(root: Path) -> list[tuple[str, int]]:
    """Every path under `root` with its type and permission bits."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            out.append((str(path.relative_to(root)), path.lstat().st_mode))
    return sorted(out)


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """The directory the destination goes into, with something of its own already there."""
    parent = tmp_path / "releases"
    parent.mkdir()
    (parent / "keep.txt").write_text("the previous release's file")
    return parent


def first_ok(*rest: tuple[tarfile.TarInfo, bytes | None]) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """A legitimate file first, so the private directory already holds something when the bad member comes."""
    return [(member("ok.txt"), OK), *rest]


# (the members, the manifest's files, the refusal's text)
Case = tuple[Callable[[], list], dict, str]
HOSTILE: dict[str, Case] = {
    "dot-dot": (lambda: first_ok((member("../x"), b"escape")), {"ok.txt": entry(OK)},
                "payload member '../x': a path outside the bundle"),
    "absolute": (lambda: first_ok((member("/etc/x"), b"owned")), {"ok.txt": entry(OK)},
                 "payload member '/etc/x': an absolute path"),
    "backslash": (lambda: first_ok((member("a\\b"), b"x")), {"ok.txt": entry(OK)},
                  "payload member 'a\\\\b': a backslash in the path"),
    "dot-component": (lambda: first_ok((member("a/./b"), b"x")), {"ok.txt": entry(OK), "a/b": entry(b"x")},
                      "payload member 'a/./b': a '.' component in the path"),
    "control-character": (lambda: first_ok((member("a\nb"), b"x")), {"ok.txt": entry(OK)},
                          "payload member 'a\\nb': a control character in the path"),
    "not-nfc": (lambda: first_ok((member("cafe\u0301.txt"), b"x")), {"ok.txt": entry(OK)},
                "payload member 'cafe\u0301.txt': not in Unicode normal form NFC (code points: 'cafe\\u0301.txt')"),
    "symlink": (lambda: first_ok((member("link", tarfile.SYMTYPE, linkname="/etc/passwd"), None)),
                {"ok.txt": entry(OK), "link": entry(b"")},
                "payload member 'link': a symbolic link (to '/etc/passwd'); only regular files and directories"),
    "hardlink": (lambda: first_ok((member("hard", tarfile.LNKTYPE, linkname="ok.txt"), None)),
                 {"ok.txt": entry(OK), "hard": entry(OK)},
                 "payload member 'hard': a hard link (to 'ok.txt'); only regular files and directories"),
    "character-device": (lambda: first_ok((member("null", tarfile.CHRTYPE), None)),
                         {"ok.txt": entry(OK), "null": entry(b"")},
                         "payload member 'null': a character device; only regular files and directories"),
    "block-device": (lambda: first_ok((member("disk", tarfile.BLKTYPE), None)),
                     {"ok.txt": entry(OK), "disk": entry(b"")},
                     "payload member 'disk': a block device; only regular files and directories"),
    "fifo": (lambda: first_ok((member("pipe", tarfile.FIFOTYPE), None)), {"ok.txt": entry(OK), "pipe": entry(b"")},
             "payload member 'pipe': a FIFO; only regular files and directories"),
    "setuid": (lambda: first_ok((member("bin/tool", mode=0o4755), b"#!/bin/sh\n")),
               {"ok.txt": entry(OK), "bin/tool": entry(b"#!/bin/sh\n", "0755")},
               "payload member 'bin/tool': mode 4755 has the setuid bit"),
    "setgid": (lambda: first_ok((member("bin/tool", mode=0o2755), b"#!/bin/sh\n")),
               {"ok.txt": entry(OK), "bin/tool": entry(b"#!/bin/sh\n", "0755")},
               "payload member 'bin/tool': mode 2755 has the setgid bit"),
    "sticky-directory": (lambda: first_ok((member("shared", tarfile.DIRTYPE, mode=0o1777), None)),
                         {"ok.txt": entry(OK), "shared/f": entry(b"f")},
                         "payload member 'shared': mode 1777 has the sticky bit"),
    "duplicate": (lambda: first_ok((member("dup"), b"first"), (member("dup"), b"first")),
                  {"ok.txt": entry(OK), "dup": entry(b"first")},
                  "payload member 'dup': appears twice in the archive"),
    "unlisted-file": (lambda: first_ok((member("extra.txt"), b"smuggled")), {"ok.txt": entry(OK)},
                      "payload member 'extra.txt': not listed by the signed manifest"),
    "unlisted-directory": (lambda: first_ok((member("empty", tarfile.DIRTYPE, mode=0o755), None)),
                           {"ok.txt": entry(OK)},
                           "payload member 'empty': a directory that holds none of the manifest's files"),
    "missing-file": (lambda: first_ok(), {"ok.txt": entry(OK), "models/gone.safetensors": entry(b"w")},
                     "payload: listed by the signed manifest but not in the archive: 'models/gone.safetensors'"),
    "size-mismatch": (lambda: first_ok((member("w.bin"), b"123456")), {"ok.txt": entry(OK), "w.bin": entry(b"12345")},
                      "payload member 'w.bin': 6 bytes, the signed manifest says 5"),
    "one-byte-changed": (lambda: first_ok((member("w.bin"), b"weights!")),
                         {"ok.txt": entry(OK), "w.bin": entry(b"weights?")},
                         "payload member 'w.bin': sha256 " + hashlib.sha256(b"weights!").hexdigest()
                         + ", the signed manifest says " + hashlib.sha256(b"weights?").hexdigest()),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_a_hostile_or_mismatched_archive_is_refused_and_leaves_nothing(case: str, place: Path, tmp_path: Path) -> None:
    members, files, message = HOSTILE[case]
    archive = tmp_path / "payload.tar"
    archive.write_bytes(tar_bytes(members()))
    before, etc_x = listing(tmp_path), Path("/etc/x").exists()
    with archive.open("rb") as payload, pytest.raises(IntegrityFailure) as err:
        extract_verified(payload, files, place / "release")
    assert message in str(err.value)
    assert listing(tmp_path) == before
    assert not (place / "release").exists() and Path("/etc/x").exists() == etc_x


def test_a_truncated_archive_is_refused(place: Path) -> None:
    data = tar_bytes([(member("ok.txt"), OK), (member("big"), b"b" * 5000)])
    before = listing(place)
    with pytest.raises(IntegrityFailure, match=r"payload: not a complete tar archive \(unexpected end of data\)"):
        extract_verified(io.BytesIO(data[:2500]), {"ok.txt": entry(OK), "big": entry(b"b" * 5000)}, place / "release")
    assert listing(place) == before


@pytest.mark.parametrize(("files", "problem"), [
    ({"../x": entry(b"x")}, "'../x': a path outside the bundle"),
    ({"/etc/x": entry(b"x")}, "'/etc/x': an absolute path"),
    ({"a/": entry(b"x")}, "'a/': an empty component in the path"),
    ({"a": entry(b"x"), "a/b": entry(b"y")}, "'a': both a file and the directory of other files"),
    ({"a": {**entry(b"x"), "sha256": "ABC"}}, "'a': sha256 'ABC' is not 64 lowercase hex digits"),
    ({"a": {**entry(b"x"), "mode": "4755"}}, "'a': mode '4755' is not a plain permission mode"),
    ({"a": {**entry(b"x"), "size": -1}}, "'a': size -1 is not a byte count"),
])
def test_an_unsafe_manifest_entry_is_refused_before_the_payload_is_read(files: dict, problem: str, place: Path) -> None:
    payload = io.BytesIO(tar_bytes([(member("a"), b"x")]))
    before = listing(place)
    with pytest.raises(InvalidInput, match="manifest files: cannot be extracted safely") as err:
        extract_verified(payload, files, place / "release")
    assert problem in err.value.problems[0]
    assert payload.tell() == 0 and listing(place) == before


def test_files_land_with_the_manifest_modes_and_the_destination_appears_whole(place: Path) -> None:
    script, weights = b"#!/bin/sh\necho hi\n", os.urandom(300_000)
    files = {"ok.txt": entry(OK), "bin/run": entry(script, "0755"), "models/m/w.safetensors": entry(weights)}
    data = tar_bytes([(member("bin", tarfile.DIRTYPE, mode=0o700), None), (member("bin/run", mode=0o600), script),
                      (member("models/m/w.safetensors", mode=0o777), weights), (member("ok.txt"), OK)])
    old_umask = os.umask(0o077)  # the umask must not decide the unpacked modes
    try:
        extract_verified(io.BytesIO(data), files, place / "release")
    finally:
        os.umask(old_umask)
    dest = place / "release"
    modes = {path: stat.S_IMODE(mode) for path, mode in listing(dest)}
    assert modes == {"bin": 0o755, "bin/run": 0o755, "models": 0o755, "models/m": 0o755,
                     "models/m/w.safetensors": 0o644, "ok.txt": 0o644}
    assert (dest / "models/m/w.safetensors").read_bytes() == weights
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert sorted(p.name for p in place.iterdir()) == ["keep.txt", "release"]


def test_an_existing_destination_or_a_missing_parent_is_refused(place: Path) -> None:
    payload = io.BytesIO(tar_bytes([(member("ok.txt"), OK)]))
    with pytest.raises(InvalidInput, match=r"keep.txt: already exists"):
        extract_verified(payload, {"ok.txt": entry(OK)}, place / "keep.txt")
    with pytest.raises(NotFound, match=r"nowhere: no such directory to unpack 'release' into"):
        extract_verified(payload, {"ok.txt": entry(OK)}, place / "nowhere" / "release")
    assert payload.tell() == 0


def test_a_part_changed_after_verify_is_caught_even_past_the_last_member(place: Path, tmp_path: Path) -> None:
    """The end-of-archive blocks are never parsed by tarfile, yet their part is still checked."""
    weights = os.urandom(20_000)
    files = {"ok.txt": entry(OK), "w.safetensors": entry(weights)}
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    parts = write_parts(io.BytesIO(tar_bytes([(member("ok.txt"), OK), (member("w.safetensors"), weights)])),
                        bundle, part_size=8192)
    verify_parts(bundle, parts)
    with open_payload(bundle, parts) as payload:  # the untampered bundle unpacks
        extract_verified(payload, files, place / "good")
    last = bundle / parts[-1]["name"]
    with last.open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x01")
    before = listing(tmp_path)
    with open_payload(bundle, parts) as payload, pytest.raises(IntegrityFailure) as err:
        extract_verified(payload, files, place / "release")
    assert f"bundle part {last.name} ({last}): changed after it was verified" in str(err.value)
    assert listing(tmp_path) == before and not (place / "release").exists()


@pytest.mark.parametrize(("name", "reason"), [
    ("wheels/a-1-py3-none-any.whl", None), ("models/ref/config.json", None), ("", "an empty path"),
    ("a//b", "an empty component in the path (a doubled or trailing '/')"), ("a/..", "a path outside the bundle"),
    ("a\x7fb", "a control character in the path"), ("a\udcffb", "bytes that are not UTF-8 in the path"),
    (7, "not a text path"),
])
def test_safe_relpath_gives_the_reason(name: object, reason: str | None) -> None:
    assert safe_relpath(name) == reason


DISK_FULL = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from airlock.bundle.extract import extract_verified
    from airlock.errors import AirlockError
    archive, manifest, dest = sys.argv[1:4]
    try:
        with open(archive, "rb") as payload:
            extract_verified(payload, json.loads(Path(manifest).read_text()), Path(dest))
    except AirlockError as exc:
        print("REFUSED:", exc)
        sys.exit(3)
""")


def test_disk_full_during_extraction_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs in a mount namespace needs root")
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is not installed")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"this host does not allow a new mount namespace: {probe.stderr.strip()}")
    big = os.urandom(4 << 20)
    archive, manifest, script = tmp_path / "payload.tar", tmp_path / "files.json", tmp_path / "extract.py"
    archive.write_bytes(tar_bytes([(member("ok.txt"), OK), (member("models/big.safetensors"), big)]))
    manifest.write_text(json.dumps({"ok.txt": entry(OK), "models/big.safetensors": entry(big)}))
    script.write_text(DISK_FULL)
    small = tmp_path / "small"
    small.mkdir()
    shell = ('mount -t tmpfs -o size=2m tmpfs "$1" || exit 99; "$2" "$3" "$4" "$5" "$1/release"; '
             'echo "exit=$?"; echo "left:"; ls -A "$1"')
    done = subprocess.run(["unshare", "-m", "sh", "-c", shell, "sh", str(small), sys.executable, str(script),
                           str(archive), str(manifest)], capture_output=True, text=True, timeout=60, check=False)
    out = done.stdout
    assert done.returncode == 0, done.stderr
    assert (f"REFUSED: unpacking into {small}/release: writing 'models/big.safetensors' failed: "
            "no space left on device; the partial unpack was removed") in out, out + done.stderr
    assert "exit=3" in out
    assert out.split("left:\n", 1)[1].strip() == "", "the tmpfs still holds: " + out.split("left:\n", 1)[1]
