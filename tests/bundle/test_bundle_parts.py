"""Splitting the payload into parts, checking them before use, and streaming them back."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest

from airlock.bundle.parts import (
    MIB,
    open_payload,
    parse_size,
    verify_parts,
    write_parts,
)
from airlock.errors import IntegrityFailure, InvalidInput

PART = 64 * 1024


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, list[dict], bytes]:
    """Two and a half parts of random bytes in a bundle directory beside a manifest-like file."""
    data = os.urandom(PART * 2 + PART // 2)
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    return out, write_parts(io.BytesIO(data), out, part_size=PART), data


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize(("text", "size"), [
    ("700M", 700 * MIB), ("4G", 4 << 30), ("650MiB", 650 * MIB), ("1000000", 1_000_000),
    ("2t", 2 << 40), ("512K", 512 << 10), ("1 GiB", 1 << 30), ("700MB", 700 * MIB),
])
def test_part_sizes_are_parsed_in_binary_units(text: str, size: int) -> None:
    assert parse_size(text, minimum=1) == size


@pytest.mark.parametrize("text", ["", "M", "-5M", "1.5G", "7X", "4 G B", "0x10"])
def test_a_malformed_part_size_names_the_flag_and_the_value(text: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_size(text)
    assert "--part-size" in str(err.value) and repr(text) in str(err.value)


def test_a_part_below_one_mebibyte_is_refused_unless_a_lower_minimum_is_given() -> None:
    with pytest.raises(InvalidInput, match=r"--part-size '512K': 512.0 KiB is below the smallest part size, 1.0 MiB"):
        parse_size("512K")
    assert parse_size("512K", minimum=1024) == 512 * 1024


def test_parts_hold_the_stream_in_order_with_their_sizes_and_digests(bundle) -> None:
    out, parts, data = bundle
    assert [p["name"] for p in parts] == ["payload.tar.part000", "payload.tar.part001", "payload.tar.part002"]
    assert [p["size"] for p in parts] == [PART, PART, PART // 2]
    offset = 0
    for part in parts:
        chunk = data[offset:offset + part["size"]]
        assert (out / part["name"]).read_bytes() == chunk
        assert part["sha256"] == hashlib.sha256(chunk).hexdigest()
        assert stat.S_IMODE((out / part["name"]).stat().st_mode) == 0o644
        offset += part["size"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", *[p["name"] for p in parts]]
    verify_parts(out, parts)
    verify_parts(out, parts, workers=1)
    with open_payload(out, parts) as payload:
        assert payload.read() == data


def test_a_stream_ending_at_a_part_boundary_leaves_no_empty_last_part(tmp_path: Path) -> None:
    parts = write_parts(io.BytesIO(b"x" * (2 * 1024)), tmp_path, part_size=1024)
    assert [p["size"] for p in parts] == [1024, 1024]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["payload.tar.part000", "payload.tar.part001"]


def test_part_names_get_enough_digits_to_stay_in_order(tmp_path: Path) -> None:
    parts = write_parts(io.BytesIO(b"y" * 1001), tmp_path, part_size=1)
    assert parts[0]["name"] == "payload.tar.part0000" and parts[-1]["name"] == "payload.tar.part1000"
    assert sorted(p["name"] for p in parts) == [p["name"] for p in parts]
    assert len(list(tmp_path.iterdir())) == 1001


def test_a_directory_with_parts_of_an_earlier_build_is_refused(bundle) -> None:
    out, _, _ = bundle
    with pytest.raises(InvalidInput, match=r"already holds payload.tar.part000 from an earlier build"):
        write_parts(io.BytesIO(b"z"), out, part_size=PART)


def test_a_failing_stream_leaves_no_part_behind(tmp_path: Path) -> None:
    class Broken(io.RawIOBase):
        sent = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            if self.sent > 3 * 1024:
                raise OSError("the tar writer died")
            buffer[:512] = b"t" * 512
            self.sent += 512
            return 512

    with pytest.raises(OSError, match="the tar writer died"):
        write_parts(Broken(), tmp_path, part_size=1024)
    assert list(tmp_path.iterdir()) == []


def test_a_flipped_byte_in_a_part_is_refused_naming_the_part(bundle) -> None:
    out, parts, _ = bundle
    flip_byte(out / "payload.tar.part001", 1234)
    with pytest.raises(IntegrityFailure, match=r"bundle part payload.tar.part001 \(.*\): sha256 [0-9a-f]{64}, "
                                               r"the signed manifest says " + parts[1]["sha256"]):
        verify_parts(out, parts)


def test_the_first_bad_part_in_manifest_order_is_reported(bundle) -> None:
    out, parts, _ = bundle
    flip_byte(out / "payload.tar.part002", 0)
    flip_byte(out / "payload.tar.part000", 0)
    with pytest.raises(IntegrityFailure, match=r"bundle part payload.tar.part000 "):
        verify_parts(out, parts, workers=3)


def test_a_truncated_part_names_its_expected_and_found_size(bundle) -> None:
    out, parts, _ = bundle
    os.truncate(out / "payload.tar.part001", PART - 100)
    with pytest.raises(IntegrityFailure, match=rf"bundle part payload.tar.part001 \(.*\): {PART - 100} bytes, "
                                               rf"the signed manifest says {PART} \(truncated\)"):
        verify_parts(out, parts)


def test_a_missing_part_is_named(bundle) -> None:
    out, parts, _ = bundle
    (out / "payload.tar.part002").unlink()
    with pytest.raises(IntegrityFailure, match=r"bundle part payload.tar.part002 \(.*\): missing"):
        verify_parts(out, parts)


def test_a_part_the_manifest_does_not_list_is_refused(bundle) -> None:
    out, parts, _ = bundle
    (out / "payload.tar.part003").write_bytes(b"planted")
    with pytest.raises(IntegrityFailure, match=r"part file\(s\) the signed manifest does not list: payload.tar.part003"):
        verify_parts(out, parts)


def test_a_part_changed_between_verify_and_read_is_caught_at_its_end(bundle) -> None:
    out, parts, data = bundle
    verify_parts(out, parts)
    flip_byte(out / "payload.tar.part001", 10)
    with open_payload(out, parts) as payload:
        assert payload.read(PART) == data[:PART]  # the untouched first part streams through
        with pytest.raises(IntegrityFailure, match=r"bundle part payload.tar.part001 \(.*\): changed after it was "
                                                   r"verified: sha256 [0-9a-f]{64}, the signed manifest says "
                                                   + parts[1]["sha256"]):
            payload.read()


def test_a_part_grown_or_cut_after_verify_is_caught_while_streaming(bundle) -> None:
    out, parts, _ = bundle
    verify_parts(out, parts)
    with (out / "payload.tar.part000").open("ab") as f:
        f.write(b"extra")
    with open_payload(out, parts) as payload, pytest.raises(IntegrityFailure, match=r"part000 .* grew beyond"):
        payload.read()
    os.truncate(out / "payload.tar.part000", PART)
    os.truncate(out / "payload.tar.part002", 10)
    with open_payload(out, parts) as payload, pytest.raises(IntegrityFailure, match=r"part002 .* truncated after"):
        payload.read()
