"""What every remote scorer shares: splitting, concurrency, retries, errors, secrets.

A :class:`RemoteScorer` is a :class:`~secondpass.pipeline.protocols.Scorer`
whose forward pass is an HTTP call, so it plugs into the
:class:`~secondpass.pipeline.engine.ScoringEngine` like a local model and gets
the same cache (keyed on :attr:`RemoteScorer.fingerprint`: protocol, model and
API address, never the key), deadlines, breaker and statuses.

Within one ``score_pairs`` call the pairs are grouped by query, each group is
cut into calls of at most ``max_documents`` (the provider's documented limit),
and the calls run at most ``max_concurrency`` at a time; scores are put back in
input order by the index each API returns. Every call goes through the
project's one retry layer (:class:`~secondpass.connectors._retry.RetryPolicy`:
connection errors, timeouts and HTTP 429/502/503/504 are retried with jittered
backoff under a deadline; nothing else is). The pipeline importing that module
is deliberate: the policy is engine-neutral, importing ``secondpass.connectors``
loads no engine client, and a second retry loop is what the policy exists to
prevent. The SDKs' and transports' own retries are switched off.

What the caller sees is ours: :class:`~secondpass.errors.RemoteRerankError`
(refused, not retried) or :class:`~secondpass.errors.RemoteRerankUnavailableError`
(retries spent), chained to the cause. The API key is sent in a header only: it
is not in ``repr``, the fingerprint, messages or logs (it is also registered
with the log redactor).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit, urlunsplit

from secondpass.connectors._retry import RetryPolicy, unavailable
from secondpass.errors import (
    BackendUnavailableError,
    ConfigurationError,
    ConnectorError,
    QueryError,
    RemoteRerankError,
    RemoteRerankUnavailableError,
)
from secondpass.pipeline.protocols import Scorer
from secondpass.pipeline.remote.references import RemoteSettings
from secondpass.redaction import register_secret
from secondpass.types import EMPTY_PASSAGE_RAW_SCORE, PassageScore

__all__ = ["JsonRemoteScorer", "RemoteScorer", "indexed_scores", "scorer_class"]


def _sigmoid(value: float) -> float:
    if value >= 0:
        return 1.0 / (1.0 + math.exp(-value))
    z = math.exp(value)
    return z / (1.0 + z)


def indexed_scores(items: Any, count: int, *, score_key: str, what: str) -> list[float]:
    """Scores in input order from a list of ``{"index": i, score_key: s}``; strict.

    Every index in ``0..count-1`` must appear exactly once with a finite number:
    an API that drops, repeats or invents a document is an error, never a
    silently shifted ranking.
    """
    if not isinstance(items, list) or len(items) != count:
        got = len(items) if isinstance(items, list) else type(items).__name__
        msg = f"{what}: expected {count} scored documents, got {got}"
        raise RemoteRerankError(msg)
    scores: list[float | None] = [None] * count
    for item in items:
        index = item.get("index") if isinstance(item, Mapping) else None
        value = item.get(score_key) if isinstance(item, Mapping) else None
        if (
            not isinstance(index, int)
            or isinstance(index, bool)
            or not 0 <= index < count
            or scores[index] is not None
            or not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            msg = f"{what}: malformed result {str(item)[:120]!r}"
            raise RemoteRerankError(msg)
        scores[index] = float(value)
    return [s for s in scores if s is not None]


class RemoteScorer(Scorer):
    """Base of the remote scorers; a subclass implements :meth:`_rank` for one protocol.

    Keyword-only and free of I/O: the HTTP client and the thread pool are made on
    first use. ``model`` may be ``None`` where the server hosts one model (TEI).

    Example:
        >>> from secondpass.pipeline.remote.tei import TeiScorer
        >>> scorer = TeiScorer(model=None, base_url="http://127.0.0.1:8080", api_key="k")
        >>> scorer.fingerprint
        'remote|tei|-|http://127.0.0.1:8080|raw_scores'
        >>> "k'" in repr(scorer)
        False
    """

    provider: ClassVar[str]
    max_documents_documented: ClassVar[int]
    """Documents per call the provider documents (or our bound, where it documents none)."""
    scores_are_logits: ClassVar[bool] = False
    """True when the API returns logits (normalised here with a sigmoid), else [0, 1] scores."""

    def __init__(
        self,
        *,
        model: str | None,
        base_url: str,
        api_key: str | None = None,
        settings: RemoteSettings | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        resolved = RemoteSettings() if settings is None else settings
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            msg = f"base_url must be an http(s) URL, got {_public(base_url)!r}"
            raise ConfigurationError(msg)
        self.model = model
        # URL credentials travel as a Basic auth header, never in the URL: httpx logs
        # every request's URL (INFO "HTTP Request: POST http://user:pw@host/..."), and a
        # handler the operator adds (or caplog) sees the record unredacted.
        self._url_auth = (
            (unquote(parts.username or ""), unquote(parts.password or ""))
            if parts.username is not None or parts.password is not None
            else None
        )
        if self._url_auth is not None and self._url_auth[1]:
            register_secret(self._url_auth[1])
        self.base_url = _public(base_url) if self._url_auth is not None else base_url.rstrip("/")
        self.max_documents = (
            self.max_documents_documented
            if resolved.max_documents is None
            else resolved.max_documents
        )
        self.max_concurrency = resolved.max_concurrency
        self.max_response_bytes = resolved.max_response_bytes
        self.retry = (
            RetryPolicy(
                max_attempts=resolved.max_attempts,
                deadline_s=resolved.deadline_s,
                request_timeout_s=resolved.timeout_s,
            )
            if retry is None
            else retry
        )
        self._api_key = api_key or None
        if self._api_key is not None:
            register_secret(self._api_key)
        self._lock = threading.Lock()
        self._client: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self.calls = 0  # HTTP calls attempted; tests and benchmarks read it

    # ------------------------------------------------------------------ identity

    @property
    def fingerprint(self) -> str:
        """Protocol, model, API address (no credentials) and score-changing settings."""
        parts = ["remote", self.provider, self.model or "-", _public(self.base_url)]
        settings = self._score_settings()
        if settings:
            parts.append(settings)
        return "|".join(parts)

    @property
    def backend(self) -> str:
        """What runs the model, for ``build_info`` metrics and logs: ``remote-<protocol>``."""
        return f"remote-{self.provider}"

    @property
    def device(self) -> str:
        """Where the model runs, as far as we can tell: the API's address (no credentials)."""
        return _public(self.base_url)

    def _score_settings(self) -> str:
        """Request settings that change scores (e.g. ``raw_scores``); empty when none."""
        return ""

    def __repr__(self) -> str:
        auth = "api-key" if self._api_key else "none"
        return (
            f"{type(self).__name__}(model={self.model!r}, base_url={_public(self.base_url)!r}, "
            f"max_documents={self.max_documents}, max_concurrency={self.max_concurrency}, "
            f"auth={auth!r})"
        )

    def warm_up(self) -> None:
        """Nothing to load: the first score is the first call (kept for the loaders' sake)."""

    def close(self) -> None:
        """Close the HTTP client and the thread pool; idempotent."""
        with self._lock:
            client, pool = self._client, self._pool
            self._client = self._pool = None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if client is not None:
            client.close()

    # ------------------------------------------------------------------ scoring

    def score_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        timings: dict[str, float] | None = None,
    ) -> list[PassageScore]:
        """Score pairs through the API: one result per pair, in input order."""
        started = time.perf_counter()
        results: list[PassageScore | None] = [None] * len(pairs)
        groups: dict[str, list[int]] = {}
        for position, (query, passage) in enumerate(pairs):
            if not passage.strip():
                results[position] = PassageScore(
                    raw=EMPTY_PASSAGE_RAW_SCORE, normalized=0.0, chunks=0
                )
            else:
                groups.setdefault(query, []).append(position)
        calls: list[tuple[str, list[int]]] = []
        for query, positions in groups.items():
            for start in range(0, len(positions), self.max_documents):
                calls.append((query, positions[start : start + self.max_documents]))

        def run(call: tuple[str, list[int]]) -> list[float]:
            query, positions = call
            return self._call(query, [pairs[i][1] for i in positions])

        try:
            if len(calls) <= 1 or self.max_concurrency == 1:
                answers = [run(call) for call in calls]
            else:
                answers = list(self._executor().map(run, calls))
        finally:
            if timings is not None:
                elapsed = (time.perf_counter() - started) * 1000.0
                timings["model_ms"] = timings.get("model_ms", 0.0) + elapsed
        for (_, positions), scores in zip(calls, answers, strict=True):
            for position, raw in zip(positions, scores, strict=True):
                normalized = _sigmoid(raw) if self.scores_are_logits else min(1.0, max(0.0, raw))
                results[position] = PassageScore(raw=raw, normalized=normalized)
        return [r for r in results if r is not None]

    def _call(self, query: str, documents: list[str]) -> list[float]:
        """One API call (with retries) for one query's documents; scores in their order."""
        # Not the URL: these messages reach the service's clients (503 bodies), and an
        # internal address is the operator's business; the fingerprint logged at start names it.
        what = f"{self.provider} rerank"

        def attempt(timeout_s: float) -> list[float]:
            with self._lock:
                self.calls += 1
            scores = self._rank(query, documents, timeout_s=timeout_s, what=what)
            if len(scores) != len(documents):
                msg = f"{what}: expected {len(documents)} scores, got {len(scores)}"
                raise RemoteRerankError(msg)
            return scores

        try:
            return self.retry.call(attempt, what=what, translate=self._translate)
        except QueryError as exc:
            raise RemoteRerankError(str(exc), status=exc.status) from exc
        except BackendUnavailableError as exc:
            raise RemoteRerankUnavailableError(str(exc)) from exc
        except ConnectorError as exc:
            raise RemoteRerankError(str(exc)) from exc

    def _translate(self, exc: BaseException, what: str) -> ConnectorError | None:
        """Client exceptions that mean "no answer": retryable. Subclasses add their SDK's."""
        import httpx

        if isinstance(exc, (httpx.TimeoutException, httpx.TransportError)):
            return unavailable(exc, what=what)
        return None

    def _rank(self, query: str, documents: list[str], *, timeout_s: float, what: str) -> list[float]:
        """Send one call of at most ``max_documents``; the scores in ``documents`` order."""
        raise NotImplementedError

    # ------------------------------------------------------------------ resources

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _http(self) -> Any:
        """The shared httpx client (created on first use; thread-safe)."""
        with self._lock:
            if self._client is None:
                from secondpass.pipeline.remote._http import bounded_client

                self._client = bounded_client(
                    base_url=self.base_url,
                    headers=self._headers(),
                    limit=self.max_response_bytes,
                    connections=self.max_concurrency,
                    auth=self._url_auth,
                )
            return self._client

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.max_concurrency, thread_name_prefix=f"secondpass-{self.provider}"
                )
            return self._pool


