"""Someone who handles a models bundle on its way to the site (removable media, a transfer share, a
courier) and wants the site to serve or train on weights of their choosing: they flip a byte of a
part, sign a bundle with a key they hold that the root does not give the bundle role, hand over an
older models bundle again, or bring one whose model folder holds a pickle file or a path that leaves
the folder (what a poisoned models folder on the build host would make, signed by the real key).

`airlock models install` must refuse each before anything is unpacked into the shared models
folder: PREFIX/models and PREFIX/models.json stay exactly as they were.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airlock.bundle.models_install import install_models
from airlock.errors import AirlockError, IntegrityFailure
from models_bundle_support import (NOW, Site, build_models_bundle, forge_models_bundle, install_release, new_site,
                                   small_model)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """An installed site that already holds one model from a models bundle of sequence 5."""
    made = new_site(tmp_path)
    install_release(made, tmp_path / "release", 5)
    small_model(tmp_path / "models", "first-model")
    build_models_bundle(made, tmp_path / "models", ["first-model"], tmp_path / "first", sequence=5)
    install_models(tmp_path / "first", made.prefix, now=NOW)
    return made


def shared_state(site: Site) -> tuple[list[str], str]:
    """Everything under PREFIX/models (hidden staging folders included) and the models state file."""
    return (sorted(str(p.relative_to(site.prefix)) for p in (site.prefix / "models").rglob("*")),
            (site.prefix / "models.json").read_text())


def refused(site: Site, bundle: Path, error: type[AirlockError], match: str) -> None:
    before = shared_state(site)
    with pytest.raises(error, match=match):
        install_models(bundle, site.prefix, now=NOW)
    assert shared_state(site) == before


def test_a_flipped_byte_in_a_part_is_refused(site: Site, tmp_path: Path) -> None:
    """If this succeeded, a reviewer would see weights that differ from the signed ones by one byte
    in PREFIX/models/next-model, ready for the engine to load."""
    small_model(tmp_path / "next", "next-model")
    m = build_models_bundle(site, tmp_path / "next", ["next-model"], tmp_path / "b", sequence=6)
    part = tmp_path / "b" / m["parts"][0]["name"]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))
    refused(site, tmp_path / "b", IntegrityFailure, f"{m['parts'][0]['name']}.*sha256")


def test_a_bundle_signed_by_a_key_outside_the_bundle_role_is_refused(site: Site, tmp_path: Path) -> None:
    """If this succeeded, a reviewer would see a model in PREFIX/models signed only by the root's
    `model` key (an approver's) or by a key the root never named."""
    small_model(tmp_path / "tree" / "models", "their-model")
    for name, signer in (("model-role", site.keys.model[0]), ("stranger", Ed25519PrivateKey.generate())):
        forge_models_bundle(site, tmp_path / "tree", tmp_path / name, sequence=6, signers=[signer])
        refused(site, tmp_path / name, IntegrityFailure, "bundle")


def test_a_replayed_older_models_bundle_is_refused(site: Site, tmp_path: Path) -> None:
    """If this succeeded, a reviewer would see an older models bundle (sequence 4, say one that
    carried a model later withdrawn) installed after sequence 5."""
    small_model(tmp_path / "old", "withdrawn-model")
    build_models_bundle(site, tmp_path / "old", ["withdrawn-model"], tmp_path / "b", sequence=4)
    refused(site, tmp_path / "b", IntegrityFailure, "sequence 4 is below the installed bundle's 5")
    assert json.loads((site.prefix / "models.json").read_text())["highest_sequence"] == 5


def test_a_pickle_file_in_a_model_folder_is_refused(site: Site, tmp_path: Path) -> None:
    """If this succeeded, a reviewer would see pytorch_model.bin, a pickle that runs code when
    loaded, in a folder of PREFIX/models."""
    small_model(tmp_path / "tree" / "models", "their-model")
    (tmp_path / "tree" / "models" / "their-model" / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n")
    forge_models_bundle(site, tmp_path / "tree", tmp_path / "b", sequence=6, signers=site.keys.bundle)
    refused(site, tmp_path / "b", IntegrityFailure, "pytorch_model.bin'.*pickle")


def test_a_path_that_leaves_the_model_folder_is_refused(site: Site, tmp_path: Path) -> None:
    """If this succeeded, a reviewer would see a file written outside PREFIX/models (here next to
    the release's own models) by a bundle that claims to carry a model."""
    small_model(tmp_path / "tree" / "models", "their-model")
    escape = "models/their-model/../../releases/x/model.safetensors"
    forge_models_bundle(site, tmp_path / "tree", tmp_path / "b", sequence=6, signers=site.keys.bundle,
                        rename={"models/their-model/model.safetensors": escape})
    refused(site, tmp_path / "b", IntegrityFailure, "a path outside the bundle")
    # And a file beside the models, not in any model folder.
    (tmp_path / "tree2" / "models").mkdir(parents=True)
    small_model(tmp_path / "tree2" / "models", "their-model")
    (tmp_path / "tree2" / "run.sh").write_text("#!/bin/sh\n")
    forge_models_bundle(site, tmp_path / "tree2", tmp_path / "b2", sequence=6, signers=site.keys.bundle)
    refused(site, tmp_path / "b2", IntegrityFailure, "'run.sh': not inside a model folder")
