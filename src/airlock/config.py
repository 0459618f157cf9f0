"""All settings in one place: environment variables prefixed `AIRLOCK_`, injected everywhere."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

# In a source checkout the package lives in <repo>/src/airlock; the repo's offline_models/ and
# examples/ are then the defaults, so a fresh clone works without any configuration.
REPO_ROOT = Path(__file__).resolve().parents[2]


def _default_models_dir() -> Path:
    repo_models = REPO_ROOT / "offline_models"
    return repo_models if repo_models.is_dir() else Path.cwd() / "offline_models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIRLOCK_", extra="ignore")

    home: Path = Path.home() / ".airlock"
    models_dir: Path = _default_models_dir()

    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080

    # vLLM listens on loopback only; the gateway is the one way in.
    vllm_host: str = "127.0.0.1"
    vllm_port: int = 8000
    serve_base_model: str = "airlock-tiny"
    vllm_max_lora_rank: int = 64
    vllm_max_loras: int = 4
    vllm_max_model_len: int = 512
    vllm_startup_timeout_s: float = 300.0
    vllm_extra_args: str = ""

    store_backend: Literal["local", "s3"] = "local"
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "airlock"
    s3_secure: bool = False

    @cached_property
    def db_path(self) -> Path:
        return self.home / "airlock.db"

    @cached_property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @cached_property
    def store_dir(self) -> Path:
        return self.home / "store"

    @cached_property
    def run_dir(self) -> Path:
        """Pid files and logs of the processes `airlock up` supervises."""
        return self.home / "run"

    @cached_property
    def serving_dir(self) -> Path:
        """Verified copies of adapters that vLLM loads from disk."""
        return self.home / "serving"

    @property
    def vllm_url(self) -> str:
        return f"http://{self.vllm_host}:{self.vllm_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host}:{self.gateway_port}"

    def ensure_dirs(self) -> None:
        for d in (self.home, self.keys_dir, self.run_dir, self.serving_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.keys_dir.chmod(0o700)


def get_settings() -> Settings:
    return Settings()
