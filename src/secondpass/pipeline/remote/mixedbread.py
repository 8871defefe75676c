"""Mixedbread's reranking API: ``POST https://api.mixedbread.com/v1/reranking``.

As documented at https://mixedbread.com/api-reference/endpoints/reranking:
``{"model", "query", "input", "top_k", "return_input"}`` in (``input`` may
also hold objects with ``rank_fields``; we send strings),
``{"object": "list", "data": [{"index", "score", "input"?}], "model", "usage"}``
out. Documents over the model's token limit are truncated by the API
(documented). No per-request document count is documented there, so calls are
bounded to :data:`MAX_DOCUMENTS` by us (``SECONDPASS_REMOTE_MAX_DOCUMENTS``).
"""

from __future__ import annotations

from typing import Any

from secondpass.pipeline.remote.base import JsonRemoteScorer

MAX_DOCUMENTS = 1000
"""Our bound on documents per call."""


def mixedbread_body(model: str | None, query: str, documents: list[str]) -> dict[str, Any]:
    """The documented request body; every score comes back (``top_k`` = all), no texts."""
    return {
        "model": model,
        "query": query,
        "input": documents,
        "top_k": len(documents),
        "return_input": False,
    }


class MixedbreadScorer(JsonRemoteScorer):
    """Scores through Mixedbread's ``/v1/reranking`` (``mixedbread:mixedbread-ai/mxbai-rerank-large-v2``)."""

    provider = "mixedbread"
    path = "/v1/reranking"
    results_keys = ("data",)
    score_key = "score"
    max_documents_documented = MAX_DOCUMENTS

    def _body(self, query: str, documents: list[str]) -> dict[str, Any]:
        return mixedbread_body(self.model, query, documents)
