"""Which wheel files a target host can install: the pip flags that select them on a build host of
any kind, the tag set that checks a file's name, and the marker environment of the target.

Both targets (cpu and cuda) are Linux x86_64 with CPython 3.11. A plain `pip download` picks files
for the build host's own tags; these flags make pip pick for the target instead. pip does not
widen a `--platform manylinux_2_31_x86_64` to the older glibc levels, so every level is named.
"""

from __future__ import annotations

from functools import cache

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

PYTHON = (3, 11)
ABI = "cp311"
# The newest glibc a carried wheel may need. 2.31 because vLLM's llguidance ships x86_64 wheels
# for manylinux_2_31 only; it still covers Debian 11+, Ubuntu 20.04+ and RHEL 9.
GLIBC_CEILING = (2, 31)
OLDEST_MANYLINUX = 5
LEGACY_ALIASES = ("manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64")
# The marker environment pip and the lock writer evaluate dependencies in (PEP 508).
TARGET_MARKERS = {
    "implementation_name": "cpython", "platform_python_implementation": "CPython",
    "python_version": "3.11", "python_full_version": "3.11.0", "implementation_version": "3.11.0",
    "os_name": "posix", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "platform_release": "", "platform_version": "",
}


def platforms() -> list[str]:
    """Most specific first, the order pip prefers them in."""
    major, ceiling = GLIBC_CEILING
    levels = [f"manylinux_{major}_{minor}_x86_64" for minor in range(ceiling, OLDEST_MANYLINUX - 1, -1)]
    return levels + list(LEGACY_ALIASES)


def pip_target_args() -> list[str]:
    """pip flags that choose binary files for the target, whatever host pip runs on."""
    args = ["--only-binary=:all:", "--python-version", "{}.{}".format(*PYTHON), "--implementation", "cp"]
    for abi in (ABI, "abi3", "none"):  # pip adds neither abi3 nor none by itself once --abi is given
        args += ["--abi", abi]
    for platform in platforms():
        args += ["--platform", platform]
    return args


@cache
def target_tags() -> frozenset[Tag]:
    plats = platforms()
    return frozenset([*cpython_tags(PYTHON, [ABI], plats), *compatible_tags(PYTHON, ABI, plats)])


def wheel_problem(filename: str) -> str | None:
    """Why a file cannot be installed on the target, or None when it can."""
    if not filename.endswith(".whl"):
        return "not a wheel (an sdist or another archive would be built on the target); binary wheels only"
    try:
        _, _, _, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        return f"not a valid wheel file name ({exc})"
    if tags.isdisjoint(target_tags()):
        have = ", ".join(sorted(str(t) for t in tags))
        return (f"built for {have}, not for the target (CPython {PYTHON[0]}.{PYTHON[1]}, Linux x86_64, "
                f"glibc {GLIBC_CEILING[0]}.{GLIBC_CEILING[1]} or older)")
    return None
