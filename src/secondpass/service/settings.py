"""Settings of the HTTP service, from CLI flags, environment variables or a config file.

Precedence, highest first: ``secondpass serve`` flags, ``SECONDPASS_SERVICE_*``
variables (nested areas with ``__``, e.g. ``SECONDPASS_SERVICE_RERANK__DEVICE``),
the config file (``--config`` or ``SECONDPASS_SERVICE_CONFIG_FILE``; TOML, JSON or
YAML), then each area's own variables (``SECONDPASS_RERANK_*``, ``SECONDPASS_CACHE_*``,
``SECONDPASS_ENGINE_*``) and finally the defaults. The nested areas reuse the
library's settings classes so a value means the same thing everywhere.

Example:
    >>> s = ServiceSettings(port=9000, rerank={"device": "cpu"})
    >>> (s.port, s.rerank.device)
    (9000, 'cpu')
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from secondpass.config import (
    CacheSettings,
    ConnectionSettings,
    RerankSettings,
    ScoringEngineSettings,
)
from secondpass.errors import ConfigurationError
from secondpass.pipeline.rollout import RolloutSettings
from secondpass.service.settings_files import FileBackedSettings

CONFIG_FILE_ENV = "SECONDPASS_SERVICE_CONFIG_FILE"


class ServiceSettings(FileBackedSettings, ScoringEngineSettings, RolloutSettings):
    """Everything ``secondpass serve`` needs (env prefix ``SECONDPASS_SERVICE_``)."""

    config_file_env: ClassVar[str] = CONFIG_FILE_ENV
    settings_name: ClassVar[str] = "service"

    model_config = SettingsConfigDict(env_prefix="SECONDPASS_SERVICE_")

    # -- network ---------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="interface to listen on")
    port: int = Field(default=8080, ge=0, le=65535, description="TCP port (0 picks a free one)")
    log_level: str = Field(default="info", description="uvicorn log level")
    access_log: bool = Field(default=False, description="log one line per request")
    ssl_certfile: Path | None = Field(
        default=None, description="PEM certificate (chain): serve HTTPS instead of HTTP"
    )
    ssl_keyfile: Path | None = Field(default=None, description="PEM private key of ssl_certfile")

    # -- access control (docs/service.md#authentication) ------------------------
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="client API keys (comma-separated or a JSON list; no flag: env or config "
        "file only); clients send Authorization: Bearer KEY or X-API-Key: KEY",
    )
    api_key_file: Path | None = Field(
        default=None, description="file of client API keys, one `KEY` or `NAME KEY` per line"
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="serve a non-loopback host without API keys (an explicit, logged opt-in)",
    )
    api_key_rate_per_s: float | None = Field(
        default=None,
        gt=0,
        description="requests per second each API key may send (token bucket, burst "
        "max(1, rate)); 429 with Retry-After above it; unset: no limit",
    )
    model_name: str | None = Field(
        default=None,
        description="model name clients see (meta.model, /readyz); default: the Hugging Face "
        "id, or `local-model` for a local directory (paths are never shown to clients)",
    )

    # -- request limits (each violation is a 4xx naming the field and the limit) --
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="largest request body in bytes (413 above it)"
    )
    max_documents: int = Field(
        default=1000, ge=1, description="most documents (Cohere) or texts (TEI) in one request"
    )
    max_document_chars: int = Field(
        default=32_000, ge=1, description="most characters in one document after field composition"
    )
    max_query_chars: int = Field(default=4_000, ge=1, description="most characters in a query")
    max_top_n: int = Field(default=1000, ge=1, description="largest accepted top_n / k")
    auto_truncate: bool = Field(
        default=True,
        description="TEI /rerank: cut over-long texts when the request leaves truncate unset",
    )
    # bounded input (docs/service.md#limits): one slow or huge client must not hurt others
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, description="largest request head in bytes (431 above it)"
    )
    max_headers: int = Field(default=100, ge=8, description="most request headers (431 above it)")
    max_json_depth: int = Field(
        default=64, ge=2, description="deepest JSON nesting, checked before parsing (400)"
    )
    body_idle_timeout_s: float = Field(
        default=10.0, gt=0, description="longest pause while a request body arrives (408)"
    )
    body_total_timeout_s: float = Field(
        default=60.0, gt=0, description="longest a whole request body may take to arrive (408)"
    )
    head_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="longest a request head (request line and headers) may take to arrive; "
        "the connection is closed (slow-header clients)",
    )
    max_client_connections: int = Field(
        default=1024,
        ge=1,
        description="most open client connections; more are answered 503 and closed",
    )

    # -- cross-request dynamic batching (and the breaker: ScoringEngineSettings) -
    retry_after_s: int = Field(
        default=1, ge=1, description="Retry-After seconds sent with 429 and 503"
    )
    request_timeout_ms: float = Field(
        default=30_000, gt=0, description="a request still queued after this long is dropped (503)"
    )

    # -- search facade -----------------------------------------------------------
    search_index: str | None = Field(
        default=None, description="index /v1/search reads; /v1/search is off when unset"
    )
    search_fields: list[str] = Field(
        default_factory=lambda: ["title", "text"],
        description="text fields searched and read into the passage",
    )
    search_filter_fields: list[str] = Field(
        default_factory=list,
        description="fields a caller's filters and body may name besides the search fields "
        "(and their sub-fields, e.g. lang.keyword); empty: only the search fields",
    )
    search_source_fields: list[str] | None = Field(
        default=None,
        description="_source fields returned with each hit besides the search fields; "
        "null: the filter fields. Nothing else of a stored document leaves the engine",
    )
    search_vector_field: str | None = Field(
        default=None, description="dense vector field; when set, /v1/search can run hybrid"
    )
    search_dense_model: str | None = Field(
        default=None,
        description="sentence-transformers model for query vectors (default: all-MiniLM-L6-v2)",
    )
    search_fusion: Literal["rrf", "linear"] = Field(
        default="rrf", description="how hybrid search fuses the lexical and kNN lists"
    )
    search_alpha: float = Field(
        default=0.5, ge=0, le=1, description="linear fusion: weight of the lexical side"
    )
    search_window: int = Field(
        default=100, ge=1, description="first-stage hits fetched and reranked"
    )
    search_mode: Literal["best_effort", "required"] = Field(
        default="best_effort",
        description="best_effort: a scoring failure returns first-stage order with rerank_status; "
        "required: it answers 503 with Retry-After",
    )

    # -- lifecycle -----------------------------------------------------------------
    shutdown_delay_s: float = Field(
        default=0.0,
        ge=0,
        description="after SIGTERM, keep serving this long with /readyz at 503 before closing",
    )
    shutdown_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="longest in-flight requests may take to finish after SIGTERM",
    )
    readiness_probe_interval_s: float = Field(
        default=2.0,
        gt=0,
        description="after a failed forward pass, /readyz re-tests at most this often",
    )
    engine_check_interval_s: float = Field(
        default=1.5,
        gt=0,
        description="how long /readyz reuses its last engine check (a probe storm costs one call)",
    )
    readiness_timeout_s: float = Field(
        default=1.0,
        gt=0,
        description="longest /readyz waits for the engine (or a model re-probe) before 503",
    )

    # -- the library areas -----------------------------------------------------
    rerank: RerankSettings = Field(default_factory=RerankSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    engine: ConnectionSettings = Field(default_factory=ConnectionSettings)

    @field_validator("rerank", "cache", "engine", mode="before")
    @classmethod
    def _layer_area_env(cls, value: Any, info: Any) -> Any:
        """Build a partial area from its dict so the area's own env vars fill the gaps.

        Without this, ``--rerank-device cpu`` would silently drop
        ``SECONDPASS_RERANK_MODEL``: pydantic would validate the dict alone.
        """
        if not isinstance(value, dict):
            return value
        area = {"rerank": RerankSettings, "cache": CacheSettings, "engine": ConnectionSettings}
        return area[info.field_name](**{k: _decode_json_list(v) for k, v in value.items()})

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        """``SECONDPASS_SERVICE_API_KEYS=k1,k2`` (or a JSON list) becomes a list of keys."""
        if isinstance(value, str):
            decoded = _decode_json_list(value)
            if isinstance(decoded, list):
                return decoded
            return [part for part in re.split(r"[,\s]+", value) if part]
        return value

    @field_validator("model_name")
    @classmethod
    def _name_is_not_a_path(cls, value: str | None) -> str | None:
        if value is not None and looks_like_path(value):
            msg = f"model_name is shown to clients and must not be a path, got {value!r}"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> ServiceSettings:
        if self.max_top_n > self.max_documents:
            self.max_top_n = self.max_documents
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            msg = "TLS needs both ssl_certfile and ssl_keyfile (or neither)"
            raise ValueError(msg)
        return self

    @property
    def public_model_name(self) -> str:
        """The model as clients see it: ``model_name``, the Hugging Face id, never a path.

        A local directory's path tells an attacker about the host (user names,
        mount points), so it is replaced by ``local-model`` unless the operator
        names the model.
        """
        if self.model_name:
            return self.model_name
        model = self.rerank.model
        return "local-model" if looks_like_path(model) else model

    @property
    def exposed(self) -> bool:
        """Whether ``host`` is reachable from other machines (not a loopback address)."""
        host = self.host.strip("[]")
        if host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(host).is_loopback
        except ValueError:  # a host name other than localhost: assume reachable
            return True

    def check_exposure(self, *, keys_configured: bool) -> None:
        """Refuse an unauthenticated service on a reachable interface (closed by default).

        Raises :class:`ConfigurationError` naming both remedies; the operator opts
        out with ``allow_unauthenticated``.
        """
        if self.exposed and not keys_configured and not self.allow_unauthenticated:
            msg = (
                f"refusing to serve {self.host} without authentication: set API keys "
                "(SECONDPASS_SERVICE_API_KEYS or --api-key-file) or, to run open on purpose, "
                "--allow-unauthenticated (SECONDPASS_SERVICE_ALLOW_UNAUTHENTICATED=true)"
            )
            raise ConfigurationError(msg)

    @property
    def queue_time_limit_s(self) -> float:
        """The admission limit in seconds: ``max_queue_s``, or a third of the request timeout.

        A third leaves the estimate room to be wrong (it is a moving average)
        before an admitted request would hit the timeout itself.
        """
        if self.max_queue_s is not None:
            return self.max_queue_s
        return self.request_timeout_ms / 3000.0

    @property
    def search_enabled(self) -> bool:
        """Whether ``/v1/search`` is served (an index is configured)."""
        return self.search_index is not None


_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def looks_like_path(model: str) -> bool:
    r"""Whether ``model`` names a filesystem location rather than a Hugging Face id.

    Absolute, ``~``, ``./``/``../`` relative, Windows (``C:\\``, ``\\\\server``) and
    anything that exists on disk (a relative directory, a symlink) count as paths.
    """
    text = model.strip()
    if not _HF_ID.match(text) or ".." in text:
        return True
    try:
        return Path(text).expanduser().exists() or Path(text).is_symlink()
    except OSError:
        return True


def _decode_json_list(value: Any) -> Any:
    """Nested env values arrive as text; a JSON list (``["http://a:9200"]``) becomes a list."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
