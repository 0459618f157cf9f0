"""Cut OpenAI's published OpenAPI document down to the operations airlock serves.

Source: github.com/openai/openai-openapi, openapi.yaml at commit
f85dbe223d40e1a31cba812ab2d755c7e98a92a3 (2026-08-21).

    python tests/conformance/cut_spec.py path/to/openapi.yaml

writes openai-openapi.yaml beside this script: the four operations below and every component
they reference, transitively. Documentation-only parts (x-oaiMeta code samples, tags) go: they
are most of the document's size and say nothing a request or a response is checked against.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

SOURCE_COMMIT = "f85dbe223d40e1a31cba812ab2d755c7e98a92a3"
OPERATIONS = {"/models": ["get"], "/models/{model}": ["get"],
              "/chat/completions": ["post"], "/completions": ["post"]}
OUT = Path(__file__).with_name("openai-openapi.yaml")


def strip_docs(node):
    """The node without x-oaiMeta: code samples in six languages."""
    if isinstance(node, dict):
        return {k: strip_docs(v) for k, v in node.items() if k != "x-oaiMeta"}
    if isinstance(node, list):
        return [strip_docs(v) for v in node]
    return node


def refs(node):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for v in node.values():
            yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


def cut(full: dict) -> dict:
    paths = {p: {m: strip_docs({k: v for k, v in full["paths"][p][m].items() if k != "tags"})
                 for m in methods}
             for p, methods in OPERATIONS.items()}
    components: dict[str, dict] = {}
    todo = list(refs(paths))
    while todo:
        ref = todo.pop()
        if not ref.startswith("#/components/"):
            raise ValueError(f"unexpected reference {ref}")
        kind, name = ref.removeprefix("#/components/").split("/", 1)
        if name in components.setdefault(kind, {}):
            continue
        components[kind][name] = strip_docs(full["components"][kind][name])
        todo.extend(refs(components[kind][name]))
    schemes = {name for requirement in full["security"] for name in requirement}
    components["securitySchemes"] = {name: full["components"]["securitySchemes"][name] for name in schemes}
    return {
        "openapi": full["openapi"],
        "info": full["info"] | {"x-source": f"openai/openai-openapi@{SOURCE_COMMIT}:openapi.yaml"},
        "servers": full["servers"],
        "security": full["security"],
        "paths": paths,
        "components": {kind: dict(sorted(items.items())) for kind, items in sorted(components.items())},
    }


def main(source: str) -> None:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    full = yaml.load(Path(source).read_text(encoding="utf-8"), Loader=loader)
    header = (f"# OpenAI's OpenAPI document (openai/openai-openapi, commit {SOURCE_COMMIT}), cut to\n"
              "# the operations airlock serves by tests/conformance/cut_spec.py; do not edit by hand.\n")
    body = yaml.safe_dump(cut(full), sort_keys=False, allow_unicode=True, width=100)
    OUT.write_text(header + body, encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
