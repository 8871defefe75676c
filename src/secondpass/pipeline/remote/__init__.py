"""Hosted and self-hosted rerank APIs as scorers (Cohere, Jina, Voyage, Mixedbread, TEI, Infinity, vLLM).

Each protocol lives in a small module of its own behind
:class:`~secondpass.pipeline.remote.base.RemoteScorer`; users pick one with a
model reference (see :mod:`secondpass.pipeline.remote.references`) such as
``cohere:rerank-v3.5`` or ``tei:http://host:8080``. Importing this package
imports no HTTP client.
"""

from __future__ import annotations

from secondpass.pipeline.remote.references import (
    PROVIDERS,
    RemoteReference,
    RemoteSettings,
    build_remote_scorer,
    is_remote_reference,
    parse_remote_reference,
)

__all__ = [
    "PROVIDERS",
    "RemoteReference",
    "RemoteSettings",
    "build_remote_scorer",
    "is_remote_reference",
    "parse_remote_reference",
]
