"""The bundle's software bill of materials, CycloneDX 1.5 JSON.

Every wheel (as a PyPI package URL with its sha256), every model folder (a machine-learning-model
component with each file's digest) and every package found in an image's layers (a Debian package
URL) is one component, so a site's vulnerability scanner can read what crossed the air gap.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from airlock.trust.root import utc_text

SPEC = "1.5"


def _wheel(wheel: dict) -> dict:
    name = wheel["name"].lower().replace("_", "-")
    return {"type": "library", "name": name, "version": wheel["version"],
            "purl": f"pkg:pypi/{name}@{wheel['version']}",
            "hashes": [{"alg": "SHA-256", "content": wheel["sha256"]}],
            "properties": [{"name": "airlock:file", "value": wheel["file"]}]}


def _model(name: str, files: dict[str, dict]) -> dict:
    prefix = f"models/{name}/"
    return {"type": "machine-learning-model", "name": name,
            "properties": [{"name": f"airlock:file:{rel[len(prefix):]}", "value": entry["sha256"]}
                           for rel, entry in sorted(files.items()) if rel.startswith(prefix)]}


def _deb(image: str, package: dict) -> dict:
    return {"type": "library", "name": package["name"], "version": package["version"],
            "purl": f"pkg:deb/debian/{package['name']}@{package['version']}?arch={package['arch']}",
            "properties": [{"name": "airlock:image", "value": image}]}


def build_sbom(*, version: str, created: datetime, wheels: list[dict], models: list[str],
               files: dict[str, dict], image_packages: dict[str, list[dict]], serial: str | None = None) -> dict:
    components = [_wheel(w) for w in sorted(wheels, key=lambda w: w["file"])]
    components += [_model(name, files) for name in models]
    components += [_deb(image, p) for image, packages in sorted(image_packages.items())
                   for p in sorted(packages, key=lambda p: p["name"])]
    return {"bomFormat": "CycloneDX", "specVersion": SPEC,
            "serialNumber": serial or f"urn:uuid:{uuid.uuid4()}", "version": 1,
            "metadata": {"timestamp": utc_text(created),
                         "component": {"type": "application", "name": "airlock", "version": version}},
            "components": components}
