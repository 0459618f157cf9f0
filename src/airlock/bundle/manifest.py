"""The bundle's manifest: what a bundle holds, for which host, until when, in which order.

One canonical JSON document names every file of the payload (path, size, sha256, mode), every
part the payload tar was split into, the files that travel beside the parts (the stand-alone
verifier, the installer, the trust root), the target host, the bundle's version, a sequence number
that only goes up between releases, and the created and expires times. A DSSE envelope signed by
the trust root's `bundle` role carries it; nothing in a bundle is trusted before that envelope
verifies. Digests are plain lowercase hex, as `sha256sum` prints them, so an operator can check a
bundle by hand (docs/bundle.md).

Standard library only: the stand-alone verifier (a zipapp run by a bare `python3`) imports this.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from airlock.bundle.extract import safe_relpath
from airlock.errors import IntegrityFailure, InvalidInput
from airlock.trust.root import parse_utc, utc_text

KIND = "airlock.bundle/v1"
# A models bundle: base models only, no wheels, images or venv (`airlock bundle build --models-only`).
# Its kind is signed, so neither kind of bundle can be passed off as the other, and its sequence is
# counted apart from the releases' (PREFIX/models.json against PREFIX/state.json).
MODELS_KIND = "airlock.models-bundle/v1"
KINDS = {KIND: "a release bundle", MODELS_KIND: "a models bundle"}
# The target of a models bundle: model files are data that every host reads alike.
ANY_TARGET = {"arch": "any", "os": "any", "glibc": "any", "python": "any", "cuda": None}
PAYLOAD_TYPE = "application/vnd.airlock.bundle+json"
MANIFEST_NAME = "manifest.json"
ENVELOPE_NAME = "manifest.dsse.json"
ROOT_NAME = "root.json"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
TARGET_FIELDS = ("arch", "os", "glibc", "python", "cuda")
FIELDS = {"kind", "name", "version", "sequence", "created", "expires", "target", "parts", "files",
          "outside", "contents"}


def parse_time(value: Any, what: str, problems: list[str]) -> datetime | None:
    when = parse_utc(value)
    if when is None:
        problems.append(f"{what}: {value!r} is not a UTC time like 2026-11-23T12:00:00Z")
    return when


def _check_entry(where: str, entry: Any, problems: list[str], *, mode: bool) -> None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected an object with size and sha256")
        return
    expected = {"size", "sha256", "mode"} if mode else {"size", "sha256"}
    if set(entry) != expected:
        problems.append(f"{where}: fields {sorted(entry)}, expected {sorted(expected)}")
    size, digest = entry.get("size"), entry.get("sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        problems.append(f"{where}.size: {size!r} is not a byte count")
    if not isinstance(digest, str) or not HEX64.match(digest):
        problems.append(f"{where}.sha256: {digest!r} is not 64 lowercase hex digits")
    if mode and entry.get("mode") not in ("0644", "0755"):
        problems.append(f"{where}.mode: {entry.get('mode')!r} is not '0644' or '0755'")


def _check_paths(section: str, files: Any, problems: list[str], *, mode: bool) -> None:
    if not isinstance(files, dict):
        problems.append(f"{section}: expected an object of relative path to its entry")
        return
    for path, entry in files.items():
        reason = safe_relpath(path)
        if reason:
            problems.append(f"{section}: {path!r}: {reason}")
        _check_entry(f"{section}[{path!r}]", entry, problems, mode=mode)


def _check_parts(parts: Any, problems: list[str]) -> None:
    if not isinstance(parts, list) or not parts:
        problems.append("parts: expected a non-empty list of {name, size, sha256}")
        return
    names = set()
    for i, part in enumerate(parts):
        name = part.get("name") if isinstance(part, dict) else None
        if not isinstance(name, str) or "/" in name or safe_relpath(name):
            problems.append(f"parts[{i}].name: {name!r} is not a plain file name")
        elif name in names:
            problems.append(f"parts[{i}].name: {name!r} is listed twice")
        names.add(name)
        entry = {k: v for k, v in part.items() if k != "name"} if isinstance(part, dict) else part
        _check_entry(f"parts[{i}]", entry, problems, mode=False)


def _check_target(target: Any, problems: list[str]) -> None:
    if not isinstance(target, dict) or set(target) != set(TARGET_FIELDS):
        problems.append(f"target: expected exactly the fields {list(TARGET_FIELDS)}")
        return
    for field in ("arch", "os", "glibc", "python"):
        if not isinstance(target[field], str) or not target[field]:
            problems.append(f"target.{field}: {target[field]!r} is not a non-empty string")
    if target["cuda"] is not None and not isinstance(target["cuda"], str):
        problems.append(f"target.cuda: {target['cuda']!r} is neither a version string nor null")


def validate(manifest: Any) -> list[str]:
    """Every problem of a manifest's shape, for one message that lists them all."""
    if not isinstance(manifest, dict):
        return ["the manifest is not a JSON object"]
    problems = []
    if set(manifest) != FIELDS:
        missing, extra = sorted(FIELDS - set(manifest)), sorted(set(manifest) - FIELDS)
        problems.append(f"fields: missing {missing}, unknown {extra}")
    if manifest.get("kind") not in KINDS:
        problems.append(f"kind: {manifest.get('kind')!r}, expected one of {sorted(KINDS)}")
    sequence = manifest.get("sequence")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
        problems.append(f"sequence: {sequence!r} is not a positive integer")
    if not isinstance(manifest.get("version"), str) or not manifest.get("version"):
        problems.append(f"version: {manifest.get('version')!r} is not a non-empty string")
    for field in ("created", "expires"):
        parse_time(manifest.get(field), field, problems)
    _check_target(manifest.get("target"), problems)
    _check_parts(manifest.get("parts"), problems)
    _check_paths("files", manifest.get("files"), problems, mode=True)
    _check_paths("outside", manifest.get("outside"), problems, mode=False)
    if not isinstance(manifest.get("contents"), dict):
        problems.append("contents: expected an object")
    return problems


