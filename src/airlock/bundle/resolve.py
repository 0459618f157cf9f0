"""pip's resolver, asked for the target host from any build host, and the dependency walk over
its answer.

`pip install --dry-run --report` resolves for the target's tags from index metadata alone: it
names every chosen file with its URL and sha256 without downloading a byte of the multi-GB CUDA
wheels. The walk then follows each chosen release's own requirements (markers evaluated for the
target, extras carried along) from the roots, so a package reached only through a left-out one
(the CPU target's torchvision) drops out with it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from airlock.bundle.pip_run import run_pip
from airlock.bundle.wheel_tags import TARGET_MARKERS, pip_target_args
from airlock.errors import InvalidInput


@dataclass(frozen=True)
class Pick:
    """One file the resolver chose."""

    name: str  # canonical: lower case, runs of -_. as one -
    version: str
    sha256: str
    url: str
    requires: tuple[str, ...]

    @property
    def filename(self) -> str:
        return unquote(urlsplit(self.url).path.rsplit("/", 1)[-1])


def resolver_report(args: list[str], *, what: str, sealed: bool = False) -> list[dict]:
    """The `install` items of pip's installation report for the target (nothing is installed);
    `sealed` keeps this host's pip configuration out (an answer from the given wheels alone)."""
    with tempfile.TemporaryDirectory(prefix="airlock-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        run_pip(["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                 "--target", str(Path(tmp) / "nothing"), *pip_target_args(), *args], what=what, sealed=sealed)
        return json.loads(report.read_text())["install"]


def picks_of(items: list[dict]) -> dict[str, Pick]:
    picks, problems = {}, []
    for item in items:
        meta, info = item["metadata"], item["download_info"]
        name = canonicalize_name(meta["name"])
        sha256 = info.get("archive_info", {}).get("hashes", {}).get("sha256")
        if item.get("is_direct"):
            problems.append(f"{name}: chosen from a direct URL ({info['url']}); only index releases are locked")
        elif item.get("is_yanked"):
            problems.append(f"{name}=={meta['version']}: the release is yanked on its index")
        elif not sha256:
            problems.append(f"{name}=={meta['version']}: its index gave no sha256 for {info['url']}")
        else:
            picks[name] = Pick(name, meta["version"], sha256, info["url"], tuple(meta.get("requires_dist") or ()))
    if problems:
        raise InvalidInput("the resolver chose files that cannot be locked", problems=problems)
    return picks


def resolve(roots: list[str], *, constraints: list[str], what: str) -> dict[str, Pick]:
    """Every file pip picks for `roots` on the target, by canonical name."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="airlock-constraints-") as cons:
        cons.write("".join(f"{line}\n" for line in constraints))
        cons.flush()
        return picks_of(resolver_report(["-c", cons.name, *roots], what=what))


def _applies(req: Requirement, extras: set[str]) -> bool:
    return req.marker is None or any(req.marker.evaluate({**TARGET_MARKERS, "extra": e}) for e in extras | {""})


def _parse(spec: str, where: str) -> Requirement:
    try:
        return Requirement(spec)
    except InvalidRequirement as exc:
        raise InvalidInput(f"{where}: cannot parse the requirement {spec!r}: {exc}") from None


def closure(picks: dict[str, Pick], roots: list[str], *, leave_out: frozenset[str] = frozenset()) -> dict[str, Pick]:
    """The picks `roots` need on the target, following requirements and not entering `leave_out`."""
    active: dict[str, set[str]] = {}  # name -> the extras asked of it so far
    parsed = [_parse(root, "a root requirement") for root in roots]
    todo = [(req, "the roots") for req in parsed if _applies(req, set())]
    missing = []
    while todo:
        req, wanted_by = todo.pop()
        name = canonicalize_name(req.name)
        if name in leave_out:
            continue
        before = active.get(name)
        if before is not None and set(req.extras) <= before:
            continue
        active[name] = (before or set()) | set(req.extras)
        pick = picks.get(name)
        if pick is None:
            missing.append(f"{name} (wanted by {wanted_by})")
            continue
        for spec in pick.requires:
            dep = _parse(spec, f"{name}=={pick.version}'s metadata")
            if _applies(dep, active[name]):
                todo.append((dep, f"{name}=={pick.version}"))
    if missing:
        raise InvalidInput("the resolver's answer lacks packages the target needs (does this build host's "
                           "platform differ from the target's, Linux x86_64?)", problems=sorted(missing))
    return {name: picks[name] for name in sorted(active)}
