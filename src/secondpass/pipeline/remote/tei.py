"""Hugging Face text-embeddings-inference: ``POST {url}/rerank``.

TEI's OpenAPI (``/docs`` of a running router; huggingface.github.io/text-embeddings-inference):
``{"query", "texts", "raw_scores", "truncate", "truncation_direction", "return_text"}``
in, ``[{"index", "score", "text"?}]`` out. A router refuses more texts than its
``--max-client-batch-size`` (default 32) with HTTP 413/422, so calls carry at
most :data:`MAX_DOCUMENTS`; raise ``SECONDPASS_REMOTE_MAX_DOCUMENTS`` to match
a router started with a larger batch. We ask for ``raw_scores`` (logits) and
normalise with a sigmoid, as local cross-encoder scores are, and for
``truncate`` so an over-long text is cut to the model's window instead of
failing the whole call. ``secondpass serve`` answers this shape too.
"""

from __future__ import annotations

from typing import Any

from secondpass.pipeline.remote.base import JsonRemoteScorer

MAX_DOCUMENTS = 32
"""TEI's default ``--max-client-batch-size``."""


def tei_body(query: str, documents: list[str]) -> dict[str, Any]:
    """The request body: logits, cut to the model's window."""
    return {"query": query, "texts": documents, "raw_scores": True, "truncate": True}


class TeiScorer(JsonRemoteScorer):
    """Scores through a TEI router's ``/rerank`` (``tei:http://host:8080``)."""

    provider = "tei"
    path = "/rerank"
    results_keys = ()
    score_key = "score"
    max_documents_documented = MAX_DOCUMENTS
    scores_are_logits = True

    def _score_settings(self) -> str:
        return "raw_scores"

    def _body(self, query: str, documents: list[str]) -> dict[str, Any]:
        return tei_body(query, documents)
