"""The service images of a bundle: a Debian base made here, one image per service built from the
bundle's own wheels with no network, each saved as an OCI archive.

No registry is reached: the base comes from debootstrap (Debian 12, whose python3 is the bundle's
3.11) and is imported into podman, cached under a tag derived from its package list. Each service
image installs only its share of the target's lock (`images/SERVICE/requirements.in` and what those
need), so the gateway's image holds no torch: the third-party packages in a layer podman caches
(keyed by their hashes), airlock in one above it, so a rebuild with the same lock redoes only that.
Archive files are what the manifest signs: podman's own image digests change on a save and load
round trip.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from packaging.utils import canonicalize_name

from airlock.bundle.locks import ENGINE, LEAVE_OUT, read_lock
from airlock.bundle.podman import (
    SUITE,
    ToolFailed,
    image_exists,
    require_tools,
    run_tool,
)
from airlock.bundle.resolve import closure, picks_of, resolver_report
from airlock.errors import InvalidInput

SERVICES = ("gateway", "worker", "engine")
# What a minimal Debian carries that no service reads; left out of the base layer.
PRUNED = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale")
DPKG_FORMAT = "${Package}\\t${Version}\\t${Architecture}\\n"


def _listed(path: Path) -> list[str]:
    """The non-comment lines of a list file."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise InvalidInput(f"{path}: missing (a checkout of airlock has it)") from None
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def base_image(repo: Path, mirror: str) -> str:
    """The services' base image's tag (see debian_image)."""
    return debian_image(repo / "images" / "base.packages", mirror, name="airlock-base")


def debian_image(packages_file: Path, mirror: str, *, name: str) -> str:
    """The tag of a Debian minbase image holding the packages listed in packages_file, made with
    debootstrap and imported into podman unless present already (the tag is derived from the list)."""
    packages = _listed(packages_file)
    digest = hashlib.sha256("\n".join([SUITE, platform.machine(), *packages]).encode()).hexdigest()[:12]
    tag = f"localhost/{name}:{SUITE}-{digest}"
    if image_exists(tag):
        return tag
    require_tools("debootstrap")
    if os.geteuid() != 0:
        raise InvalidInput("making the image base with debootstrap needs root; run the build as root, or "
                           "`--no-images` for a venv-only bundle")
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run_tool(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE, str(rootfs), mirror],
                 what=f"making the Debian {SUITE} image {name} with debootstrap from {mirror}")
        for rel in PRUNED:
            shutil.rmtree(rootfs / rel, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        try:
            run_tool(["podman", "import", "--message", f"{name}: Debian {SUITE} minbase", "-", tag],
                     what=f"importing {name} into podman", stdin=tar.stdout)
        finally:
            tar.stdout.close()
            if tar.wait() != 0:
                raise ToolFailed(f"archiving {rootfs} with tar failed (exit {tar.returncode})")
    return tag


def debian_packages(tag: str) -> list[dict]:
    """The Debian packages installed in an image, read by its own dpkg."""
    out = run_tool(["podman", "run", "--rm", "--network=none", "--entrypoint", "dpkg-query", tag, "-W",
                    f"--showformat={DPKG_FORMAT}"], what=f"listing the Debian packages of {tag}")
    return [dict(zip(("name", "version", "arch"), line.split("\t"))) for line in out.splitlines() if line]


def service_requirements(repo: Path, wheels_dir: Path, target: str) -> dict[str, list[str]]:
    """Each service's lines of the bundle's lock (hashed, pinned), from its requirements.in (the
    engine's also the target's vLLM build) and what those need on the target; airlock's own line in
    every one."""
    lock = {canonicalize_name(r.name): r for r in read_lock(wheels_dir / "requirements.lock")}
    picks = picks_of(resolver_report(["--no-index", "--find-links", str(wheels_dir), "--no-deps", "-r",
                                      str(wheels_dir / "requirements.lock")],
                                     what=f"reading the requirements of the wheels in {wheels_dir}", sealed=True))
    result = {}
    for service in SERVICES:
        roots = _listed(repo / "images" / service / "requirements.in") + (ENGINE[target] if service == "engine" else [])
        names = set(closure(picks, roots, leave_out=LEAVE_OUT[target])) | {"airlock"}
        result[service] = [lock[name].line() for name in sorted(names)]
    return result


def build_service_image(repo: Path, service: str, *, base: str, wheels_dir: Path, requirements: list[str],
                        tag: str, version: str) -> None:
    with tempfile.TemporaryDirectory(prefix=f"airlock-image-{service}-") as context:
        shutil.copy2(repo / "images" / "Containerfile", Path(context) / "Containerfile")
        own = [line for line in requirements if canonicalize_name(line.split("==", 1)[0]) == "airlock"]
        third_party = [line for line in requirements if line not in own]
        (Path(context) / "requirements.txt").write_text("".join(f"{line}\n" for line in third_party))
        (Path(context) / "airlock.txt").write_text("".join(f"{line}\n" for line in own))
        # --layers: the third-party layer is cached under the hashes of requirements.txt (see the
        # Containerfile), so a rebuild with the same lock reinstalls only airlock.
        run_tool(["podman", "build", "--network=none", "--pull=never", "--layers",
                  "--volume", f"{wheels_dir.resolve()}:/build/wheels:ro", "--build-arg", f"BASE={base}",
                  "--build-arg", f"SERVICE={service}",
                  "--label", f"org.opencontainers.image.title=airlock-{service}",
                  "--label", f"org.opencontainers.image.version={version}",
                  "--label", f"org.opencontainers.image.base.name={base}",
                  "--tag", tag, "--file", str(Path(context) / "Containerfile"), context],
                 what=f"building the {service} image from images/Containerfile (no network)")


def build_images(repo: Path, wheels_dir: Path, out_dir: Path, *, target: str, release: str, version: str,
                 mirror: str) -> list[dict]:
    """Build and save every service image into out_dir; per image its file (relative to the bundle's
    payload), tag, Debian packages and Python packages."""
    require_tools("podman")
    base = base_image(repo, mirror)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for service, requirements in service_requirements(repo, wheels_dir, target).items():
        tag = f"localhost/airlock-{service}:{release}"
        archive = out_dir / f"airlock-{service}.oci.tar"
        build_service_image(repo, service, base=base, wheels_dir=wheels_dir, requirements=requirements,
                            tag=tag, version=version)
        try:
            packages = debian_packages(tag)
            run_tool(["podman", "save", "--format", "oci-archive", "--output", str(archive), tag],
                     what=f"saving {tag} as an OCI archive")
        finally:
            # Installs load the archive; the build host keeps the cached base and, untagged, the
            # layers the next build with the same lock reuses (`podman image prune` drops them).
            subprocess.run(["podman", "rmi", "--force", "--no-prune", tag], capture_output=True, check=False)
        images.append({"service": service, "tag": tag, "file": f"{out_dir.name}/{archive.name}",
                       "debian": packages, "python": [line.split("==", 1)[0] for line in requirements]})
    return images
