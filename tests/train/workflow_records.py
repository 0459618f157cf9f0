"""The quickstart's eight records, as the recipe takes them."""

import json

from airlock.config import REPO_ROOT

RECORDS = [json.loads(line)["messages"]
           for line in (REPO_ROOT / "examples" / "datasets" / "quickstart.jsonl").read_text().splitlines()]
