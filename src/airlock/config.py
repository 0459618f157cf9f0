"""All settings in one place: environment variables prefixed `AIRLOCK_`, injected everywhere."""

from __future__ import annotations

import sys
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from airlock.errors import InvalidInput

# In a source checkout the package lives in <repo>/src/airlock; the repo's offline_models/ and
# examples/ are then the defaults, so a fresh clone works without any configuration.
REPO_ROOT = Path(__file__).resolve().parents[2]


RELEASE_MODELS = Path("bundle") / "models"  # a release's own models, inside PREFIX/releases/NAME
SHARED_MODELS = "models"  # PREFIX/models: the models of models bundles, kept by every release


def installed_release() -> Path | None:
    """PREFIX/releases/NAME when this Python is an installed release's venv (PREFIX/releases/NAME/venv).

    Read from the interpreter, never from the current directory: an operator runs
    `PREFIX/current/venv/bin/airlock` from any folder of theirs. Resolved, since PREFIX/current is a
    link to the release (its python, called by that path, has PREFIX/current/venv as its prefix)."""
    venv = Path(sys.prefix).resolve()
    return venv.parent if venv.name == "venv" and venv.parent.parent.name == "releases" else None


def _default_models_dir() -> Path:
    """Where new models go and the last place models are looked up (see Settings.models_dirs)."""
    repo_models = REPO_ROOT / "offline_models"
    if repo_models.is_dir():
        return repo_models
    release = installed_release()
    if release is not None:
        return release.parents[1] / SHARED_MODELS
    return Path.cwd() / "offline_models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIRLOCK_", extra="ignore")

    home: Path = Path.home() / ".airlock"
    # AIRLOCK_MODELS_DIR, when set, is the one folder models come from; unset, see models_dirs.
    models_dir: Path = Field(default_factory=_default_models_dir)
    # The folders models are looked up in, ':'-separated, the first that holds a name winning: for
    # services that do not run from a release's venv (the containers mount the release's models and
    # the shared folder). Empty: see models_dirs.
    models_path: str = ""

    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    # The gateway serves HTTPS with this PEM certificate (chain) and its unencrypted PEM key
    # (mode 0600 or 0400); both or neither. `airlock tls generate` makes a self-signed pair.
    tls_cert: Path | None = None
    tls_key: Path | None = None

    # The engine (vLLM) listens on a Unix socket in a directory only the appliance's user can
    # open, and wants a secret made at each start: the gateway is the one way in. "tcp" (on
    # vllm_host:vllm_port, still with the secret) is for an engine on another host or container.
    engine_transport: Literal["uds", "tcp"] = "uds"
    # Where the engine's socket and secret live when not under this home's run/ (a container
    # volume shared by the engine and the gateway, for example).
    engine_home: Path | None = None
    vllm_host: str = "127.0.0.1"
    vllm_port: int = 8000
    serve_base_model: str = "airlock-tiny"
    # The engines to run: a JSON array of {model, name, replicas, gpus, cpus, hosts,
    # tensor_parallel_size} (serve/fleet.py). Empty: one engine serving serve_base_model.
    engines: str = ""
    # An engine's tensor-parallel size (its GPUs of one host); set per replica from the list.
    engine_tensor_parallel_size: int = Field(1, ge=1, le=8)
    # The trainer's default rank (train/config.py). vLLM's LoRA kernels pad every adapter to this
    # rank, so on a CPU an adapter's requests cost in proportion to it (BENCHMARKS.md, section 13:
    # 16 costs 1.8x, 64 3.5x the time of 8): a site that trains higher ranks raises it knowingly.
    vllm_max_lora_rank: int = 8
    vllm_max_loras: int = 4
    vllm_max_model_len: int = 512
    vllm_startup_timeout_s: float = 300.0
    vllm_extra_args: str = ""
    # On a GPU: the share of the GPU's memory vLLM takes (its --gpu-memory-utilization); a run
    # that trains on the engine's GPU must fit in the rest, or the engine sleeps while it trains
    # (vLLM's sleep mode, when engine_sleep_for_training is set), answering 503 meanwhile.
    vllm_gpu_memory_utilization: float = 0.9
    engine_gpus: str = "0"  # the GPUs the engine serves from on this host; "none": elsewhere
    engine_sleep_for_training: bool = False
    # The served model's vLLM tool-call parser. Empty: the one its family uses (see
    # airlock.models.tool_calls), or none; "none" turns tool calling off.
    tool_call_parser: str = ""

    # The worker trains beside serving: its CPU threads and niceness confine it (torch and
    # OpenMP threads; 0 means torch's own default).
    worker_threads: int = 1
    worker_nice: int = 10
    # What the worker may hand out to runs at once: CPU threads (0: worker_threads for each GPU,
    # or one run's worth on a host without), memory in GiB (0: not accounted), and GPUs ("auto":
    # those nvidia-smi lists, "none", or ids such as "0,1").
    worker_cpu_threads: int = 0
    worker_memory_gb: float = 0.0
    worker_gpus: str = "auto"
    # A run held by a worker that died is queued again (to resume from its checkpoint) this many
    # times in all; after that it is marked interrupted.
    worker_max_attempts: int = 3
    # The worker's Prometheus metrics (runs by state, tokens per second, GPU memory); 0: none.
    worker_metrics_port: int = 0
    worker_metrics_host: str = "127.0.0.1"
    # Checkpoints of runs in progress; the default is the home's training/ folder.
    checkpoints_dir: Path | None = None
    # Where multi-host training runs is the operator's choice, never a workflow's: the training
    # hosts' addresses on the training network, comma-separated, this worker's host first (its
    # first process serves the rendezvous on that address and this port), and the interface of
    # that network, which the collectives bind to. Empty: training stays on this host.
    training_hosts: str = ""
    training_rdzv_port: int = Field(29400, ge=1, le=65535)
    training_ifname: str = ""
    # The supervisor restarts a crashed service after 1, 2, 4 ... seconds, at most this long.
    restart_backoff_max_s: float = 30.0

    # Bounds on every request the gateway accepts (413 or 400 naming the parameter).
    max_body_bytes: int = 4 * 1024 * 1024
    max_upload_bytes: int = 256 * 1024 * 1024
    # Uploads are validated line by line, so a dataset line longer than this is refused by line
    # number; uploads in progress at once, per key and in all, answer 429 beyond these.
    max_record_bytes: int = 1024 * 1024
    max_uploads_per_key: int = 1
    max_uploads: int = 4
    max_header_bytes: int = 16 * 1024
    max_n: int = 8
    max_completion_tokens: int = 4096
    max_prompt_chars: int = 200_000
    max_guided_bytes: int = 16 * 1024
    # A base model's chat template renders the records of a submitted workflow's datasets in a
    # child process that is killed when they take longer than this, in all (models/chat_render.py).
    chat_template_timeout_s: float = 60.0
    # Request fields that change server behaviour beyond a completion (chat_template, ...),
    # and fields outside OpenAI's API and the engine's sampling extras, are refused unless named
    # here, comma-separated; allow_unknown_request_fields passes every unknown field on.
    allow_request_fields: str = ""
    allow_unknown_request_fields: bool = False
    # Pooled connections to the engine idle longer than this are closed by the gateway, before
    # the engine closes them (vLLM after its keep-alive of engine_keep_alive_s).
    engine_pool_idle_s: float = 3.0
    engine_keep_alive_s: int = 30
    # A web UI session lasts this long after sign-in (the key's own expiry or revocation ends it sooner).
    web_session_hours: float = 8.0
    # Per-key rate limits for keys created without their own (0: no limit).
    default_rpm: int = 0
    default_tpm: int = 0

    # The output a completion may ask for when it names no max_tokens (a key's own default
    # comes first); clamped to vllm_max_model_len, the most the engine accepts.
    default_max_tokens: int = 512
    # Failed authentications (a wrong key on /v1 or /api, a failed sign-in) allowed per client
    # address and per key id in auth_fail_window_s; past it, 429 until the window ends (0: off).
    auth_fail_limit: int = 20
    auth_fail_window_s: float = 300.0
    # The names the gateway answers to in a request's Host header (comma-separated, "*" for
    # any): a page of another site that rebinds its name to this host is refused with 400.
    # Loopback names (localhost, 127.0.0.1, ::1) and gateway_host are always accepted.
    allowed_hosts: str = ""
    # A listener of its own for Prometheus scrapers: GET /metrics without a key on
    # metrics_host:metrics_port (0: none; /metrics on the gateway then needs the `metrics` permission).
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"

    store_backend: Literal["local", "s3"] = "local"
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "airlock"
    s3_secure: bool = False
    # The CA certificate (PEM) that the S3 endpoint's TLS certificate is checked against (the
    # site's CA, or the store's own self-signed certificate); empty: the system's CAs.
    s3_ca: Path | None = None

    # The audit log's anchors: each new head hash, signed with the appliance key, appended as one
    # line to this file outside the database (default: HOME/audit/anchors.jsonl), and, where set,
    # sent to syslog ("/dev/log", or HOST:PORT over UDP) so a copy reaches the site's log host.
    audit_anchors: Path | None = None
    audit_syslog: str = ""

    # What `airlock models import` admits (models/admission.py): a folder of at most this many
    # bytes and files, safetensors headers of at most this many bytes (the largest real ones are
    # a few hundred KiB), and a tokenizer that loads in its child process within this time.
    model_import_max_bytes: int = Field(256 * 1024**3, gt=0)
    model_import_max_files: int = Field(1000, gt=0)
    model_import_max_header_bytes: int = Field(16 * 1024 * 1024, gt=0)
    model_import_tokenizer_timeout_s: float = Field(120.0, gt=0)

    @field_validator("tls_cert", "tls_key", "checkpoints_dir", "s3_ca", "audit_anchors", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # An environment file that writes `AIRLOCK_TLS_CERT=` means no TLS, not the current folder.
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        # Half a pair would otherwise serve plain HTTP while the operator believes it is TLS.
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = (("AIRLOCK_TLS_CERT", "AIRLOCK_TLS_KEY") if self.tls_cert is not None
                              else ("AIRLOCK_TLS_KEY", "AIRLOCK_TLS_CERT"))
            raise InvalidInput(f"{given} is set but {missing} is not: the gateway's TLS needs both the "
                               "certificate and its private key, or neither")
        return self

    @property
    def models_dirs(self) -> list[Path]:
        """The folders base models are looked up in, in order: the first that holds a name wins.

        An installed release reads its own models (PREFIX/releases/NAME/bundle/models) before the
        shared folder (PREFIX/models) that `airlock models install` fills: the release's models are
        the ones its install was checked with, and `models install` refuses a name the release
        carries with other bytes, so the order never hides a model silently. AIRLOCK_MODELS_PATH names
        the folders outright; else AIRLOCK_MODELS_DIR set (or models_dir given) means that folder
        only; a checkout uses its offline_models/."""
        if self.models_path.strip():
            return [Path(part) for part in self.models_path.split(":") if part.strip()]
        release = installed_release()
        if "models_dir" in self.model_fields_set or release is None or (REPO_ROOT / "offline_models").is_dir():
            return [self.models_dir]
        return [release / RELEASE_MODELS, self.models_dir]

    def model_path(self, name: str) -> Path:
        """The folder of base model `name`: the first of models_dirs that holds it (else the last
        one's, which error messages then name)."""
        for folder in self.models_dirs:
            if (folder / name).is_dir():
                return folder / name
        return self.models_dirs[-1] / name

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

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

    @property
    def training_dir(self) -> Path:
        """Each training job's folder: its checkpoints, events and log."""
        return self.checkpoints_dir or self.home / "training"

    @cached_property
    def serving_dir(self) -> Path:
        """Verified copies of adapters that vLLM loads from disk."""
        return self.home / "serving"

    @property
    def audit_anchor_path(self) -> Path:
        return self.audit_anchors or self.home / "audit" / "anchors.jsonl"

    @property
    def engine_dir(self) -> Path:
        """The engine's private directory (0700): its Unix socket and its per-start secret."""
        return self.engine_home or self.run_dir / "engine"

    @property
    def engine_socket(self) -> Path:
        return self.engine_dir / "vllm.sock"

    @property
    def engine_secret_path(self) -> Path:
        return self.engine_dir / "secret"

    @property
    def vllm_url(self) -> str:
        """The engine's base URL; over a Unix socket the host part is a placeholder."""
        if self.engine_transport == "uds":
            return "http://engine"
        return f"http://{self.vllm_host}:{self.vllm_port}"

    @property
    def allowed_request_fields(self) -> frozenset[str]:
        return frozenset(f.strip() for f in self.allow_request_fields.split(",") if f.strip())

    @property
    def allowed_host_names(self) -> frozenset[str]:
        configured = {h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()}
        return frozenset(configured | {"localhost", "127.0.0.1", "::1", self.gateway_host.lower()})

    @property
    def training_host_list(self) -> list[str]:
        return [h.strip() for h in self.training_hosts.split(",") if h.strip()]

    @property
    def gateway_url(self) -> str:
        scheme = "https" if self.tls_enabled else "http"
        return f"{scheme}://{self.gateway_host}:{self.gateway_port}"

    def ensure_dirs(self) -> None:
        """The home's folders, made owner-only; a home other users can open is refused (see
        airlock.private)."""
        from airlock.private import make_private_dir

        self.ensure_home()
        for d in (self.keys_dir, self.run_dir, self.serving_dir):
            make_private_dir(d)

    def ensure_home(self) -> None:
        """The home itself, made owner-only, and refused if other users can open anything in it."""
        from airlock.private import check_private_tree, make_private_dir

        make_private_dir(self.home)
        check_private_tree(self.home)  # before anything is written into it


def get_settings() -> Settings:
    return Settings()
