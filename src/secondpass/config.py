"""Settings, from constructor arguments, environment variables or a config file.

Each area has its own settings class with its own environment prefix, so a
service can be configured entirely from the environment (12-factor) while a
library user passes plain keyword arguments. Secrets are ``SecretStr`` so that
``repr()`` and logs never show them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConnectionSettings(BaseSettings):
    """How to reach one Elasticsearch or OpenSearch cluster (env prefix ``SECONDPASS_ENGINE_``)."""

    model_config = SettingsConfigDict(env_prefix="SECONDPASS_ENGINE_", extra="forbid")

    engine: Literal["elasticsearch", "opensearch"] = "opensearch"
    hosts: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:9200"])
    api_key: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    verify_certs: bool = True
    ca_certs: str | None = None
    request_timeout_s: float = 10.0
    deadline_s: float = 30.0
    max_attempts: int = 4


class RerankSettings(BaseSettings):
    """Which cross-encoder to load and how to run it (env prefix ``SECONDPASS_RERANK_``)."""

    model_config = SettingsConfigDict(env_prefix="SECONDPASS_RERANK_", extra="forbid")

    model: str = "BAAI/bge-reranker-v2-m3"
    revision: str | None = None
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_length: int | None = None
    token_budget: int = 16384
    long_document: Literal["truncate", "chunk"] = "truncate"
    max_chunks: int = 8
    trust_remote_code: bool = False
    allow_pickle: bool = False


class CacheSettings(BaseSettings):
    """Score cache backend (env prefix ``SECONDPASS_CACHE_``)."""

    model_config = SettingsConfigDict(env_prefix="SECONDPASS_CACHE_", extra="forbid")

    backend: Literal["memory", "redis", "none"] = "memory"
    max_entries: int = 100_000
    redis_url: str | None = None
    redis_password: SecretStr | None = None
    redis_timeout_s: float = 0.05
    ttl_s: int | None = 7 * 24 * 3600
