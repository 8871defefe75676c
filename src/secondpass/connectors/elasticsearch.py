"""The Elasticsearch connector, on the official ``elasticsearch`` client.

The 9.x client marks every request with ``compatible-with=9`` media types, which
an 8.x server refuses ("Invalid media-type value on headers"). The connector
therefore rewrites the media types at the transport: to plain
``application/json`` by default (accepted by 8.x and 9.x servers alike), or to
a pinned ``compatible-with=N`` when ``ConnectionSettings.compatible_with`` is
set. The client's own retries are off; :mod:`secondpass.connectors._retry` is
the only retry layer.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

from secondpass.config import ConnectionSettings
from secondpass.connectors._common import AsyncConnector, SyncConnector, client_options, require
from secondpass.connectors._query import Engine
from secondpass.connectors._retry import error_for_status, unavailable
from secondpass.errors import ConnectorError, QueryError
from secondpass.observability.tracing import trace_headers

if TYPE_CHECKING:
    from elasticsearch import AsyncElasticsearch, Elasticsearch

__all__ = ["AsyncElasticsearchConnector", "ElasticsearchConnector"]

_VENDOR_MEDIA = re.compile(r"application/vnd\.elasticsearch\+([\w.-]+)\s*;\s*compatible-with=\d+")


def _require_client() -> Any:
    return require("elasticsearch", package="elasticsearch", extra="elasticsearch")


def rewrite_media_types(headers: Any, compatible_with: int | None) -> Any:
    """Return headers whose Accept/Content-Type match what the server version accepts."""
    if not isinstance(headers, dict) and not hasattr(headers, "copy"):
        return headers  # the transport's DEFAULT sentinel
    replacement = (
        r"application/\1"
        if compatible_with is None
        else rf"application/vnd.elasticsearch+\1; compatible-with={compatible_with}"
    )
    out = headers.copy()
    for name in ("accept", "content-type"):
        value = out.get(name)
        if isinstance(value, str):
            out[name] = _VENDOR_MEDIA.sub(replacement, value)
    return out


def _transport_classes(compatible_with: int | None) -> tuple[type, type]:
    from elastic_transport import AsyncTransport, Transport

    class _MediaTypeTransport(Transport):
        def perform_request(self, method: str, target: str, **kwargs: Any) -> Any:  # type: ignore[override]
            kwargs["headers"] = rewrite_media_types(kwargs.get("headers"), compatible_with)
            return super().perform_request(method, target, **kwargs)

    class _AsyncMediaTypeTransport(AsyncTransport):
        async def perform_request(self, method: str, target: str, **kwargs: Any) -> Any:  # type: ignore[override]
            kwargs["headers"] = rewrite_media_types(kwargs.get("headers"), compatible_with)
            return await super().perform_request(method, target, **kwargs)

    return _MediaTypeTransport, _AsyncMediaTypeTransport


def client_kwargs(settings: ConnectionSettings, *, asynchronous: bool = False) -> dict[str, Any]:
    """Constructor arguments for ``Elasticsearch``/``AsyncElasticsearch`` from our settings."""
    sync_cls, async_cls = _transport_classes(settings.compatible_with)
    kwargs = client_options(settings, timeout_key="request_timeout", basic_auth_key="basic_auth")
    kwargs["transport_class"] = async_cls if asynchronous else sync_cls
    kwargs["connections_per_node"] = settings.max_connections
    if settings.api_key is not None:
        kwargs["api_key"] = settings.api_key.get_secret_value()
    return kwargs


def translate_error(exc: BaseException, what: str) -> ConnectorError | None:
    """Map elasticsearch/elastic_transport exceptions to ours (retryable or not)."""
    import elastic_transport
    from elasticsearch import ApiError

    if isinstance(exc, ApiError):
        return error_for_status(exc.meta.status, exc.body, what=what)
    if isinstance(exc, elastic_transport.SerializationError):
        return QueryError(f"{what}: the engine's answer could not be decoded")
    if isinstance(exc, elastic_transport.TransportError):
        return unavailable(exc, what=what)  # connection errors, TLS errors, timeouts
    return None


class _ElasticsearchHooks:
    engine: ClassVar[Engine] = "elasticsearch"

    @staticmethod
    def _check_settings(settings: ConnectionSettings) -> None:
        _require_client()

    @staticmethod
    def _api(client: Any, timeout_s: float) -> Any:
        headers = trace_headers()
        if headers:
            return client.options(request_timeout=timeout_s, headers=headers)
        return client.options(request_timeout=timeout_s)

    _translate = staticmethod(translate_error)


class ElasticsearchConnector(_ElasticsearchHooks, SyncConnector["Elasticsearch"]):
    """Fetches first-stage hits from Elasticsearch (8.x or 9.x servers).

    Construction validates the index names and settings and does no I/O; the
    client is created on the first call. Any ``ConnectionSettings`` field may be
    passed as a keyword (``hosts``, ``username``, ``password``, ``api_key``,
    ``ca_certs``, ``request_timeout_s``, ``deadline_s``, ...); fields not passed
    come from ``SECONDPASS_ENGINE_*`` environment variables.

    Example:
        >>> c = ElasticsearchConnector(index="docs", fields=["title^2", "body"],
        ...                            hosts=["http://127.0.0.1:9200"])
        >>> c.text_fields
        ('title', 'body')
    """

    def _new_client(self) -> Elasticsearch:
        return _require_client().Elasticsearch(**client_kwargs(self.settings))  # type: ignore[no-any-return]

    _bulk_helpers = "elasticsearch.helpers"

    @staticmethod
    def _bulk_target(client: Any, timeout_s: float) -> tuple[Any, dict[str, Any]]:
        return client.options(request_timeout=timeout_s), {}


class AsyncElasticsearchConnector(_ElasticsearchHooks, AsyncConnector["AsyncElasticsearch"]):
    """The asyncio variant of :class:`ElasticsearchConnector` (``search`` and ``close``).

    Example:
        >>> c = AsyncElasticsearchConnector(index="docs", fields=["body"])
        >>> c.indices
        ('docs',)
    """

    def _new_client(self) -> AsyncElasticsearch:
        module = _require_client()
        return module.AsyncElasticsearch(**client_kwargs(self.settings, asynchronous=True))  # type: ignore[no-any-return]
