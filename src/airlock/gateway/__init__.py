"""The OpenAI-compatible gateway in front of vLLM, and its API keys.

`create_app` and `serve_gateway` are imported lazily so that `airlock apikey ...` does not pay
for FastAPI and httpx at start-up.
"""

from typing import Any

__all__ = ["create_app", "serve_gateway"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from airlock.gateway import app

        return getattr(app, name)
    raise AttributeError(name)
