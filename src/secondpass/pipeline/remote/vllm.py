"""vLLM's pooling server: ``POST {url}/rerank`` and ``POST {url}/score``.

From vLLM's "Score API" and "Re-rank API" (docs.vllm.ai, online serving,
``vllm serve MODEL`` with a cross-encoder or a ``--task score`` model):

* ``/rerank`` (Jina/Cohere-compatible): ``{"model", "query", "documents", "top_n"}``
  in, ``{"id", "model", "usage", "results": [{"index", "document", "relevance_score"}]}``
  out;
* ``/score``: ``{"model", "text_1": query, "text_2": [documents]}`` in,
  ``{"id", "object": "list", "model", "data": [{"index", "object": "score", "score"}], "usage"}``
  out.

Both return the model's activated score (a sigmoid for one-label
cross-encoders). vLLM documents no per-request document count (pairs longer
than ``max_model_len`` are refused with HTTP 400 unless the server truncates),
so calls are bounded to :data:`MAX_DOCUMENTS` by us.
"""

from __future__ import annotations

from typing import Any

from secondpass.pipeline.remote.base import JsonRemoteScorer

MAX_DOCUMENTS = 1000
"""Our bound on documents per call."""


def vllm_rerank_body(model: str | None, query: str, documents: list[str]) -> dict[str, Any]:
    """The ``/rerank`` request body; every score comes back (``top_n`` = all)."""
    return {"model": model, "query": query, "documents": documents, "top_n": len(documents)}


def vllm_score_body(model: str | None, query: str, documents: list[str]) -> dict[str, Any]:
    """The ``/score`` request body: one query against a list of documents."""
    return {"model": model, "text_1": query, "text_2": documents}


class VllmRerankScorer(JsonRemoteScorer):
    """Scores through vLLM's ``/rerank`` (``vllm:http://host:8000/MODEL``)."""

    provider = "vllm"
    path = "/rerank"
    max_documents_documented = MAX_DOCUMENTS

    def _body(self, query: str, documents: list[str]) -> dict[str, Any]:
        return vllm_rerank_body(self.model, query, documents)


class VllmScoreScorer(JsonRemoteScorer):
    """Scores through vLLM's ``/score`` (``vllm-score:http://host:8000/MODEL``)."""

    provider = "vllm-score"
    path = "/score"
    results_keys = ("data",)
    score_key = "score"
    max_documents_documented = MAX_DOCUMENTS

    def _body(self, query: str, documents: list[str]) -> dict[str, Any]:
        return vllm_score_body(self.model, query, documents)
