"""Settings of the drop-in proxy, from CLI flags, environment variables or a config file.

Precedence, highest first: ``secondpass proxy`` flags, ``SECONDPASS_PROXY_*``
variables (nested values as JSON, e.g. ``SECONDPASS_PROXY_INDICES='{"docs":
{"fields": ["title", "body"]}}'``, or with ``__`` for the library areas, e.g.
``SECONDPASS_PROXY_RERANK__DEVICE=cpu``), the config file (``--config``; TOML,
JSON or YAML), then each library area's own variables (``SECONDPASS_RERANK_*``,
``SECONDPASS_CACHE_*``) and the defaults.

Credentials toward the upstream are optional: by default the proxy forwards the
client's own ``Authorization`` header and stores none. Configured credentials are
only sent when a request carries no ``Authorization`` of its own, which means any
client that can reach the proxy gets their rights: bind it to loopback or a
private network when you set them.

Example:
    >>> s = ProxySettings(upstream="http://127.0.0.1:9200",
    ...                   indices={"docs": {"fields": ["title", "body"]}})
    >>> (s.host, s.port, s.index_rules().resolve("docs").fields)
    ('127.0.0.1', 9201, ('title', 'body'))
"""

from __future__ import annotations

import string
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from secondpass.config import CacheSettings, RerankSettings
from secondpass.service.proxy_rules import IndexText, IndexTextRules
from secondpass.service.settings_files import FileBackedSettings

CONFIG_FILE_ENV = "SECONDPASS_PROXY_CONFIG_FILE"


def _check_template(value: str | None) -> str | None:
    """Allow only plain field names, as the retriever does (no ``{a.__class__}``)."""
    if value is None:
        return value
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError as exc:
        msg = f"template is not a valid format string: {exc}"
        raise ValueError(msg) from exc
    for _, name, _, _ in parsed:
        if name is not None and not name.isidentifier():
            msg = f"template fields must be plain field names, got {{{name}}}"
            raise ValueError(msg)
    return value


class IndexTextSettings(BaseModel):
    """Passage configuration of one index, alias or ``*`` pattern.

    ``fields`` are read from each hit (``_source`` paths, dotted for objects);
    ``template`` is a ``str.format`` template over them (``"{title}: {body}"``);
    without one the non-empty fields are joined with newlines, as in the facade.
    """

    model_config = ConfigDict(extra="forbid")

    fields: list[str] = Field(min_length=1)
    template: str | None = None

    @field_validator("template")
    @classmethod
    def _plain_names(cls, value: str | None) -> str | None:
        return _check_template(value)


class ProxySettings(FileBackedSettings):
    """Everything ``secondpass proxy`` needs (env prefix ``SECONDPASS_PROXY_``)."""

    config_file_env: ClassVar[str] = CONFIG_FILE_ENV
    settings_name: ClassVar[str] = "proxy"

    model_config = SettingsConfigDict(
        env_prefix="SECONDPASS_PROXY_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    # -- where to listen, where to forward ------------------------------------
    upstream: str = Field("http://127.0.0.1:9200", description="the real cluster's base URL")
    listen: str = Field("127.0.0.1:9201", description="HOST:PORT to listen on (port 0: any free)")
    ssl_certfile: str | None = Field(None, description="serve HTTPS with this certificate")
    ssl_keyfile: str | None = Field(None, description="private key of ssl_certfile")
    log_level: str = Field("info", description="uvicorn log level")
    access_log: bool = Field(False, description="log one line per request")

    # -- toward the upstream ---------------------------------------------------
    username: str | None = Field(None, description="basic auth user, for clients that send none")
    password: SecretStr | None = Field(None, description="basic auth password")
    api_key: SecretStr | None = Field(
        None, description="API key (base64 id:key), for clients that send none"
    )
    verify_certs: bool = Field(True, description="verify the upstream's TLS certificate")
    ca_certs: str | None = Field(None, description="CA bundle for the upstream's certificate")
    client_cert: str | None = Field(None, description="client certificate for mutual TLS")
    client_key: str | None = Field(None, description="private key of client_cert")
    connect_timeout_s: float = Field(10.0, gt=0, description="upstream connect timeout")
    read_timeout_s: float | None = Field(
        None, description="upstream read timeout (None: wait as long as the client does)"
    )
    max_connections: int = Field(256, ge=1, description="connection pool size toward the upstream")

    # -- reranking -------------------------------------------------------------
    window: int = Field(100, ge=1, description="first-stage hits fetched and reranked per search")
    deadline_ms: float | None = Field(
        2000.0, gt=0, description="reranking past this (ms after the engine answered) is abandoned"
    )
    latency_budget_ms: float | None = Field(
        None, gt=0, description="soft target: rerank only as many hits as fit (status partial)"
    )
    hit_annotation: Literal["fields", "_secondpass", "none"] = Field(
        "fields", description="where each hit keeps its first-stage score and rank"
    )
    indices: dict[str, IndexTextSettings] = Field(
        default_factory=dict, description="index name, alias or pattern -> passage fields"
    )
    default_fields: list[str] = Field(
        default_factory=list, description="passage fields of indices not listed in indices"
    )
    default_template: str | None = Field(None, description="template for default_fields")
    max_search_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="larger search bodies pass through unread"
    )

    # -- the library areas -----------------------------------------------------
    rerank: RerankSettings = Field(default_factory=RerankSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)

    @field_validator("rerank", "cache", mode="before")
    @classmethod
    def _layer_area_env(cls, value: Any, info: Any) -> Any:
        """Build a partial area from a dict so the area's own env vars fill the gaps."""
        if not isinstance(value, dict):
            return value
        area = {"rerank": RerankSettings, "cache": CacheSettings}
        return area[info.field_name](**value)

    @field_validator("upstream")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            msg = "upstream must be an http:// or https:// URL"
            raise ValueError(msg)
        return value.rstrip("/")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            msg = "listen must be HOST:PORT with a port in 0..65535"
            raise ValueError(msg)
        return value

    @field_validator("default_template")
    @classmethod
    def _default_template(cls, value: str | None) -> str | None:
        return _check_template(value)

    @property
    def host(self) -> str:
        """The interface part of ``listen`` (brackets of an IPv6 literal removed)."""
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        """The port part of ``listen``."""
        return int(self.listen.rpartition(":")[2])

    def index_rules(self) -> IndexTextRules:
        """The per-index passage configuration in the form the proxy rules use."""
        default = (
            IndexText("*", tuple(self.default_fields), self.default_template)
            if self.default_fields
            else None
        )
        return IndexTextRules(
            tuple(
                IndexText(name, tuple(cfg.fields), cfg.template)
                for name, cfg in self.indices.items()
            ),
            default,
        )
