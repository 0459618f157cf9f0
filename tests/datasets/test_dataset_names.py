"""Names people give and read back (datasets, runs, stages) refuse control, bidi and zero-width
characters, naming the field and the code point, and store nothing; over /api and in the service."""

from __future__ import annotations

import json

import httpx
import pytest
from gateway_support import gateway_settings, run_gateway
from jsonl_helpers import qa

from airlock.datasets import add_dataset
from airlock.datasets.names import refused_characters
from airlock.errors import InvalidInput

BAD = [
    ("support\u202etxt.exe", "U+202E (RIGHT-TO-LEFT OVERRIDE) at position 8"),
    ("a\u2066b\u2069", "U+2066 (LEFT-TO-RIGHT ISOLATE) at position 2, U+2069 (POP DIRECTIONAL ISOLATE) at position 4"),
    ("support\u200btrain", "U+200B (ZERO WIDTH SPACE) at position 8"),
    ("x\u00ady", "U+00AD (SOFT HYPHEN) at position 2"),
    ("tab\there", "U+0009 (a Cc character) at position 4"),
    ("bell\x07", "U+0007 (a Cc character) at position 5"),
    ("c1\x85", "U+0085 (a Cc character) at position 3"),
    ("line\u2028two", "U+2028 (LINE SEPARATOR) at position 5"),
    ("\ufeffbom", "U+FEFF (ZERO WIDTH NO-BREAK SPACE) at position 1"),
]


@pytest.mark.parametrize(("name", "found"), BAD)
def test_a_dataset_name_with_a_control_or_format_character_is_refused(airlock, write_jsonl, name, found):
    with pytest.raises(InvalidInput) as info:
        add_dataset(airlock, write_jsonl(qa()), name=name)
    assert info.value.message.startswith("dataset name ") and found in info.value.message
    assert airlock.meta.one("SELECT COUNT(*) AS n FROM datasets")["n"] == 0


def test_letters_of_every_script_and_emoji_stay_allowed(airlock, write_jsonl):
    for name in ("Отчёт 2026", "مجموعة-البيانات", "データ", "café ☕", "a-b_c.d (v2)"):
        assert refused_characters(name) == []
    assert add_dataset(airlock, write_jsonl(qa()), name="מערך נתונים")["name"] == "מערך נתונים"


def test_over_http_the_upload_and_the_run_say_which_field_and_code_point(tmp_path, tiny_models_dir):
    for gw in run_gateway(gateway_settings(tmp_path / "home")):
        trainer = gw.new_key("trainer")
        headers = {"Authorization": f"Bearer {trainer}"}
        body = (json.dumps(qa()) + "\n").encode()
        refused = httpx.post(f"{gw.url}/api/datasets", params={"name": "evil\u202egpj.exe"}, content=body,
                             headers={**headers, "Content-Type": "application/x-ndjson"}, timeout=60)
        assert refused.status_code == 400
        assert "U+202E (RIGHT-TO-LEFT OVERRIDE) at position 5" in refused.json()["error"]["message"]
        assert gw.meta.query("SELECT * FROM datasets") == []

        assert httpx.post(f"{gw.url}/api/datasets", params={"name": "good"}, content=body,
                          headers={**headers, "Content-Type": "application/x-ndjson"}, timeout=60).status_code == 201
        spec = {"name": "run\u2066x", "base_model": "airlock-tiny", "dataset": "good",
                "stages": [{"name": "fine\u200btune", "uses": "finetune.lora"}]}
        answer = httpx.post(f"{gw.url}/api/runs", json={"spec": spec}, headers=headers, timeout=60)
        assert answer.status_code == 400
        text = answer.text
        assert "run name: " in text and "U+2066 (LEFT-TO-RIGHT ISOLATE) at position 4" in text
        assert "stage name: " in text and "U+200B (ZERO WIDTH SPACE) at position 5" in text
        assert gw.meta.query("SELECT * FROM runs") == []