def parse(payload: bytes, *, source: str) -> dict:
    """The manifest inside a verified envelope; a malformed one is refused with every problem."""
    try:
        manifest = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityFailure(f"{source}: the signed manifest is not JSON: {exc}") from None
    problems = validate(manifest)
    if problems:
        raise IntegrityFailure(f"{source}: the signed manifest is malformed", problems=problems)
    return manifest


def check_fresh(manifest: dict, *, now: datetime, installed_sequence: int | None, source: str) -> None:
    """Refuse an expired manifest (a freeze attack) and one older than what is installed (a rollback)."""
    problems: list[str] = []
    expires = parse_time(manifest["expires"], "expires", problems)
    created = parse_time(manifest["created"], "created", problems)
    if expires is not None and expires <= now:
        raise IntegrityFailure(f"{source}: the bundle expired at {manifest['expires']}; build and sign a new one")
    if created is not None and expires is not None and created >= expires:
        raise IntegrityFailure(f"{source}: created {manifest['created']} is not before expires {manifest['expires']}")
    if installed_sequence is not None and manifest["sequence"] < installed_sequence:
        raise IntegrityFailure(
            f"{source}: sequence {manifest['sequence']} is below the installed bundle's {installed_sequence}: "
            "an older bundle cannot replace a newer one (use `airlock bundle rollback` to return to the "
            "previous release already installed)")


def payload_size(manifest: dict) -> int:
    return sum(entry["size"] for entry in manifest["files"].values())


def check_kind(manifest: dict, expected: str, *, source: str) -> None:
    """Refuse a signed bundle of the other kind, naming the command that installs it."""
    if manifest["kind"] == expected:
        return
    use = ("`airlock models install BUNDLE` installs it into the shared models folder"
           if manifest["kind"] == MODELS_KIND else
           "`airlock bundle install BUNDLE` (or `./install.sh --offline BUNDLE`) installs it as a release")
    raise InvalidInput(f"{source}: {KINDS[manifest['kind']]}, not {KINDS[expected]}; {use}")


def new_manifest(*, version: str, sequence: int, target: dict, files: dict, parts: list, outside: dict,
                 contents: dict, created: datetime, expires: datetime, kind: str = KIND) -> dict:
    """A manifest from what the build made; validated before it is signed, never after only."""
    manifest = {"kind": kind, "name": "airlock", "version": version, "sequence": sequence,
                "created": utc_text(created), "expires": utc_text(expires), "target": target,
                "parts": parts, "files": files, "outside": outside, "contents": contents}
    problems = validate(manifest)
    if problems:
        raise InvalidInput("the bundle's manifest would be malformed", problems=problems)
    return manifest
