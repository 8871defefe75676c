"""Settings of the drop-in proxy, from CLI flags, environment variables or a config file.

Precedence, highest first: ``secondpass proxy`` flags, ``SECONDPASS_PROXY_*``
variables (nested values as JSON, e.g. ``SECONDPASS_PROXY_INDICES='{"docs":
{"fields": ["title", "body"]}}'``, or with ``__`` for the library areas, e.g.
``SECONDPASS_PROXY_RERANK__DEVICE=cpu``), the config file (``--config``; TOML,
JSON or YAML), then each library area's own variables (``SECONDPASS_RERANK_*``,
``SECONDPASS_CACHE_*``) and the defaults.

Credentials are never lent by default: the proxy forwards the client's own
``Authorization`` (and every other header) and adds none. Credentials configured
for the upstream (``username``/``password``, ``api_key``, or userinfo in
``upstream``, which is moved out of the URL so no logged URL carries it) make
every client that reaches the proxy act with their authority, so they are only
accepted together with ``lend_credentials=True``, and then the proxy lends them
only to requests on ``allowed_requests`` (read-only searching by default) from
clients holding one of ``client_api_keys`` / ``client_api_key_file``. Lending
without client keys is refused unless the proxy listens on loopback only. Client
keys can also be required without lending anything. :meth:`ProxySettings.access_gate`
applies these rules; the proxy calls it before it serves.

Example:
    >>> s = ProxySettings(upstream="http://127.0.0.1:9200",
    ...                   indices={"docs": {"fields": ["title", "body"]}})
    >>> (s.host, s.port, s.index_rules().resolve("docs").fields)
    ('127.0.0.1', 9201, ('title', 'body'))
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from secondpass.config import CacheSettings, RerankSettings, ScoringEngineSettings
from secondpass.errors import ConfigurationError
from secondpass.pipeline.passages import check_template
from secondpass.pipeline.rollout import RolloutSettings
from secondpass.proxy.access import (
    DEFAULT_ALLOWED_REQUESTS,
    AccessGate,
    AllowList,
    parse_rule,
)
from secondpass.proxy.rules import IndexText, IndexTextRules
from secondpass.service.auth import ApiKeys
from secondpass.service.settings_files import FileBackedSettings

if TYPE_CHECKING:
    from secondpass.service.http_limits import HttpLimits

CONFIG_FILE_ENV = "SECONDPASS_PROXY_CONFIG_FILE"


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
        """Allow only plain field names, as every front-end does (no ``{a.__class__}``)."""
        check_template(value)  # a ConfigurationError is a ValueError: pydantic reports it
        return value


class ProxySettings(FileBackedSettings, ScoringEngineSettings, RolloutSettings):
    """Everything ``secondpass proxy`` needs (env prefix ``SECONDPASS_PROXY_``)."""

    config_file_env: ClassVar[str] = CONFIG_FILE_ENV
    settings_name: ClassVar[str] = "proxy"

    model_config = SettingsConfigDict(env_prefix="SECONDPASS_PROXY_")

    # -- where to listen, where to forward ------------------------------------
    upstream: str = Field("http://127.0.0.1:9200", description="the real cluster's base URL")
    listen: str = Field("127.0.0.1:9201", description="HOST:PORT to listen on (port 0: any free)")
    publish_address: str | None = Field(
        None,
        description="HOST:PORT clients are told to use in node-discovery (sniffing) answers, "
        "e.g. a load balancer in front of the proxy (None: the address the client reached)",
    )
    ssl_certfile: str | None = Field(None, description="serve HTTPS with this certificate")
    ssl_keyfile: str | None = Field(None, description="private key of ssl_certfile")
    log_level: str = Field("info", description="uvicorn log level")
    access_log: bool = Field(False, description="log one line per request")

    # -- who may act, with whose credentials ------------------------------------
    client_api_keys: list[SecretStr] = Field(
        default_factory=list, description="API keys clients must present to the proxy"
    )
    client_api_key_file: str | None = Field(
        None, description="file of client API keys, one 'KEY' or 'NAME KEY' per line"
    )
    lend_credentials: bool = Field(
        False,
        description="send the configured upstream credentials on allowed requests "
        "(off: clients act with their own Authorization only)",
    )
    allowed_requests: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ALLOWED_REQUESTS),
        description="'METHODS /path' rules ({index} for an index) for lent credentials",
    )

    # -- toward the upstream ---------------------------------------------------
    username: str | None = Field(None, description="basic auth user (needs lend_credentials)")
    password: SecretStr | None = Field(None, description="basic auth password")
    api_key: SecretStr | None = Field(
        None, description="API key (base64 id:key) (needs lend_credentials)"
    )
    verify_certs: bool = Field(True, description="verify the upstream's TLS certificate")
    ca_certs: str | None = Field(None, description="CA bundle for the upstream's certificate")
    client_cert: str | None = Field(None, description="client certificate for mutual TLS")
    client_key: str | None = Field(None, description="private key of client_cert")
    connect_timeout_s: float = Field(10.0, gt=0, description="upstream connect timeout")
    read_timeout_s: float | None = Field(
        None,
        description=(
            "bound on a reranked search's engine call, counted from the request's arrival: "
            "the time left is the httpx timeout and the search body's own timeout; 504 when it "
            "runs out (pass-through calls: per-read timeout; None: wait as long as the client does)"
        ),
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
        1024 * 1024,
        ge=1024,
        description="larger search bodies pass through unread (parsing and rewriting one costs "
        "about 10x its size in memory)",
    )
    max_msearch_reranked: int = Field(
        20,
        ge=0,
        description="most searches of one _msearch that are reranked; the rest are answered "
        "in engine order (skipped)",
    )

    # -- bounded input (docs/proxy.md#limits) ------------------------------------
    max_body_bytes: int = Field(
        100 * 1024 * 1024, ge=1024, description="largest request body of any kind (413 above it)"
    )
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="largest request head in bytes (431 above it)"
    )
    max_headers: int = Field(100, ge=8, description="most request headers (431 above it)")
    max_json_depth: int = Field(
        128, ge=2, description="deepest JSON nesting of a search body, checked before parsing (400)"
    )
    max_decompressed_bytes: int | None = Field(
        None, ge=1024, description="largest decoded search body (None: max_search_body_bytes)"
    )
    max_compression_ratio: float = Field(
        100.0, ge=1, description="largest decoded/encoded size ratio of a search body (413)"
    )
    body_idle_timeout_s: float = Field(
        10.0, gt=0, description="longest pause while a request body arrives (408)"
    )
    body_total_timeout_s: float = Field(
        60.0, gt=0, description="longest a whole request body may take to arrive (408)"
    )
    head_timeout_s: float = Field(
        10.0,
        gt=0,
        description="longest a request head (request line and headers) may take to arrive; "
        "the connection is closed (slow-header clients)",
    )
    max_client_connections: int = Field(
        1024,
        ge=1,
        description="most open client connections; more are answered 503 and closed",
    )
    pool_timeout_s: float = Field(
        5.0, gt=0, description="longest wait for a free upstream connection (503)"
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

    @field_validator("allowed_requests")
    @classmethod
    def _rules(cls, value: list[str]) -> list[str]:
        for text in value:
            parse_rule(text)
        return value

    @model_validator(mode="after")
    def _userinfo_to_credentials(self) -> ProxySettings:
        """Move ``user:password@`` out of ``upstream`` so no URL we log or pass on carries it."""
        scheme, sep, rest = self.upstream.partition("://")
        end = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
        authority, path = rest[:end], rest[end:]
        userinfo, at, hostport = authority.rpartition("@")
        if not at:
            return self
        user, colon, password = userinfo.partition(":")
        if self.username is not None or self.password is not None or self.api_key is not None:
            msg = "give the upstream credentials once: in upstream or in username/password/api_key"
            raise ValueError(msg)
        if not hostport:
            msg = "upstream has credentials but no host"
            raise ValueError(msg)
        self.upstream = f"{scheme}{sep}{hostport}{path}"
        self.username = unquote(user) or None
        self.password = SecretStr(unquote(password)) if colon else None
        return self

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            msg = "listen must be HOST:PORT with a port in 0..65535"
            raise ValueError(msg)
        return value

    @field_validator("publish_address")
    @classmethod
    def _published_host_port(cls, value: str | None) -> str | None:
        """A sniffing client splits it at the last ``:``: anything else would lose it."""
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if (
            not sep
            or not host
            or not port.isdigit()
            or not 1 <= int(port) <= 65535
            or any(c.isspace() or c in "/?#@," for c in host)
        ):
            msg = "publish_address must be HOST:PORT with a port in 1..65535, e.g. lb.example:9200"
            raise ValueError(msg)
        return value

    @field_validator("default_template")
    @classmethod
    def _default_template(cls, value: str | None) -> str | None:
        check_template(value)
        return value

    @property
    def host(self) -> str:
        """The interface part of ``listen`` (brackets of an IPv6 literal removed)."""
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        """The port part of ``listen``."""
        return int(self.listen.rpartition(":")[2])

    @property
    def listens_on_loopback(self) -> bool:
        """Whether only this machine can reach the proxy (``127.0.0.0/8``, ``::1``, ``localhost``)."""
        host = self.host
        if host.lower() == "localhost":
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False  # a host name: it may resolve to anything
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback

    @property
    def has_upstream_credentials(self) -> bool:
        """Whether credentials for the upstream are configured (lent only with ``lend_credentials``)."""
        return self.username is not None or self.password is not None or self.api_key is not None

    def access_gate(self) -> AccessGate | None:
        """Check who may act with whose credentials, and build the gate that enforces it.

        Reads ``client_api_key_file``. Returns ``None`` when every request passes
        with the client's own credentials (no client keys, nothing lent). Raises
        :class:`~secondpass.errors.ConfigurationError` for credentials without
        ``lend_credentials``, ``lend_credentials`` without credentials, both
        ``username`` and ``api_key``, and lending on a non-loopback address
        without client keys.
        """
        if self.has_upstream_credentials and not self.lend_credentials:
            msg = (
                "upstream credentials are configured but lend_credentials is off: every client "
                "of the proxy would act with them. Either remove them (clients then send their "
                "own Authorization, which the proxy forwards), or set lend_credentials=true "
                "(--lend-credentials) together with client_api_keys or client_api_key_file"
            )
            raise ConfigurationError(msg)
        if self.lend_credentials and not self.has_upstream_credentials:
            msg = "lend_credentials is on but no username/password or api_key is configured"
            raise ConfigurationError(msg)
        if self.api_key is not None and (self.username is not None or self.password is not None):
            msg = "configure either username/password or api_key for the upstream, not both"
            raise ConfigurationError(msg)
        keys = ApiKeys.from_sources(self.client_api_keys, self.client_api_key_file)
        if self.lend_credentials and not keys and not self.listens_on_loopback:
            msg = (
                f"lend_credentials on a non-loopback listen address ({self.host}) needs client "
                "authentication: set client_api_keys or client_api_key_file, or listen on 127.0.0.1"
            )
            raise ConfigurationError(msg)
        if not keys and not self.lend_credentials:
            return None
        allow = AllowList.from_rules(self.allowed_requests) if self.lend_credentials else None
        return AccessGate(keys=keys, allow=allow)

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

    def http_limits(self) -> HttpLimits:
        """The input limits the proxy enforces.

        ``max_body_bytes`` bounds every request it forwards, while the decoded-size
        cap defaults to ``max_search_body_bytes`` (the most the proxy ever decodes
        is one search body).
        """
        from secondpass.service.http_limits import HttpLimits  # uvicorn/h11: not for the CLI

        decoded = self.max_decompressed_bytes
        return dataclasses.replace(
            HttpLimits.from_settings(self),
            max_decompressed_bytes=self.max_search_body_bytes if decoded is None else decoded,
            max_compression_ratio=self.max_compression_ratio,
        )
