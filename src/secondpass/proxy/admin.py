"""The proxy's own endpoints: ``/_secondpass/livez``, ``/_secondpass/readyz``, ``/_secondpass/metrics``.

Why a reserved prefix rather than ``/livez`` or a second port: the proxy listens
like a cluster, so every other path belongs to the engine. Index names cannot
start with ``_`` and neither engine has an API under ``/_secondpass``, so these
paths can never shadow an index or an engine call, and they are answered here,
never forwarded. With client keys configured (and so always when credentials
are lent on a non-loopback address) they need a client key like everything else:
metrics reveal traffic.

Readiness means the proxy can rerank and reach the engine: the scorer's model is
loaded, and the engine answered (any HTTP status) within the last
:data:`READY_WINDOW_S` seconds; otherwise one bounded ``GET /`` probe asks it
(concurrent probes share it).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from secondpass.proxy.plumbing import NOT_FORWARDED_UP, Answer, Send, Upstream, dump, send_answer

if TYPE_CHECKING:
    from secondpass.pipeline.retriever import Retriever
    from secondpass.proxy.metrics import ProxyMetrics

PREFIX = b"/_secondpass"
"""Paths under this prefix are the proxy's own (index names cannot start with ``_``)."""
READY_WINDOW_S = 10.0
"""An engine answer younger than this makes a readiness probe unnecessary."""
PROBE_TIMEOUT_S = 2.0
"""The most one readiness probe of the engine waits (connect and answer)."""

_JSON = [(b"content-type", b"application/json")]


def is_own(path: bytes) -> bool:
    """Whether the (canonical) path is one of the proxy's own, never forwarded."""
    return path == PREFIX or path.startswith(PREFIX + b"/")


class AdminEndpoints:
    """Answers the proxy's own endpoints from its metrics, scorer and upstream."""

    def __init__(self, *, metrics: ProxyMetrics, upstream: Upstream, retriever: Retriever) -> None:
        self.metrics = metrics
        self._upstream = upstream
        self._retriever = retriever
        self._probe_lock = asyncio.Lock()
        self._build_known = False

    async def answer(self, method: str, path: bytes, send: Send) -> None:
        """Answer ``method path`` (``GET``/``HEAD`` only; 404 for an unknown own path)."""
        name = path[len(PREFIX) :].rstrip(b"/")
        if name not in (b"/livez", b"/readyz", b"/metrics"):
            await send_answer(send, _error(404, f"no such endpoint of this proxy: {_text(path)}"))
            return
        if method not in ("GET", "HEAD"):
            answer = _error(405, f"{method} is not served by {_text(path)}; use GET")
            answer.headers.append((b"allow", b"GET,HEAD"))
            await send_answer(send, answer)
            return
        if name == b"/livez":
            answer = Answer(200, list(_JSON), dump({"status": "ok"}))
        elif name == b"/readyz":
            answer = await self._readyz()
        else:
            self._set_build_info()
            body = generate_latest(self.metrics.registry)
            answer = Answer(200, [(b"content-type", CONTENT_TYPE_LATEST.encode())], body)
        if method == "HEAD":
            answer = Answer(answer.status, answer.headers, b"")
        await send_answer(send, answer)

    def _set_build_info(self) -> None:
        """``secondpass_build_info``, once the model is loaded (asking earlier would load it)."""
        scorer = self._retriever.scorer
        if self._build_known or not getattr(scorer, "is_loaded", True):
            return
        self._build_known = True
        self.metrics.scoring.build_info(
            model=public_model_name(self._upstream.settings.rerank.model),
            backend=str(getattr(scorer, "backend", "unknown")),
            device=str(getattr(scorer, "device", "unknown")),
        )

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """(ready, checks): ``scorer`` and ``upstream``, each ``ok`` or why not."""
        loaded = getattr(
            self._retriever.scorer, "is_loaded", True
        )  # a scorer without it loads nothing
        checks = {
            "scorer": "ok" if loaded else "model not loaded",
            "upstream": await self._upstream_status(),
        }
        ready = all(v == "ok" for v in checks.values())
        self.metrics.ready.set(1 if ready else 0)
        return ready, checks

    async def _readyz(self) -> Answer:
        ready, checks = await self.readiness()
        body = {"ready": ready, "status": "ready" if ready else "not_ready", "checks": checks}
        return Answer(200 if ready else 503, list(_JSON), dump(body))

    def _answered_recently(self) -> bool:
        last = self._upstream.last_answer
        return last is not None and time.monotonic() - last <= READY_WINDOW_S

    async def _upstream_status(self) -> str:
        if self._answered_recently():
            return "ok"
        async with self._probe_lock:
            if self._answered_recently():  # a concurrent probe just asked
                return "ok"
            request = httpx.Request(
                "GET",
                self._upstream.url(b"/", b""),
                headers=self._upstream.up_headers([], NOT_FORWARDED_UP),
                extensions={"timeout": httpx.Timeout(PROBE_TIMEOUT_S).as_dict()},
            )
            try:
                response = await self._upstream.send(request)
            except httpx.HTTPError as exc:
                return f"engine did not answer: {type(exc).__name__}"
            await response.aclose()
            return "ok"


def public_model_name(model: str) -> str:
    """A model id as is; a local directory by its last component (no host paths in metrics)."""
    path = Path(model).expanduser()
    return path.name if path.is_absolute() or path.exists() else model


def _error(status: int, reason: str) -> Answer:
    body = {"error": {"type": "secondpass_proxy_exception", "reason": reason}, "status": status}
    return Answer(status, list(_JSON), dump(body))


def _text(path: bytes) -> str:
    return path.decode("latin-1")[:200]
