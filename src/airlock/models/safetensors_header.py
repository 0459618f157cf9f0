"""Reading a safetensors file's header (tensor names, dtypes, shapes, offsets) without its weights.

The format is 8 bytes of little-endian header length, a JSON header, then the raw tensor bytes.
Everything airlock needs to know about a model's tensors before it loads them is in that header,
so it is read here with the standard library, bounded in size, and checked against the file's
real length: a header whose offsets run past the end or disagree with a tensor's shape and dtype
describes weights that are not there.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

FORMAT_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit
# Bytes per element of each dtype the format names.
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


class HeaderError(ValueError):
    """The header is unreadable or inconsistent; the message says how, without the file's name."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path, *, max_bytes: int = FORMAT_MAX_HEADER, check_offsets: bool = True) -> dict[str, TensorInfo]:
    """The tensors that `path`'s header describes, by name. HeaderError when the header is larger
    than `max_bytes`, is not a JSON object of tensor entries, or (with `check_offsets`) when the
    tensors' byte ranges do not tile the data section exactly as their shapes and dtypes say."""
    size = Path(path).stat().st_size
    with Path(path).open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise HeaderError(f"only {len(prefix)} bytes: not a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        # A damaged or hostile length would otherwise ask read() for exabytes.
        if length > min(max_bytes, FORMAT_MAX_HEADER):
            raise HeaderError(f"its header claims {length} bytes, more than the {min(max_bytes, FORMAT_MAX_HEADER)} "
                              "allowed")
        if length > size - 8:
            raise HeaderError(f"its header claims {length} bytes but the file holds only {size - 8} after the prefix")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HeaderError(f"its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise HeaderError("its header is not a JSON object")
    tensors: dict[str, TensorInfo] = {}
    ranges: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        info, begin, end = _entry(name, entry)
        tensors[name] = info
        ranges.append((begin, end, name))
    if check_offsets:
        _check_ranges(ranges, size - 8 - length)
    return tensors


def _entry(name: str, entry: object) -> tuple[TensorInfo, int, int]:
    try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_BYTES or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise TypeError
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
            raise TypeError
    except (TypeError, KeyError, ValueError):
        raise HeaderError(f"tensor {name!r} has a malformed entry (dtype, shape, data_offsets)") from None
    info = TensorInfo(name, dtype, tuple(shape))
    if end - begin != info.numel * DTYPE_BYTES[dtype]:
        raise HeaderError(f"tensor {name!r} spans {end - begin} bytes but {dtype} {list(shape)} needs "
                          f"{info.numel * DTYPE_BYTES[dtype]}")
    return info, begin, end


def _check_ranges(ranges: list[tuple[int, int, str]], data_size: int) -> None:
    """The byte ranges must follow each other without gap or overlap and end where the file does:
    bytes outside every tensor are bytes no check has looked at."""
    position = 0
    for begin, end, name in sorted(ranges):
        if begin != position:
            raise HeaderError(f"tensor {name!r} starts at byte {begin} of the data, expected {position} "
                              "(a gap or an overlap)")
        position = end
    if position != data_size:
        raise HeaderError(f"its tensors end at byte {position} of the data, but the file holds {data_size} "
                          "(truncated or padded)")
