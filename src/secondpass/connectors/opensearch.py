"""The OpenSearch connector, on the official ``opensearch-py`` client.

Dense search uses the k-NN plugin's ``knn`` query with its ``filter`` (the
filter is applied inside the graph search), and vector fields are mapped as
``knn_vector`` with an HNSW graph on the Lucene engine. The client's own
retries are off; :mod:`secondpass.connectors._retry` is the only retry layer.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, ClassVar

from secondpass.config import ConnectionSettings
from secondpass.connectors._common import AsyncConnector, SyncConnector, client_options, require
from secondpass.connectors._query import Engine
from secondpass.connectors._retry import error_for_status, unavailable
from secondpass.errors import ConfigurationError, ConnectorError, QueryError
from secondpass.observability.tracing import trace_headers

if TYPE_CHECKING:
    from opensearchpy import AsyncOpenSearch, OpenSearch

__all__ = ["AsyncOpenSearchConnector", "OpenSearchConnector"]


def _require_client() -> Any:
    return require("opensearchpy", package="opensearch-py", extra="opensearch")


def client_kwargs(settings: ConnectionSettings) -> dict[str, Any]:
    """Constructor arguments for ``OpenSearch``/``AsyncOpenSearch`` from our settings."""
    kwargs = client_options(settings, timeout_key="timeout", basic_auth_key="http_auth")
    kwargs["pool_maxsize"] = settings.max_connections  # both connection classes take this name
    return kwargs


def translate_error(exc: BaseException, what: str) -> ConnectorError | None:
    """Map opensearch-py exceptions to ours (retryable or not)."""
    import opensearchpy

    if isinstance(exc, opensearchpy.ConnectionError):
        return unavailable(exc, what=what)  # includes timeouts and TLS errors
    if isinstance(exc, opensearchpy.TransportError) and isinstance(exc.status_code, int):
        return error_for_status(exc.status_code, exc.info, what=what)
    if isinstance(exc, opensearchpy.SerializationError):
        return QueryError(f"{what}: the engine's answer could not be decoded")
    if isinstance(exc, opensearchpy.TransportError):
        return unavailable(exc, what=what)
    return None


class _Timed:
    """Calls client APIs with ``request_timeout`` set, as ``Elasticsearch.options()`` does.

    opensearch-py has no per-call options object; every API method takes
    ``request_timeout`` instead. Namespaces (``client.indices``) are wrapped too.
    """

    __slots__ = ("_headers", "_target", "_timeout_s")

    def __init__(self, target: Any, timeout_s: float, headers: dict[str, str] | None = None) -> None:
        self._target = target
        self._timeout_s = timeout_s
        self._headers = headers

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if callable(attr):
            if self._headers:
                return functools.partial(
                    attr, request_timeout=self._timeout_s, headers=self._headers
                )
            return functools.partial(attr, request_timeout=self._timeout_s)
        return _Timed(attr, self._timeout_s, self._headers)


class _OpenSearchHooks:
    engine: ClassVar[Engine] = "opensearch"

    @staticmethod
    def _check_settings(settings: ConnectionSettings) -> None:
        _require_client()
        if settings.api_key is not None:
            msg = "OpenSearch does not take Elasticsearch API keys; use username and password"
            raise ConfigurationError(msg)

    @staticmethod
    def _api(client: Any, timeout_s: float) -> Any:
        return _Timed(client, timeout_s, trace_headers())

    _translate = staticmethod(translate_error)


class OpenSearchConnector(_OpenSearchHooks, SyncConnector["OpenSearch"]):
    """Fetches first-stage hits from OpenSearch (2.x and 3.x).

    Construction validates the index names and settings and does no I/O; the
    client is created on the first call. Any ``ConnectionSettings`` field may be
    passed as a keyword; fields not passed come from ``SECONDPASS_ENGINE_*``
    environment variables.

    Example:
        >>> c = OpenSearchConnector(index="docs", fields=["title^2", "body"],
        ...                         hosts=["http://127.0.0.1:9200"])
        >>> c
        OpenSearchConnector(index='docs', hosts=['http://127.0.0.1:9200'], auth='none')
    """

    def _new_client(self) -> OpenSearch:
        return _require_client().OpenSearch(**client_kwargs(self.settings))  # type: ignore[no-any-return]

    _bulk_helpers = "opensearchpy.helpers"

    @staticmethod
    def _bulk_target(client: Any, timeout_s: float) -> tuple[Any, dict[str, Any]]:
        return client, {"request_timeout": timeout_s}


class AsyncOpenSearchConnector(_OpenSearchHooks, AsyncConnector["AsyncOpenSearch"]):
    """The asyncio variant of :class:`OpenSearchConnector` (``search`` and ``close``)."""

    def _new_client(self) -> AsyncOpenSearch:
        return _require_client().AsyncOpenSearch(**client_kwargs(self.settings))  # type: ignore[no-any-return]
