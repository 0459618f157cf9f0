"""Talking to the locked engine: vLLM on a Unix socket in a private directory, behind a secret.

The engine process writes a fresh secret at each start (owner-only file in the 0700 engine
directory) and vLLM refuses every /v1 call without it. `EngineClient` reads that secret, and when
vLLM answers 401 (the engine restarted with a new secret) it reads it again and retries once.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from airlock.config import Settings
from airlock.errors import IntegrityFailure, InvalidInput, NotFound, NotReady

# A local connect either succeeds or is refused at once; a long wait means vLLM is wedged.
CONNECT_TIMEOUT_S = 1.0
# Loading an adapter reads its weights and warms the engine; on a busy CPU that takes seconds.
ADAPTER_TIMEOUT_S = 120.0


def read_secret(settings: Settings) -> str:
    try:
        return settings.engine_secret_path.read_text().strip()
    except OSError:
        return ""


class EngineClient:
    """Blocking calls to the engine (health, adapters, a smoke request) for the worker and CLI."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        transport = (httpx.HTTPTransport(uds=str(settings.engine_socket))
                     if settings.engine_transport == "uds" else httpx.HTTPTransport())
        self.http = httpx.Client(base_url=settings.vllm_url, transport=transport, trust_env=False)
        self._secret = read_secret(settings)

    @property
    def where(self) -> str:
        s = self.settings
        return f"the engine socket {s.engine_socket}" if s.engine_transport == "uds" else s.vllm_url

    def request(self, method: str, path: str, *, json: dict | None = None,
                timeout: float = 10.0) -> httpx.Response:
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self._secret}"} if self._secret else {}
            resp = self.http.request(method, path, json=json, headers=headers,
                                     timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S))
            if resp.status_code != 401 or attempt == 2:
                return resp
            self._secret = read_secret(self.settings)  # the engine restarted with a new secret
        raise AssertionError("unreachable")

    def metrics_text(self, timeout: float) -> str:
        """The engine's own Prometheus exposition (vLLM's /metrics); raises when it cannot."""
        resp = self.request("GET", "/metrics", timeout=timeout)
        resp.raise_for_status()
        return resp.text

    def is_healthy(self, timeout: float = 2.0) -> bool:
        try:
            return self.request("GET", "/health", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def _call(self, method: str, path: str, what: str, *, json: dict | None = None,
              timeout: float = 10.0) -> httpx.Response:
        try:
            return self.request(method, path, json=json, timeout=timeout)
        except httpx.HTTPError as exc:
            raise NotReady(f"cannot {what}: the engine is not reachable at {self.where} "
                           f"({type(exc).__name__})") from exc

    def sleep(self, level: int = 1) -> None:
        """vLLM's sleep mode: level 1 moves the weights to host memory and frees the KV cache."""
        resp = self._call("POST", f"/sleep?level={level}", "put the engine to sleep", timeout=120)
        if resp.status_code != 200:
            raise NotReady(f"the engine refused to sleep ({resp.status_code}): {vllm_message(resp)}; start it with "
                           "AIRLOCK_ENGINE_SLEEP_FOR_TRAINING=true")

    def wake_up(self) -> None:
        resp = self._call("POST", "/wake_up", "wake the engine", timeout=300)
        if resp.status_code != 200:
            raise NotReady(f"the engine did not wake ({resp.status_code}): {vllm_message(resp)}")

    def is_sleeping(self) -> bool:
        resp = self._call("GET", "/is_sleeping", "ask whether the engine sleeps")
        return resp.status_code == 200 and bool(resp.json().get("is_sleeping"))

    def loaded_adapters(self) -> list[str]:
        """Names of the adapters the engine serves now (its model list minus the base model)."""
        resp = self._call("GET", "/v1/models", "list the engine's models")
        if resp.status_code != 200:
            raise NotReady(f"the engine refused to list its models: HTTP {resp.status_code}")
        # On a CPU engine the base model's own name is a zero adapter (serve/null_adapter.py).
        return [m["id"] for m in resp.json().get("data", [])
                if m.get("parent") and m["id"] != self.settings.serve_base_model]

    def load_adapter(self, lora_name: str, path: Path | str) -> None:
        """Load the PEFT adapter folder `path` into vLLM, addressable as model `lora_name`."""
        body = {"lora_name": lora_name, "lora_path": str(Path(path).absolute())}
        resp = self._call("POST", "/v1/load_lora_adapter", f"load adapter {lora_name!r}", json=body,
                          timeout=ADAPTER_TIMEOUT_S)
        if resp.status_code == 200:
            return
        reason = vllm_message(resp)
        if resp.status_code < 500:
            raise InvalidInput(f"vLLM refused adapter {lora_name!r} from {path}: {reason}")
        raise IntegrityFailure(f"vLLM could not load adapter {lora_name!r} from {path}: {reason}")

    def unload_adapter(self, lora_name: str) -> None:
        resp = self._call("POST", "/v1/unload_lora_adapter", f"unload adapter {lora_name!r}",
                          json={"lora_name": lora_name}, timeout=ADAPTER_TIMEOUT_S)
        if resp.status_code == 200:
            return
        reason = vllm_message(resp)
        if resp.status_code == 404:
            raise NotFound(f"vLLM has no adapter named {lora_name!r} loaded: {reason}")
        raise InvalidInput(f"vLLM refused to unload adapter {lora_name!r}: {reason}")

    def smoke_test(self, lora_name: str) -> None:
        """One short chat request through `lora_name`: it must answer with a choice."""
        body = {"model": lora_name, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
        resp = self._call("POST", "/v1/chat/completions", f"smoke-test {lora_name!r}", json=body, timeout=60)
        if resp.status_code != 200 or not resp.json().get("choices"):
            raise NotReady(f"smoke request through {lora_name} failed: HTTP {resp.status_code} {resp.text[:300]}")


_clients: dict[tuple, EngineClient] = {}


def engine_client(settings: Settings) -> EngineClient:
    """One client per process and engine: a hand-off of four calls pays for one connection."""
    where = (settings.engine_transport, str(settings.engine_dir), settings.vllm_url)
    if where not in _clients:
        _clients[where] = EngineClient(settings)
    return _clients[where]


def vllm_message(resp: httpx.Response) -> str:
    """vLLM's own error text: {"error": {"message": ...}} or a bare string."""
    try:
        data = resp.json()
    except ValueError:
        return resp.text.strip() or f"HTTP {resp.status_code}"
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(data.get("detail"), str):
            return data["detail"]
    return str(data)
