"""Voyage AI's rerank API: ``POST https://api.voyageai.com/v1/rerank``.

As documented in Voyage's reranker API reference (docs.voyageai.com/reference/reranker-api):
``{"query", "documents", "model", "top_k", "truncation"}`` in,
``{"object": "list", "data": [{"index", "relevance_score"}], "model", "usage"}``
out. At most 1000 documents per request (documented); with ``truncation``
true (the default, sent explicitly here) over-long query/document pairs are
cut to the model's context (e.g. 32,000 tokens for rerank-2.5, 16,000 for
rerank-2) instead of failing. Its total-token cap per request (query tokens x
documents + document tokens) is enforced by the API with HTTP 400, which we
report, not retry; lower ``SECONDPASS_REMOTE_MAX_DOCUMENTS`` if you hit it.
"""

from __future__ import annotations

from typing import Any

from secondpass.pipeline.remote.base import JsonRemoteScorer

MAX_DOCUMENTS = 1000
"""Voyage's documented limit on documents per request."""


def voyage_body(model: str | None, query: str, documents: list[str]) -> dict[str, Any]:
    """The documented request body; every score comes back (``top_k`` = all)."""
    return {
        "query": query,
        "documents": documents,
        "model": model,
        "top_k": len(documents),
        "truncation": True,
    }


class VoyageScorer(JsonRemoteScorer):
    """Scores through Voyage's ``/v1/rerank`` (``voyage:rerank-2.5``)."""

    provider = "voyage"
    path = "/v1/rerank"
    results_keys = ("data",)
    max_documents_documented = MAX_DOCUMENTS

    def _body(self, query: str, documents: list[str]) -> dict[str, Any]:
        return voyage_body(self.model, query, documents)
