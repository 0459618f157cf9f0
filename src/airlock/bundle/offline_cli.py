"""Command line of the stand-alone tool that travels beside a bundle (`python3 airlock-verify.pyz`).

    airlock-verify.pyz show-root DIR                   the bundle root's keys, to compare by hand
    airlock-verify.pyz verify DIR --fingerprint FP     first install: trust the bundle's root.json only
                                                       if one of its root keys has this fingerprint
    airlock-verify.pyz verify DIR --root PINNED.json   later: against the root pinned on the host
    airlock-verify.pyz install DIR --prefix P [--fingerprint FP]
    airlock-verify.pyz rollback --prefix P

Standard library only, like everything it imports; the installed airlock runs the same functions
as `airlock bundle verify|install|rollback`.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from airlock.bundle.check import read_json, unpack, verify_bundle
from airlock.bundle.install import install, installed_text, rollback
from airlock.bundle.podman_load import IMAGES_HELP, parse_services
from airlock.bundle.manifest import ROOT_NAME
from airlock.errors import AirlockError
from airlock.trust.root import parse_root


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="airlock-verify.pyz",
                                description="Verify, install or roll back an airlock bundle; nothing of a "
                                            "bundle is unpacked or run before it verifies.")
    sub = p.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show-root", help="print the bundle root's keys and thresholds")
    show.add_argument("bundle", type=Path)
    verify = sub.add_parser("verify", help="verify a bundle (and optionally unpack it)")
    verify.add_argument("bundle", type=Path, help="the bundle directory (manifest, envelope, root, parts)")
    who = verify.add_mutually_exclusive_group(required=True)
    who.add_argument("--fingerprint", help="a root key fingerprint received out of band (first install)")
    who.add_argument("--root", type=Path, help="the trust root pinned on this host (root.json)")
    verify.add_argument("--installed-sequence", type=int, help="the highest sequence installed here")
    verify.add_argument("--unpack", type=Path, metavar="DEST", help="unpack into DEST (must not exist)")
    verify.add_argument("--json", action="store_true", help="print the verified manifest's summary as JSON")
    inst = sub.add_parser("install", help="verify, unpack and install as a new release; switch when healthy")
    inst.add_argument("bundle", type=Path)
    inst.add_argument("--prefix", type=Path, required=True, help="the install prefix (releases, current, trust)")
    inst.add_argument("--fingerprint", help="first install only: a root key fingerprint received out of band")
    inst.add_argument("--images", metavar="SERVICES", help=IMAGES_HELP)
    back = sub.add_parser("rollback", help="make the previous release current again")
    back.add_argument("--prefix", type=Path, required=True)
    return p


def show_root(bundle: Path) -> None:
    path = bundle / ROOT_NAME
    root = parse_root(read_json(path, "the bundle's trust root"), source=str(path))
    print(f"{path}: root version {root.version}, expires {root.document['signed']['expires']}")
    for name, role in sorted(root.roles.items()):
        print(f"  role {name}: {role.threshold} of {len(role.keyids)}")
        for keyid in role.keyids:
            print(f"    {' '.join(keyid[i:i + 4] for i in range(0, len(keyid), 4))}")


def summary(manifest: dict, root_version: int) -> dict:
    return {"version": manifest["version"], "sequence": manifest["sequence"], "target": manifest["target"],
            "expires": manifest["expires"], "files": len(manifest["files"]), "parts": len(manifest["parts"]),
            "root_version": root_version}


def verify(args: argparse.Namespace) -> None:
    pinned = parse_root(read_json(args.root, "the pinned trust root"), source=str(args.root)) if args.root else None
    verified = verify_bundle(args.bundle, now=datetime.now(UTC), pinned=pinned, fingerprint=args.fingerprint,
                             installed_sequence=args.installed_sequence,
                             space_at=args.unpack.parent if args.unpack else None)
    out = summary(verified.manifest, verified.root.version)
    if args.unpack:
        unpack(args.bundle, verified, args.unpack)
        out["unpacked"] = str(args.unpack)
    print(json.dumps(out, indent=2) if args.json else
          f"verified: airlock {out['version']} (sequence {out['sequence']}), {out['files']} files in "
          f"{out['parts']} parts, signed under root version {out['root_version']}, expires {out['expires']}"
          + (f"; unpacked into {args.unpack}" if args.unpack else ""))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "show-root":
            show_root(args.bundle)
        elif args.command == "verify":
            verify(args)
        elif args.command == "install":
            state = install(args.bundle, args.prefix, now=datetime.now(UTC), fingerprint=args.fingerprint,
                            services=parse_services(args.images))
            print(installed_text(args.prefix, state))
        else:
            state = rollback(args.prefix)
            print(f"rolled back: {state['current']} is current (previous: {state['previous']})")
        return 0
    except AirlockError as exc:
        print(f"airlock-verify: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":  # `python -m airlock.bundle.offline_cli`: the installed copy, e.g. on a control node
    sys.exit(main())
