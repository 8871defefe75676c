"""Jina AI's rerank API: ``POST https://api.jina.ai/v1/rerank``.

Request and answer as documented at https://jina.ai/reranker (API section):
``{"model", "query", "documents", "top_n", "return_documents"}`` in,
``{"results": [{"index", "relevance_score", "document"?}], "usage"}`` out, with
``relevance_score`` in [0, 1]. Jina documents no per-request document count;
its models read 1024 tokens per pair (jina-reranker-v2, longer text is cut by
the API), so we bound calls to :data:`MAX_DOCUMENTS` documents ourselves
(``SECONDPASS_REMOTE_MAX_DOCUMENTS`` changes it).
"""

from __future__ import annotations

from typing import Any

from secondpass.pipeline.remote.base import JsonRemoteScorer

MAX_DOCUMENTS = 1000
"""Our bound on documents per call (Jina documents none)."""


def jina_body(model: str | None, query: str, documents: list[str]) -> dict[str, Any]:
    """The documented request body; every score comes back (``top_n`` = all), no texts."""
    return {
        "model": model,
        "query": query,
        "documents": documents,
        "top_n": len(documents),
        "return_documents": False,
    }


class JinaScorer(JsonRemoteScorer):
    """Scores through Jina's ``/v1/rerank`` (``jina:jina-reranker-v2-base-multilingual``)."""

    provider = "jina"
    path = "/v1/rerank"
    max_documents_documented = MAX_DOCUMENTS

    def _body(self, query: str, documents: list[str]) -> dict[str, Any]:
        return jina_body(self.model, query, documents)
