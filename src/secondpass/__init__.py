"""SecondPass: cross-encoder reranking for existing Elasticsearch and OpenSearch deployments.

The names below are the public API. Importing them is cheap: torch, the engine
clients and redis load only when a model, a connector or a Redis cache is first
used. Engine connectors live in :mod:`secondpass.connectors` (they need the
``elasticsearch`` or ``opensearch`` extra).

Example:
    >>> from secondpass import Retriever, CrossEncoderScorer  # doctest: +SKIP
    >>> from secondpass.connectors import OpenSearchConnector  # doctest: +SKIP
    >>> retriever = Retriever(  # doctest: +SKIP
    ...     connector=OpenSearchConnector(hosts="http://127.0.0.1:9200", index="docs"),
    ...     scorer=CrossEncoderScorer(),
    ... )
    >>> retriever.search("what do cats eat", k=10).hits  # doctest: +SKIP
"""

from __future__ import annotations

from secondpass.errors import (
    BackendUnavailableError,
    CircuitOpenError,
    ConfigurationError,
    ConnectorError,
    InvalidIndexNameError,
    MissingDependencyError,
    ModelLoadError,
    OverloadedError,
    QueryError,
    RefusedQueryError,
    RemoteRerankError,
    RemoteRerankUnavailableError,
    RerankError,
    ScoringDeadlineError,
    ScoringUnavailableError,
    SearchDeadlineError,
    SecondPassError,
    ServerStartError,
)
from secondpass.pipeline.breaker import CircuitBreaker
from secondpass.pipeline.cache import LRUScoreCache, NullScoreCache, RedisScoreCache, build_cache
from secondpass.pipeline.engine import EngineResult, ScoringEngine
from secondpass.pipeline.first_stage import HybridStage, LexicalStage
from secondpass.pipeline.fusion import linear_fusion, reciprocal_rank_fusion
from secondpass.pipeline.passages import PassageTemplate
from secondpass.pipeline.protocols import DenseEncoder, ScoreCache, Scorer
from secondpass.pipeline.remote import RemoteSettings, build_remote_scorer
from secondpass.pipeline.retriever import Retriever
from secondpass.pipeline.scorer import CrossEncoderScorer
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
    "CircuitBreaker",
    "CircuitOpenError",
    "ConfigurationError",
    "ConnectorError",
    "CrossEncoderScorer",
    "DenseEncoder",
    "EngineResult",
    "Hit",
    "HybridStage",
    "InvalidIndexNameError",
    "KnnQuery",
    "LRUScoreCache",
    "LexicalStage",
    "MissingDependencyError",
    "ModelLoadError",
    "NullScoreCache",
    "OverloadedError",
    "PassageScore",
    "PassageTemplate",
    "QueryError",
    "RankedHit",
    "RedisScoreCache",
    "RefusedQueryError",
    "RemoteRerankError",
    "RemoteRerankUnavailableError",
    "RemoteSettings",
    "RerankError",
    "RerankStatus",
    "Retriever",
    "ScoreCache",
    "Scorer",
    "ScoringDeadlineError",
    "ScoringEngine",
    "ScoringUnavailableError",
    "SearchDeadlineError",
    "SearchRequest",
    "SearchResult",
    "SecondPassError",
    "ServerStartError",
    "__version__",
    "build_cache",
    "build_remote_scorer",
    "linear_fusion",
    "reciprocal_rank_fusion",
]