class JsonRemoteScorer(RemoteScorer):
    """A protocol that is one JSON POST: the subclass names the path, body and answer keys.

    ``results_keys`` are the answer's keys that may hold the scored list (the
    first present wins; empty: the answer is the list itself); each item carries
    ``index`` and ``score_key``.
    """

    path: ClassVar[str]
    results_keys: ClassVar[tuple[str, ...]] = ("results",)
    score_key: ClassVar[str] = "relevance_score"

    def _body(self, query: str, documents: list[str]) -> dict[str, Any]:
        """The request body for one call (a pure function of its arguments and the model)."""
        raise NotImplementedError

    def _rank(self, query: str, documents: list[str], *, timeout_s: float, what: str) -> list[float]:
        from secondpass.pipeline.remote._http import post_json

        body = self._body(query, documents)
        answer = post_json(self._http(), self.path, body, timeout=timeout_s, what=what)
        items = answer
        if self.results_keys:
            present = [k for k in self.results_keys if isinstance(answer, dict) and k in answer]
            items = answer[present[0]] if present else None
        return indexed_scores(items, len(documents), score_key=self.score_key, what=what)


def _public(url: str) -> str:
    """``url`` without ``user:password@``, query or fragment: safe for fingerprints and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def scorer_class(provider: str) -> Callable[..., RemoteScorer]:
    """The scorer class of ``provider`` (imported on demand: Cohere's SDK only when asked for)."""
    if provider == "cohere":
        from secondpass.pipeline.remote.cohere import CohereScorer

        return CohereScorer
    if provider == "jina":
        from secondpass.pipeline.remote.jina import JinaScorer

        return JinaScorer
    if provider == "voyage":
        from secondpass.pipeline.remote.voyage import VoyageScorer

        return VoyageScorer
    if provider == "mixedbread":
        from secondpass.pipeline.remote.mixedbread import MixedbreadScorer

        return MixedbreadScorer
    if provider == "tei":
        from secondpass.pipeline.remote.tei import TeiScorer

        return TeiScorer
    if provider == "infinity":
        from secondpass.pipeline.remote.infinity import InfinityScorer

        return InfinityScorer
    if provider in ("vllm", "vllm-score"):
        from secondpass.pipeline.remote.vllm import VllmRerankScorer, VllmScoreScorer

        return VllmRerankScorer if provider == "vllm" else VllmScoreScorer
    msg = f"unknown remote provider {provider!r}"
    raise ConfigurationError(msg)
