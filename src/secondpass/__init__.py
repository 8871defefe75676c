"""SecondPass: cross-encoder reranking for existing Elasticsearch and OpenSearch deployments."""

from __future__ import annotations

from secondpass.errors import (
    BackendUnavailableError,
    ConfigurationError,
    ConnectorError,
    MissingDependencyError,
    QueryError,
    RerankError,
    SecondPassError,
)
from secondpass.types import (
    Hit,
    KnnQuery,
    PassageScore,
    RankedHit,
    RerankStatus,
    SearchRequest,
    SearchResult,
)

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "ConfigurationError",
    "ConnectorError",
    "Hit",
    "KnnQuery",
    "MissingDependencyError",
    "PassageScore",
    "QueryError",
    "RankedHit",
    "RerankStatus",
    "RerankError",
    "SearchRequest",
    "SearchResult",
    "SecondPassError",
    "__version__",
]
