"""Everything that speaks to a search engine, and nothing else.

The pipeline sees engines only through the :class:`Connector` and
:class:`AsyncConnector` protocols. Importing this package does not import the
engine clients; each connector imports its client when it is constructed and
names the pip extra to install if it is missing. :func:`read_hits` is the one way
engine search JSON becomes hits, for the connectors and the drop-in proxy alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from secondpass.config import ConnectionSettings
from secondpass.connectors._common import BulkCounts
from secondpass.connectors._validate import validate_index_name
from secondpass.connectors.base import AsyncConnector, Connector
from secondpass.connectors.elasticsearch import AsyncElasticsearchConnector, ElasticsearchConnector
from secondpass.connectors.hits import EngineHits, extract_fields, read_hits
from secondpass.connectors.opensearch import AsyncOpenSearchConnector, OpenSearchConnector

__all__ = [
    "AsyncConnector",
    "AsyncElasticsearchConnector",
    "AsyncOpenSearchConnector",
    "BulkCounts",
    "Connector",
    "ElasticsearchConnector",
    "EngineHits",
    "OpenSearchConnector",
    "connect",
    "extract_fields",
    "read_hits",
    "validate_index_name",
]


def connect(
    *,
    index: str | Sequence[str],
    fields: Sequence[str],
    settings: ConnectionSettings | None = None,
    asynchronous: bool = False,
    **options: Any,
) -> Any:
    """Build the connector that ``settings.engine`` names (env ``SECONDPASS_ENGINE_ENGINE``).

    A service configured entirely from the environment calls this instead of
    choosing a class. ``options`` are the connector's other keyword arguments
    (``text_fields``, ``source_includes``, ``allow_index_patterns``, or any
    connection setting).

    Example:
        >>> connect(index="docs", fields=["body"], settings=ConnectionSettings(engine="elasticsearch"))
        ElasticsearchConnector(index='docs', hosts=['http://127.0.0.1:9200'], auth='none')
    """
    resolved = settings if settings is not None else ConnectionSettings()
    classes: dict[str, tuple[type[Any], type[Any]]] = {
        "elasticsearch": (ElasticsearchConnector, AsyncElasticsearchConnector),
        "opensearch": (OpenSearchConnector, AsyncOpenSearchConnector),
    }
    sync_cls, async_cls = classes[resolved.engine]
    cls = async_cls if asynchronous else sync_cls
    return cls(index=index, fields=fields, settings=resolved, **options)
