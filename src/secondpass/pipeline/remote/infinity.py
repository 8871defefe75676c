"""Infinity (michaelfeil/infinity): ``POST {url}/rerank``.

Infinity's OpenAPI (``/docs`` of a running server): a Cohere-like
``{"query", "documents", "model", "return_documents", "top_n"}`` in,
``{"object": "rerank", "results": [{"index", "relevance_score", "document"?}],
"model", "usage", "id", "created"}`` out (some releases name the list ``data``;
both are read). Infinity documents no per-request document count
(its ``--batch-size`` is internal batching), so calls are bounded to
:data:`MAX_DOCUMENTS` by us (``SECONDPASS_REMOTE_MAX_DOCUMENTS``).
"""

from __future__ import annotations

from typing import Any

from secondpass.pipeline.remote.base import JsonRemoteScorer

MAX_DOCUMENTS = 1000
"""Our bound on documents per call."""


def infinity_body(model: str | None, query: str, documents: list[str]) -> dict[str, Any]:
    """The request body; ``model`` only when named (a one-model server needs none)."""
    body: dict[str, Any] = {
        "query": query,
        "documents": documents,
        "return_documents": False,
        "top_n": len(documents),
    }
    if model is not None:
        body["model"] = model
    return body


class InfinityScorer(JsonRemoteScorer):
    """Scores through Infinity's ``/rerank`` (``infinity:http://host:7997/MODEL``)."""

    provider = "infinity"
    path = "/rerank"
    results_keys = ("results", "data")
    max_documents_documented = MAX_DOCUMENTS

    def _body(self, query: str, documents: list[str]) -> dict[str, Any]:
        return infinity_body(self.model, query, documents)
