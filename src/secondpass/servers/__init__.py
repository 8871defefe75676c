"""Local Elasticsearch, OpenSearch and Redis processes for tests and the demo.

Everything runs on loopback from distributions cached outside the repository
(see :mod:`secondpass.servers.distributions`); versions and JDK choices are recorded in
:mod:`secondpass.servers.versions`. ``python -m secondpass.servers fetch``
prepares the cache; ``python -m secondpass.servers run opensearch`` starts a node
in the foreground.
"""

from __future__ import annotations

from secondpass.servers.distributions import cache_root, engine_home, fetch, fetch_all
from secondpass.servers.engine import LocalEngine
from secondpass.servers.redis_server import LocalRedis
from secondpass.servers.versions import ENGINE_NAMES, ENGINES, EngineSpec

__all__ = [
    "ENGINES",
    "ENGINE_NAMES",
    "EngineSpec",
    "LocalEngine",
    "LocalRedis",
    "cache_root",
    "engine_home",
    "fetch",
    "fetch_all",
]
