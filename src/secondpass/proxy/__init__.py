"""The drop-in ``_search`` proxy: listens like a cluster, forwards everything, reranks searches.

One module per job: :mod:`~secondpass.proxy.app` (the ASGI entry and routing),
:mod:`~secondpass.proxy.plumbing` (pass-through, streaming, header rewrites,
decoding), :mod:`~secondpass.proxy.search` (reranking ``_search``/``_msearch``),
:mod:`~secondpass.proxy.rules` (the pure decisions about a search),
:mod:`~secondpass.proxy.access` (who may do what with lent credentials),
:mod:`~secondpass.proxy.settings` and :mod:`~secondpass.proxy.running` (uvicorn,
:class:`BackgroundProxy`). The rerank HTTP service is :mod:`secondpass.service`.

Example:
    >>> from secondpass.proxy import ProxySettings
    >>> ProxySettings(upstream="http://127.0.0.1:9200").port
    9201
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from secondpass.proxy.app import RerankProxy
    from secondpass.proxy.running import BackgroundProxy, build_proxy, run
    from secondpass.proxy.settings import ProxySettings

__all__ = ["BackgroundProxy", "ProxySettings", "RerankProxy", "build_proxy", "run"]

# Imported on first use: the CLI reads ProxySettings to build its flags for every
# command, and must not pay for httpx, uvicorn and the ASGI app to do so.
_HOMES = {
    "BackgroundProxy": "secondpass.proxy.running",
    "ProxySettings": "secondpass.proxy.settings",
    "RerankProxy": "secondpass.proxy.app",
    "build_proxy": "secondpass.proxy.running",
    "run": "secondpass.proxy.running",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(importlib.import_module(home), name)
