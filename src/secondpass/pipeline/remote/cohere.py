"""Cohere's rerank API through the official SDK (``cohere`` 5.x, ``ClientV2.rerank``).

Why the SDK: it is how Cohere documents the API and it tracks their wire format
(``POST /v2/rerank`` with ``{"model", "query", "documents", "top_n",
"max_tokens_per_doc"}``, answered with ``{"results": [{"index",
"relevance_score"}], "meta"}``). Its own retries are switched off
(``max_retries=0``) so that our one policy decides, and it is given our bounded
httpx client. Limits (docs.cohere.com "Best Practices for using Rerank" and the
SDK's docstring): the API takes up to 10,000 documents but Cohere recommends
no more than 1,000 per request, which is what we send; documents longer than
``max_tokens_per_doc`` (default 4096) are truncated by the API. Any server that
speaks Cohere v2 works too, ``secondpass serve`` included
(``cohere:MODEL@http://host:8080``).
"""

from __future__ import annotations

import math
from typing import Any

from secondpass.errors import MissingDependencyError, RemoteRerankError
from secondpass.pipeline.remote._http import bounded_client, status_error
from secondpass.pipeline.remote.base import RemoteScorer, indexed_scores

MAX_DOCUMENTS = 1000
"""Cohere's recommended maximum documents per request."""


class CohereScorer(RemoteScorer):
    """Scores through Cohere's ``/v2/rerank`` (``cohere:rerank-v3.5``)."""

    provider = "cohere"
    max_documents_documented = MAX_DOCUMENTS

    def _sdk(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    import cohere
                except ImportError as exc:
                    raise MissingDependencyError(package="cohere", extra="remote") from exc
                http = bounded_client(
                    base_url=self.base_url,
                    headers={},
                    limit=self.max_response_bytes,
                    connections=self.max_concurrency,
                    auth=self._url_auth,
                )
                self._client = cohere.ClientV2(
                    api_key=self._api_key or "",
                    base_url=self.base_url,
                    httpx_client=http,
                    client_name="secondpass",
                    log_warning_experimental_features=False,
                )
            return self._client

    def close(self) -> None:
        """Close the SDK's HTTP client and the thread pool; idempotent."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client._client_wrapper.httpx_client.httpx_client.close()
        super().close()

    def _rank(self, query: str, documents: list[str], *, timeout_s: float, what: str) -> list[float]:
        from cohere.core.api_error import ApiError

        options: Any = {"max_retries": 0, "timeout_in_seconds": max(1, math.ceil(timeout_s))}
        try:
            answer = self._sdk().rerank(
                model=self.model or "",
                query=query,
                documents=documents,
                top_n=len(documents),
                request_options=options,
            )
        except ApiError as exc:
            raise status_error(exc.status_code or 0, exc.body, what=what) from None
        except RemoteRerankError:
            raise
        except (TypeError, ValueError, AttributeError, KeyError, RecursionError) as exc:
            # The SDK parses leniently and fails with whatever Python raises on an
            # answer of the wrong shape ({"results": null}, a list, arrays nested too deep).
            msg = f"{what}: the answer does not fit the protocol ({type(exc).__name__})"
            raise RemoteRerankError(msg) from None
        results = getattr(answer, "results", None)
        if not isinstance(results, list):
            msg = f"{what}: the answer carries no results list"
            raise RemoteRerankError(msg)
        items = [
            {
                "index": getattr(r, "index", None),
                "relevance_score": getattr(r, "relevance_score", None),
            }
            for r in results
        ]
        return indexed_scores(items, len(documents), score_key="relevance_score", what=what)
