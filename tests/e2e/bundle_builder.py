"""What the e2e bundle tests share, built in a process of its own so that the rest of the suite runs
meanwhile (tests/conftest.py starts it when a run may need it; the tests wait for what they use):

    python tests/e2e/bundle_builder.py OUT            build into OUT (OUT/failed and the log if not)
    python tests/e2e/bundle_builder.py --clean OUT    untag the bundles' images, remove OUT

makes a demo trust root in OUT/ceremony, then, each marked done by OUT/NAME.done once complete:
airlock-cpu, the CPU bundle of this checkout with its service images (release N); airlock-cpu-next,
release N+1 with its images (built again, which reuses the image layers N left in podman's cache);
airlock-cpu-next-bare, a later release without images (an upgrade that must fail); and the image
of the test hosts (host_containers.py).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from e2e_support import PASSPHRASE, REPO_ROOT  # noqa: E402
from host_containers import host_image  # noqa: E402
from vllm_fixtures import ensure_reference_model  # noqa: E402

from airlock.bundle.build import BuildRequest, build  # noqa: E402
from airlock.bundle.podman_load import remove_images  # noqa: E402
from airlock.trust.ceremony import init_root  # noqa: E402

BUNDLE, NEXT, BARE, HOST_IMAGE = "airlock-cpu", "airlock-cpu-next", "airlock-cpu-next-bare", "host-image"
FINGERPRINT = "fingerprint"


def build_release(ceremony: Path, out: Path, *, sequence: int, images: bool) -> Path:
    """A bundle of this checkout signed by the test root in `ceremony`, as release `sequence`."""
    build(BuildRequest(target="cpu", out=out, root=ceremony / "root.json", keys=[ceremony / "keys" / "bundle-1.key"],
                       passphrase=lambda _p: PASSPHRASE, repo=REPO_ROOT, models_dir=ensure_reference_model().parent,
                       part_size=512 << 20, images=images, sequence=sequence, models=["airlock-tiny"]))
    return out


def build_models_bundle(ceremony: Path, out: Path, name: str = "site-tiny") -> Path:
    """A models bundle signed by the test root in `ceremony`, holding the reference model under
    `name`: a model the site brings beside a release (`airlock bundle build --models-only`)."""
    models = out.parent / f"{out.name}-models"
    shutil.copytree(ensure_reference_model(), models / name)
    build(BuildRequest(target="any", out=out, root=ceremony / "root.json", keys=[ceremony / "keys" / "bundle-1.key"],
                       passphrase=lambda _p: PASSPHRASE, repo=REPO_ROOT, models_dir=models, part_size=512 << 20,
                       models=[name], models_only=True))
    shutil.rmtree(models)
    return out


def done(out: Path, name: str, started: float) -> None:
    (out / f"{name}.done").write_text(f"{time.monotonic() - started:.0f}\n")
    print(f"{name}: done after {time.monotonic() - started:.0f} s", flush=True)


def main(out: Path) -> None:
    started = time.monotonic()
    ceremony = init_root(out / "ceremony", root_keys=1, threshold=1, demo=True, passphrase=lambda _p: PASSPHRASE)
    (out / FINGERPRINT).write_text(ceremony.root.roles["root"].keyids[0])
    sequence = int(datetime.now(UTC).strftime("%Y%m%d%H%M%S"))
    build_release(out / "ceremony", out / BUNDLE, sequence=sequence, images=True)
    done(out, BUNDLE, started)
    host_image()
    done(out, HOST_IMAGE, started)
    build_release(out / "ceremony", out / NEXT, sequence=sequence + 1, images=True)
    done(out, NEXT, started)
    build_release(out / "ceremony", out / BARE, sequence=sequence + 2, images=False)
    done(out, BARE, started)


def clean(out: Path) -> None:
    """The tests load the bundles' images into this host's podman; a run leaves none of them behind."""
    manifests = [out / name / "manifest.json" for name in (BUNDLE, NEXT)]
    remove_images([image["tag"] for manifest in manifests if manifest.is_file()
                   for image in json.loads(manifest.read_bytes())["contents"]["images"]])
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1] == "--clean":
        clean(Path(sys.argv[2]))
        sys.exit(0)
    try:
        main(Path(sys.argv[1]))
    except BaseException:
        traceback.print_exc()
        (Path(sys.argv[1]) / "failed").touch()
        raise
