"""What several reliability modules share: a fault-injecting scorer, test indices, the in-process app.

``FaultyScorer`` wraps a real scorer (the tiny cross-encoder) and can be told to
fail or to stall; it is a fault injector around the real model, not a stand-in
for it, and it counts how often the model was actually asked.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx

from secondpass.errors import RerankError
from secondpass.pipeline.protocols import Scorer
from secondpass.types import PassageScore

WORDS = "cat dog bird fish horse mouse lion tiger bear wolf fox owl".split()


class FaultyScorer:
    """A real scorer with a fault switch: ``mode`` is ``"ok"``, ``"fail"`` or ``"slow"``.

    ``calls`` counts the calls that reached the switch (i.e. that the breaker or
    the deadline did not prevent); ``slow_s`` is how long a slow call stalls.
    """

    def __init__(self, inner: Scorer, *, slow_s: float = 3.0) -> None:
        self.inner = inner
        self.mode = "ok"
        self.slow_s = slow_s
        self.calls = 0
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    def _enter(self) -> None:
        with self._lock:
            self.calls += 1
        if self.mode == "fail":
            raise RerankError("injected scorer failure (device lost)")
        if self.mode == "slow":
            time.sleep(self.slow_s)

    def score(self, query: str, passages: Sequence[str], *, timings: dict[str, float] | None = None) -> list[PassageScore]:
        self._enter()
        return self.inner.score(query, passages, timings=timings)

    def score_pairs(
        self, pairs: Sequence[tuple[str, str]], *, timings: dict[str, float] | None = None
    ) -> list[PassageScore]:
        self._enter()
        return self.inner.score_pairs(pairs, timings=timings)


def corpus(n: int = 30) -> list[dict[str, Any]]:
    """Small deterministic documents with a title and a body."""
    return [
        {
            "_id": f"d{i}",
            "title": f"{WORDS[i % 12]} {WORDS[(i * 5) % 12]}",
            "body": " ".join(WORDS[(i + k) % 12] for k in range(1 + i % 6)),
        }
        for i in range(n)
    ]


@contextmanager
def temp_index(url: str, docs: Sequence[dict[str, Any]], *, mappings: dict[str, Any] | None = None) -> Iterator[str]:
    """A uuid-named index holding ``docs`` (plain HTTP, no connector), deleted afterwards."""
    name = f"sp-rel-{uuid.uuid4().hex[:12]}"
    body = {"mappings": mappings or {"properties": {"title": {"type": "text"}, "body": {"type": "text"}}}}
    with httpx.Client(base_url=url, timeout=60) as client:
        client.put(f"/{name}", json=body).raise_for_status()
        lines = []
        for doc in docs:
            source = {k: v for k, v in doc.items() if k != "_id"}
            lines.append({"index": {"_index": name, "_id": doc["_id"]}})
            lines.append(source)
        if lines:
            payload = "\n".join(json.dumps(x) for x in lines) + "\n"
            r = client.post("/_bulk?refresh=true", content=payload, headers={"content-type": "application/x-ndjson"})
            r.raise_for_status()
            assert not r.json()["errors"], r.text[:500]
        try:
            yield name
        finally:
            client.delete(f"/{name}")


@asynccontextmanager
async def running_app(app: Any, *, wait_ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan in this loop and hand out an in-process client."""
    async with app.router.lifespan_context(app):
        state = app.state.service
        if wait_ready:
            for _ in range(3000):
                if state.model_ok and (not state.settings.search_enabled or state.retriever is not None):
                    break
                await asyncio.sleep(0.01)
            assert state.model_ok, state.model_error
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc", timeout=60) as client:
            yield client
