"""Settings, from constructor arguments, environment variables or a config file.

Each area has its own settings class with its own environment prefix, so a
service can be configured entirely from the environment (12-factor) while a
library user passes plain keyword arguments. Secrets are ``SecretStr`` so that
``repr()`` and logs never show them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ConnectionSettings(BaseSettings):
    """How to reach one Elasticsearch or OpenSearch cluster (env prefix ``SECONDPASS_ENGINE_``).

    ``hosts`` is one or more URLs (``SECONDPASS_ENGINE_HOSTS`` may be a
    comma-separated list). Credentials written into a URL
    (``https://user:pass@host``) are moved into ``username``/``password`` so the
    URL can be logged. ``password`` and ``api_key`` are secrets: ``repr()``,
    logs and validation errors never show them. TLS certificates are verified
    unless ``verify_certs`` is false; ``ca_certs`` names a CA bundle file.

    Timeouts: ``request_timeout_s`` bounds one HTTP attempt, ``server_timeout_s``
    is sent in the search body so the engine itself stops early (defaults to the
    request timeout), and ``deadline_s`` bounds a whole call including retries.
    ``compatible_with`` (Elasticsearch only) pins the major version in the REST
    compatibility headers; ``None`` sends plain ``application/json``, which
    8.x and 9.x servers both accept. ``max_connections`` is the pool size per
    node: opensearch-py's sync client otherwise keeps a single connection, so
    concurrent threads open and throw away a connection per request.

    Example:
        >>> s = ConnectionSettings(hosts="https://elastic:secret@es.example:9200")
        >>> s.hosts, s.username, s.password
        (['https://es.example:9200'], 'elastic', SecretStr('**********'))
    """

    model_config = SettingsConfigDict(
        env_prefix="SECONDPASS_ENGINE_", extra="forbid", hide_input_in_errors=True
    )

    engine: Literal["elasticsearch", "opensearch"] = "opensearch"
    hosts: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["http://127.0.0.1:9200"])
    api_key: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    verify_certs: bool = True
    ca_certs: str | None = None
    request_timeout_s: float = Field(default=10.0, gt=0)
    deadline_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=4, ge=1)
    server_timeout_s: float | None = Field(default=None, gt=0)
    initial_backoff_s: float = Field(default=0.2, ge=0)
    max_backoff_s: float = Field(default=2.0, ge=0)
    compatible_with: int | None = Field(default=None, ge=7)
    max_connections: int = Field(default=10, ge=1, le=1000)

    @field_validator("hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("hosts", mode="after")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        if not value:
            msg = "hosts must name at least one URL"
            raise ValueError(msg)
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                msg = "each host must be an http:// or https:// URL with a host name"
                raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _check(self) -> ConnectionSettings:
        cleaned: list[str] = []
        for url in self.hosts:
            parts = urlsplit(url)
            if parts.username is not None or parts.password is not None:
                if self.username not in (None, unquote(parts.username or "")):
                    msg = "hosts carry credentials that differ from username"
                    raise ValueError(msg)
                self.username = unquote(parts.username or "") or self.username
                if parts.password is not None and self.password is None:
                    self.password = SecretStr(unquote(parts.password))
                netloc = parts.netloc.rpartition("@")[2]
                url = urlunsplit(parts._replace(netloc=netloc))
            cleaned.append(url)
        self.hosts = cleaned
        if (self.username is None) != (self.password is None):
            msg = "username and password must be given together"
            raise ValueError(msg)
        if self.api_key is not None and self.username is not None:
            msg = "give either an API key or username/password, not both"
            raise ValueError(msg)
        return self

    @property
    def auth_kind(self) -> Literal["none", "basic", "api_key"]:
        """Which credentials are configured, for reprs and logs that must not show them."""
        if self.api_key is not None:
            return "api_key"
        return "basic" if self.username is not None else "none"


class RerankSettings(BaseSettings):
    """Which cross-encoder to load and how to run it (env prefix ``SECONDPASS_RERANK_``).

    ``model`` is a Hugging Face id or a local directory, or a rerank API
    reference such as ``cohere:rerank-v3.5`` or ``tei:http://host:8080``
    (docs/remote-rerankers.md; the device, dtype and backend settings then do
    not apply). ``device="auto"`` picks
    CUDA, then MPS, then CPU; ``dtype="auto"`` is bf16 (fp16 where bf16 is not
    supported) on CUDA and fp32 elsewhere. ``max_length`` can only lower the
    model's own window. ``token_budget`` bounds one batch's padded size
    (longest input x inputs) and shrinks by itself after a CUDA out-of-memory.
    ``long_document`` is ``truncate`` (tail cut) or ``chunk`` (windows of
    ``chunk_overlap`` overlapping tokens, at most ``max_chunks`` per document,
    document score = best window). ``trust_remote_code`` needs a pinned
    ``revision``; ``allow_pickle`` permits ``.bin`` (pickle) weights, which can
    run code when loaded. ``rank_by`` and ``min_score`` are applied by the
    retriever: which of the two scores orders hits, and the least score a hit
    needs to be kept (on the ``rank_by`` scale). ``backend="onnx"`` (CPU only,
    extra ``fast``) runs the forward pass in ONNX Runtime from an export cached
    under ``cache_folder`` (else the Hugging Face home); ``quantize="int8"``
    makes that export dynamically int8-quantized (faster, approximate).
    ``backend="openvino"`` (CPU only, extra ``fast``) runs the same export in
    OpenVINO: fp32 by default, ``dtype="bfloat16"`` for the bf16 fast mode.
    ``backend="auto"`` (the default) picks the fastest *exact* runtime
    installed: OpenVINO fp32 on a CPU when the ``fast`` extra is there, else
    ONNX Runtime fp32, else torch; torch whenever the model runs on a GPU
    (see :meth:`~secondpass.pipeline.scorer.CrossEncoderScorer.backend`).
    ``instruction`` is the default task instruction of an LLM (causal-LM)
    reranker such as Qwen3-Reranker (see docs/rerank.md, "LLM rerankers").
    """

    model_config = SettingsConfigDict(env_prefix="SECONDPASS_RERANK_", extra="forbid")

    model: str = "BAAI/bge-reranker-v2-m3"
    revision: str | None = None
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_length: int | None = Field(default=None, ge=8)
    token_budget: int = Field(default=16384, ge=1)
    max_batch_size: int = Field(default=256, ge=1)
    long_document: Literal["truncate", "chunk"] = "truncate"
    max_chunks: int = Field(default=8, ge=1)
    chunk_overlap: int = Field(default=64, ge=0)
    overlap_collate: bool = True
    cache_folder: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    backend: Literal["auto", "torch", "onnx", "openvino"] = "auto"
    quantize: Literal["int8"] | None = None
    rank_by: Literal["normalized", "raw"] = "normalized"
    min_score: float | None = None
    # LLM rerankers only (Qwen3-Reranker, bge-reranker-v2-gemma, ...): the task
    # instruction of every request that brings none; None = the model's default.
    instruction: str | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="LLM rerankers: the task instruction of requests that bring none",
    )


class CacheSettings(BaseSettings):
    """Score cache backend (env prefix ``SECONDPASS_CACHE_``).

    ``memory`` is a per-process LRU bounded by ``max_entries``; ``redis`` is shared
    by every replica and bounded by ``ttl_s`` and Redis' own eviction policy;
    ``none`` disables caching. Redis timeouts are short on purpose: a cache that is
    slower than the model is worse than none, so a slow or absent Redis turns into
    misses. Put the Redis password in ``redis_password`` (a secret that is never
    logged), not in ``redis_url``.

    Example:
        >>> CacheSettings(backend="redis", redis_url="redis://127.0.0.1:6379/0").ttl_s
        604800
    """

    model_config = SettingsConfigDict(env_prefix="SECONDPASS_CACHE_", extra="forbid")

    backend: Literal["memory", "redis", "none"] = "memory"
    max_entries: int = Field(default=100_000, gt=0)
    redis_url: str | None = None
    redis_password: SecretStr | None = None
    redis_timeout_s: float = Field(default=0.05, gt=0)
    ttl_s: int | None = Field(default=7 * 24 * 3600, gt=0)
    redis_connect_timeout_s: float = Field(default=0.1, gt=0)
    redis_max_connections: int = Field(default=32, gt=0)
    key_prefix: str = "secondpass:score:"
    cooldown_s: float = Field(default=1.0, ge=0)
    warn_interval_s: float = Field(default=30.0, ge=0)


_BATCHING_OPTIONS = (
    "batching",
    "max_batch_pairs",
    "max_batch_tokens",
    "max_wait_ms",
    "max_queue_pairs",
    "compute_nice",
)


class ScoringEngineSettings(BaseModel):
    """The scoring engine's batching, admission and breaker knobs, as flat fields.

    Why a mixin: ``secondpass serve`` and ``secondpass proxy`` run the same
    :class:`~secondpass.pipeline.engine.ScoringEngine`, so its settings must have
    the same names, defaults, bounds and meaning in both; each front-end's
    settings class inherits them (``SECONDPASS_SERVICE_MAX_WAIT_MS``,
    ``SECONDPASS_PROXY_MAX_WAIT_MS``, ``--max-wait-ms``). What a refused request
    gets is the front-end's: the service answers 429, the proxy answers the search
    in engine order (skipped).

    Example:
        >>> ScoringEngineSettings(max_wait_ms=2).batching_options()["max_wait_ms"]
        2.0
    """

    batching: bool = Field(
        default=True, description="mix pairs of concurrent requests in one forward pass"
    )
    max_batch_pairs: int = Field(
        default=64, ge=1, description="most (query, passage) pairs per batch"
    )
    max_batch_tokens: int = Field(
        default=16_384, ge=64, description="estimated token budget of one batch (chars/4 per pair)"
    )
    max_wait_ms: float = Field(
        default=5.0,
        ge=0,
        description="longest a batch waits to fill before it runs, in milliseconds",
    )
    max_queue_pairs: int = Field(
        default=8_192,
        ge=1,
        description="queue bound in pairs; a request that does not fit is refused "
        "(service: 429; proxy: the search is skipped)",
    )
    max_queue_s: float | None = Field(
        default=None,
        gt=0,
        description="most estimated seconds of queue wait plus scoring a request may be "
        "admitted with; more is refused at once (default: the service allows a third of "
        "request_timeout_ms, the proxy lets each search's deadline_ms alone decide)",
    )
    compute_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="CPU priority (Linux nice) of the model's threads, so the HTTP loops that "
        "answer requests, 429s and health checks run first on a busy machine; 0 leaves them "
        "as started",
    )
    breaker_failures: int = Field(
        default=5, ge=1, description="consecutive scoring failures that open the circuit breaker"
    )
    breaker_reset_s: float = Field(
        default=10.0, gt=0, description="seconds an open breaker skips scoring before one probe"
    )

    def batching_options(self) -> dict[str, Any]:
        """The batching keyword arguments of ``ScoringEngine``, under their own names.

        ``max_queue_s`` and the breaker are left to the front-end: their defaults
        differ (see the field descriptions) and the breaker is an object.
        """
        return self.model_dump(include=set(_BATCHING_OPTIONS))
