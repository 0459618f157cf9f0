"""`airlock models import --gguf FILE --name NAME`: a GGUF file admitted as a base model.

The file is converted (models/gguf.py, as the shipped model is) into a private scratch folder in
the appliance's home, then admitted like any carried folder (models/admission.py): every check of
an import runs on the conversion's output too, so a GGUF file gets no easier way in than a folder.
The provenance record names the GGUF file the operator gave, its sha256 and what it was
dequantized from, not the scratch folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from airlock.errors import InvalidInput
from airlock.models.admission import AdmittedModel, Progress, admit_folder
from airlock.models.catalog import check_model_name
from airlock.models.gguf import convert_gguf, read_gguf_header
from airlock.models.provenance import PROVENANCE_FILE, Provenance, read_provenance


def admit_gguf(airlock, gguf_file: Path, *, name: str, chat_template: Path | None = None, actor: str,
               progress: Progress | None = None) -> AdmittedModel:
    """Convert `gguf_file` and admit the result as `name`; InvalidInput naming the file or every
    problem of the converted folder, with nothing admitted."""
    gguf_file = Path(os.path.abspath(gguf_file))
    if not gguf_file.is_file():
        raise InvalidInput(f"--gguf {gguf_file}: not a file; give the GGUF file to convert and import")
    check_model_name(name)
    if (Path(airlock.settings.models_dir) / name).exists():
        # Known before a conversion of half a minute or more; an identical re-import is refused
        # here too, which is cheaper than converting to find the same bytes.
        raise InvalidInput(f"--name {name!r} is already taken in {airlock.settings.models_dir}; choose another")
    read_gguf_header(gguf_file)  # an unreadable or unsupported file is named before any work
    scratch = Path(tempfile.mkdtemp(prefix=".gguf-import-", dir=airlock.settings.home))
    try:
        if progress:
            progress(f"converting {gguf_file.name}", 0, 0)
        convert_gguf(gguf_file, scratch / name, provenance={})
        converted = read_provenance(scratch / name)
        (scratch / name / PROVENANCE_FILE).unlink()
        origin = Provenance(source="gguf", imported_from=str(gguf_file))
        for key in ("gguf", "dequantized_from", "architecture", "dtype"):
            origin[key] = converted[key]
        return admit_folder(airlock, scratch / name, name=name, chat_template=chat_template, actor=actor,
                            progress=progress, origin=origin)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
