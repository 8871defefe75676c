"""Reranking ``_search`` and ``_msearch`` answers on their way back to the client.

Each search is planned by :mod:`secondpass.proxy.rules`; a search that can be
reranked is sent upstream asking for the rerank window, its hits go through
:meth:`Retriever.arerank_hits <secondpass.pipeline.retriever.Retriever.arerank_hits>`
(the same call the facade makes, so the order is the facade's), and the client's
page is cut from the result. Every search answer carries ``X-SecondPass-Rerank``
(``ok``, or ``skipped``/``failed``/``partial`` with ``; reason=...``). When
reranking fails or runs out of time the client gets what the engine would have
answered to its own request; an error the engine did not give never reaches the
client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import anyio
import httpx

from secondpass.observability.logs import current_request_id
from secondpass.pipeline.batcher import BatchingOptions, BatchObserver
from secondpass.pipeline.breaker import CircuitBreaker
from secondpass.pipeline.engine import ScoringEngine
from secondpass.pipeline.passages import render_passage
from secondpass.pipeline.protocols import ScoreCache, Scorer
from secondpass.pipeline.rank_metrics import RankRecorder
from secondpass.pipeline.retriever import Retriever
from secondpass.pipeline.rollout import Arm, choose_arm
from secondpass.pipeline.shadow import ShadowQueue
from secondpass.proxy import access, rules
from secondpass.proxy.plumbing import (
    NDJSON_TYPES,
    QUERY_HEADER,
    STATUS_HEADER,
    Answer,
    BodyTooLarge,
    Incoming,
    Message,
    Send,
    Upstream,
    checked_body,
    decode_search,
    decoded,
    down_headers,
    dump,
    json_object,
    negotiated,
    read_body,
    refuse,
    relay,
    send_answer,
    server_timing,
    unreachable,
)
from secondpass.proxy.settings import ProxySettings
from secondpass.service.http_limits import HttpLimits, brief_traceback
from secondpass.types import Hit, SearchResult

logger = logging.getLogger(__name__)

PASSAGE_FIELD = "passage"
SHADOW_HEADER = "X-SecondPass-Shadow"


def build_retriever(
    settings: ProxySettings,
    scorer: Scorer,
    cache: ScoreCache | None = None,
    *,
    observer: BatchObserver | None = None,
) -> Retriever:
    """The retriever the proxy reranks with: the facade's, minus the first stage.

    The passage is rendered by the proxy per hit (its index's template) and handed
    over as one field, so one retriever serves every index configuration.
    ``rerank.rank_by`` picks the score that orders hits and becomes ``_score``;
    ``rerank.min_score`` is not applied, because dropping hits would contradict
    ``hits.total`` and the page arithmetic clients rely on.

    It scores through ONE :class:`~secondpass.pipeline.engine.ScoringEngine`
    built here from the proxy's batching, queue and breaker settings (the
    service's settings of the same names), so concurrent searches share its
    batch queue, cache and circuit breaker as the service's routes do.
    ``observer`` receives the engine's batch reports (the proxy's metrics).
    The engine is the caller's to close (``retriever.engine.close()``;
    :meth:`RerankProxy.close <secondpass.proxy.app.RerankProxy.close>` does it
    for an engine the proxy built).
    """
    engine = ScoringEngine(
        scorer=scorer,
        cache=cache,
        breaker=CircuitBreaker(
            failure_threshold=settings.breaker_failures, reset_after_s=settings.breaker_reset_s
        ),
        observer=observer,
        options=BatchingOptions(**settings.batching_options(), max_queue_s=settings.max_queue_s),
    )
    return Retriever(
        engine=engine,
        template=None,
        window=settings.window,
        deadline_ms=settings.deadline_ms,
        latency_budget_ms=settings.latency_budget_ms,
        rank_by=settings.rerank.rank_by,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one search: the JSON to answer with and the status header value."""

    response: dict[str, Any]
    status: str
    rerank_ms: float = 0.0


class SearchReranker:
    """Answers one ``_search`` or ``_msearch`` request: plan, widen, fetch, rerank, cut.

    ``lends`` says the proxy lends its credentials, in which case every
    ``_msearch`` header line is checked before anything goes up.
    """

    def __init__(
        self,
        *,
        settings: ProxySettings,
        retriever: Retriever,
        upstream: Upstream,
        limits: HttpLimits,
        lends: bool,
    ) -> None:
        self.settings = settings
        self.retriever = retriever
        self.index_rules = settings.index_rules()
        self._upstream = upstream
        self._metrics = upstream.metrics
        self._limits = limits
        self._lends = lends
        # Rank-change figures of live and shadow reranks (docs/rollout.md).
        self.rank = RankRecorder.from_settings(settings, registry=self._metrics.registry)
        self.shadow = ShadowQueue(
            max_pending=settings.shadow_queue,
            workers=settings.shadow_workers,
            on_drop=self.rank.dropped,
        )

    async def search(self, incoming: Incoming, index: str | None, send: Send) -> None:
        """Answer ``/_search`` or ``/{index}/_search``, counting its rerank outcome."""
        await self._search(incoming, index, self._counting(send, "search"))

    async def msearch(self, incoming: Incoming, index: str | None, send: Send) -> None:
        """Answer ``/_msearch`` or ``/{index}/_msearch``; its searches rerank concurrently."""
        await self._msearch(incoming, index, self._counting(send, "msearch"))

    def _counting(self, send: Send, endpoint: str) -> Send:
        """``send``, counting the ``X-SecondPass-Rerank`` value of the answer as it starts.

        Every way a search is answered (reranked, passed through, relayed, a
        gateway error) carries that header, so counting it here misses none.
        """
        name = STATUS_HEADER.encode()

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                for key, value in message.get("headers", ()):
                    if key.lower() == name:
                        self._metrics.answered(endpoint, value.decode("latin-1"))
            await send(message)

        return counted

    async def _search(self, incoming: Incoming, index: str | None, send: Send) -> None:
        started = time.perf_counter()
        deadline = self._upstream_deadline()
        params = rules.split_query(incoming.query)
        if rules.opted_out(params, incoming.header(STATUS_HEADER.encode())):
            await self._pass(incoming, send, "skipped", "disabled by the client")
            return
        raw_body = await self._read_search_body(incoming, send)
        if raw_body is None:
            return
        body_or_reason = decode_search(incoming, raw_body, params, limits=self._limits)
        if isinstance(body_or_reason, str):
            await self._pass(incoming, send, "skipped", body_or_reason, body=raw_body)
            return
        texts = self.index_rules.resolve(index)
        plan = _plan_safely(
            body_or_reason,
            params,
            window=self.settings.window,
            text_fields=texts.fields,
            header_query=incoming.header(QUERY_HEADER.encode()),
        )
        if isinstance(plan, rules.Skip):
            await self._pass(incoming, send, "skipped", plan.reason, body=raw_body)
            return
        arm = self._arm(incoming, plan)
        if arm == "pass":
            await self._pass(incoming, send, "skipped", "outside the rerank share", body=raw_body)
            return
        if arm == "shadow":
            self._shadow(incoming, plan, texts, index)
            await self._pass(incoming, send, "skipped", "shadow", body=raw_body)
            return
        sent = await self._send_widened(
            incoming,
            send,
            plan.query,
            b"application/json",
            dump(_server_timeout(plan.body, deadline)),
            deadline=deadline,
        )
        if sent is None:
            return
        response, upstream_ms = sent
        if response.status_code == 400:
            # Possibly our window made the difference (e.g. a rank_window_size);
            # the client must get the engine's answer to its own request.
            await self._pass(
                incoming, send, "skipped", "engine rejected the window request (400)", body=raw_body
            )
            return
        parsed = json_object(response)
        if response.status_code != 200 or parsed is None:
            reason = f"engine answered {response.status_code}"
            if response.status_code == 200:
                await self._pass(
                    incoming, send, "failed", "engine answer is not JSON", body=raw_body
                )
                return
            await send_answer(
                send,
                negotiated(
                    relay(response, rules.status_header("skipped", reason)),
                    incoming.header(b"accept-encoding"),
                ),
            )
            return
        outcome = await self._rerank(parsed, plan, texts, index=index)
        final = outcome.response
        if outcome.status == "ok" or outcome.status.startswith("partial"):
            final = rules.add_took(final, (time.perf_counter() - started) * 1000 - upstream_ms)
        body = dump(final)
        headers = down_headers(response, outcome.status)
        headers.append(server_timing(upstream_ms, outcome.rerank_ms, started))
        answer = Answer(response.status_code, headers, body)
        await send_answer(send, negotiated(answer, incoming.header(b"accept-encoding")))

    def _upstream_deadline(self) -> float | None:
        """When the engine's answer to a search arriving now is due (``time.monotonic()``).

        ``read_timeout_s`` bounds the whole wait for a search the proxy rewrites,
        from the request's arrival (``None``: as long as the client waits).
        """
        limit = self.settings.read_timeout_s
        return None if limit is None else time.monotonic() + limit

    async def _send_widened(
        self,
        incoming: Incoming,
        send: Send,
        query: bytes,
        content_type: bytes,
        content: bytes,
        *,
        deadline: float | None = None,
    ) -> tuple[httpx.Response, float] | None:
        """Send the rewritten request: (answer, milliseconds), or ``None`` once a 502/503/504 was sent.

        With a ``deadline`` (``time.monotonic()``), what is left of it is the
        call's timeout for every phase (connect, pool, write, read) and bounds
        the call as a whole: a paused engine, or one trickling bytes, is
        abandoned at the deadline, its connection closed (a cancelled httpx
        call never goes back to the pool), and the client gets 504.
        """
        request = self._upstream.rewritten_request(incoming, query, content_type, content)
        started = time.perf_counter()
        try:
            if deadline is None:
                response = await self._upstream.send_written(request)
            else:
                left = max(0.001, deadline - time.monotonic())
                s = self.settings
                request.extensions["timeout"] = httpx.Timeout(
                    left, connect=min(left, s.connect_timeout_s), pool=min(left, s.pool_timeout_s)
                ).as_dict()
                # An anyio scope, not asyncio.timeout: httpcore closes a connection
                # inside a shielded anyio scope, which only a scope cancellation respects.
                with anyio.move_on_after(left):
                    return (
                        await self._upstream.send_written(request),
                        (time.perf_counter() - started) * 1000,
                    )
                msg = f"no answer within read_timeout_s ({s.read_timeout_s:g} s)"
                raise httpx.ReadTimeout(msg, request=request)
        except httpx.HTTPError as exc:
            timed_out = isinstance(exc, httpx.TimeoutException)
            reason = "engine timed out" if timed_out else "engine unreachable"
            await send_answer(send, unreachable(exc, rules.status_header("failed", reason)))
            return None
        return response, (time.perf_counter() - started) * 1000

    async def _rerank(
        self,
        response: dict[str, Any],
        plan: rules.SearchPlan,
        texts: rules.RequestTexts,
        *,
        deadline_ms: float | None = None,
        index: str | None = None,
    ) -> Outcome:
        """Rerank one search response; any fault gives the engine-order page instead.

        ``deadline_ms`` overrides ``settings.deadline_ms`` (an ``_msearch`` item
        gets what is left of its request's budget). ``index`` (the request
        path's) labels the rank-change record of a single ``_search``.
        """
        started = time.perf_counter()
        outcome = await self._rerank_or_fall_back(response, plan, texts, deadline_ms, index)
        seconds = time.perf_counter() - started
        self._metrics.rerank_latency.observe(seconds)
        return dataclasses.replace(outcome, rerank_ms=seconds * 1000)

    async def _rerank_or_fall_back(
        self,
        response: dict[str, Any],
        plan: rules.SearchPlan,
        texts: rules.RequestTexts,
        deadline_ms: float | None,
        index: str | None = None,
    ) -> Outcome:
        try:
            hits = self._hits(response, plan, texts)
            if isinstance(hits, str):
                return Outcome(
                    rules.engine_order_response(response, plan),
                    rules.status_header("skipped", hits),
                )
            started = time.perf_counter()
            result = await self.retriever.arerank_hits(
                plan.query_text, hits, k=None, offset=0, deadline_ms=deadline_ms
            )
            self.rank.record_result(
                arm="live", request_id=current_request_id() or "", index=index or "_all",
                query=plan.query_text, hits=hits, result=result,
                rerank_ms=(time.perf_counter() - started) * 1000,
            )  # fmt: skip
            self._metrics.reranked(
                hits=result.reranked, cache_hits=result.cache_hits, cache_misses=result.cache_misses
            )
            return self._apply(response, plan, result)
        except Exception as exc:  # noqa: BLE001 - the client must get the engine's answer
            logger.warning("rerank failed, answering in engine order: %s", brief_traceback(exc))
            reason = f"{type(exc).__name__} while reranking"
            return Outcome(
                rules.engine_order_response(response, plan), rules.status_header("failed", reason)
            )

    def _arm(self, incoming: Incoming, plan: rules.SearchPlan) -> Arm:
        """Live, shadow or pass for one rerankable search (:func:`~secondpass.pipeline.rollout.choose_arm`)."""
        s = self.settings
        requested = incoming.header(SHADOW_HEADER.lower().encode())
        if not s.shadow and s.rerank_share is None and requested is None:
            return "live"  # the common case costs one header lookup
        return choose_arm(
            s,
            share_key=incoming.header(s.rerank_share_key.lower().encode()),
            query=plan.query_text,
            shadow_requested=requested is not None and requested.strip().lower() in ("1", "true"),
        )

    def _shadow(
        self, incoming: Incoming, plan: rules.SearchPlan, texts: rules.RequestTexts, index: str | None
    ) -> None:
        """Queue the shadow work of a search whose client gets the engine's own answer.

        The client's request passes through untouched (its answer is the
        engine's, byte for byte); the shadow work, in the background, asks the
        engine for the rerank window with the client's own credentials, reranks
        it and records the comparison. Enqueueing is all the client waits for:
        when the shadow queue is full the work is dropped (and counted). The
        request is written now, while the client's headers are at hand.
        """
        request = self._upstream.rewritten_request(
            incoming, plan.query, b"application/json", dump(plan.body)
        )
        request_id = current_request_id() or ""
        deadline_s = self.settings.read_timeout_s or self.settings.connect_timeout_s + 30.0

        async def work() -> None:
            with anyio.move_on_after(deadline_s):
                response = await self._upstream.send_written(request)
                parsed = json_object(response)
                if response.status_code != 200 or parsed is None:
                    logger.info("shadow search not compared: engine answered %s", response.status_code)
                    return
                hits = self._hits(parsed, plan, texts)
                if isinstance(hits, str):
                    return
                await self.rank.shadow(
                    lambda: self.retriever.arerank_hits(plan.query_text, hits, k=None, offset=0),
                    request_id=request_id, index=index or "_all", query=plan.query_text, hits=hits,
                )  # fmt: skip

        self.shadow.submit(work)

    def _apply(
        self, response: dict[str, Any], plan: rules.SearchPlan, result: SearchResult
    ) -> Outcome:
        if result.status in ("failed", "skipped"):
            return Outcome(
                rules.engine_order_response(response, plan),
                rules.status_header(result.status, result.reason or "reranking did not happen"),
            )
        reranked = rules.reranked_response(
            response, plan, result, annotation=self.settings.hit_annotation
        )
        return Outcome(reranked, rules.status_header(result.status, result.reason))

    def _hits(
        self, response: dict[str, Any], plan: rules.SearchPlan, texts: rules.RequestTexts
    ) -> list[Hit] | str:
        """Engine hits whose one field is the rendered passage, or why there is nothing to rerank.

        An answer with malformed hits is not reranked: leaving them out would
        contradict ``hits.total`` and the client's page, so the engine's order stands.
        """

        def names(index: str) -> Sequence[str]:
            entry = texts.for_hit(index)
            return () if entry is None else entry.fields

        read = rules.build_hits(response, plan, fields_for=names)
        if read.malformed:
            logger.warning("engine answer not reranked: %s", "; ".join(read.malformed[:3]))
            return f"engine answer has {len(read.malformed)} malformed hit(s)"
        if not read.hits:
            return "no hits"
        out = []
        for hit in read.hits:
            entry = texts.for_hit(hit.index)
            passage = "" if entry is None else render_passage(hit, entry.template)
            out.append(dataclasses.replace(hit, fields={PASSAGE_FIELD: passage}))
        return out

    # ------------------------------------------------------------------- msearch

    async def _msearch(self, incoming: Incoming, index: str | None, send: Send) -> None:
        started = time.perf_counter()
        deadline = self._upstream_deadline()
        params = rules.split_query(incoming.query)
        checked: bytes | None = None
        if self._lends:
            # Header lines name indices: with lent credentials every one is checked
            # first, and a body that cannot be read is refused, never passed through.
            checked = await self._checked_msearch(incoming, send)
            if checked is None:
                return
        if rules.opted_out(params, incoming.header(STATUS_HEADER.encode())):
            await self._pass(incoming, send, "skipped", "disabled by the client", body=checked)
            return
        raw_body = checked if checked is not None else await self._read_search_body(incoming, send)
        if raw_body is None:
            return
        data = decoded(incoming, raw_body, NDJSON_TYPES, params, limits=self._limits)
        parsed = rules.parse_msearch(data) if data is not None else None
        if parsed is None:
            await self._pass(incoming, send, "skipped", "msearch body not readable", body=raw_body)
            return
        header_query = incoming.header(QUERY_HEADER.encode())
        plans: list[rules.SearchPlan | rules.Skip] = []
        item_texts: list[rules.RequestTexts] = []
        for item in parsed.items:
            texts = self.index_rules.resolve(rules.msearch_index(item.header, index))
            item_texts.append(texts)
            plans.append(
                _plan_safely(
                    item.body, (), window=self.settings.window,
                    text_fields=texts.fields, header_query=header_query,
                )
            )  # fmt: skip
        _cap_reranked(plans, self.settings.max_msearch_reranked)
        if not any(isinstance(p, rules.SearchPlan) for p in plans):
            reasons = ", ".join(
                rules.status_header("skipped", p.reason) for p in plans if isinstance(p, rules.Skip)
            )
            await self._upstream.pass_through(
                incoming, send, body=raw_body, status=reasons or "skipped"
            )
            return
        lines = []
        for item, plan in zip(parsed.items, plans, strict=True):
            lines += [
                dump(item.header),
                dump(
                    _server_timeout(plan.body, deadline)
                    if isinstance(plan, rules.SearchPlan)
                    else item.body
                ),
            ]
        query = rules.join_query(p for p in params if p.key != rules.OPT_OUT_PARAM)
        sent = await self._send_widened(
            incoming,
            send,
            query,
            b"application/x-ndjson",
            b"\n".join(lines) + b"\n",
            deadline=deadline,
        )
        if sent is None:
            return
        response, upstream_ms = sent
        budget = _Budget.start(self.settings.deadline_ms)
        body = json_object(response)
        responses = body.get("responses") if body is not None else None
        if (
            body is None
            or response.status_code != 200
            or not isinstance(responses, list)
            or len(responses) != len(plans)
        ):
            await self._pass(
                incoming, send, "skipped", f"engine answered {response.status_code}", body=raw_body
            )
            return
        await self._replay_rejected(incoming, parsed, plans, responses, query)
        outcomes = await asyncio.gather(
            *(
                self._msearch_item(item_response, plan, texts, budget)
                for item_response, plan, texts in zip(responses, plans, item_texts, strict=True)
            )
        )
        final = dict(body)
        final["responses"] = [o.response for o in outcomes]
        final = rules.add_took(final, (time.perf_counter() - started) * 1000 - upstream_ms)
        headers = down_headers(response, ", ".join(o.status for o in outcomes))
        rerank_ms = max(o.rerank_ms for o in outcomes)  # the searches rerank concurrently
        headers.append(server_timing(upstream_ms, rerank_ms, started))
        answer = Answer(200, headers, dump(final))
        await send_answer(send, negotiated(answer, incoming.header(b"accept-encoding")))

    async def _checked_msearch(self, incoming: Incoming, send: Send) -> bytes | None:
        """The raw ``_msearch`` body once :func:`~.access.check_msearch` passed it."""
        body = await checked_body(
            incoming, send, limit=self.settings.max_search_body_bytes, limits=self._limits
        )
        if body is None:
            return None
        refusal = access.check_msearch(incoming.header(b"content-type"), body[1])
        if refusal is not None:
            logger.info("refused %s: %s", incoming.method, refusal.reason)
            await refuse(send, refusal)
            return None
        return body[0]

    async def _msearch_item(
        self,
        item: Any,
        plan: rules.SearchPlan | rules.Skip,
        texts: rules.RequestTexts,
        budget: _Budget,
    ) -> Outcome:
        if isinstance(plan, rules.Skip):
            return Outcome(item, rules.status_header("skipped", plan.reason))
        if not isinstance(item, dict) or "hits" not in item:
            return Outcome(item, rules.status_header("skipped", "engine answered an error"))
        left_ms = budget.left_ms()
        if left_ms is not None and left_ms <= 0:
            return Outcome(
                rules.engine_order_response(item, plan),
                rules.status_header("skipped", budget.spent_reason()),
            )
        outcome = await self._rerank(item, plan, texts, deadline_ms=left_ms)
        if outcome.status == "ok" or outcome.status.startswith("partial"):
            return dataclasses.replace(
                outcome, response=rules.add_took(outcome.response, outcome.rerank_ms)
            )
        return outcome

    async def _replay_rejected(
        self,
        incoming: Incoming,
        parsed: rules.MsearchRequest,
        plans: list[rules.SearchPlan | rules.Skip],
        responses: list[Any],
        query: bytes,
    ) -> None:
        """Re-ask, as the client wrote them, the items the engine rejected with 400.

        Our window may be what the engine objected to; either way the client gets the
        engine's answer to its own item. Replaced items are marked as skipped.
        """
        rejected = [
            i
            for i, (plan, item) in enumerate(zip(plans, responses, strict=True))
            if isinstance(plan, rules.SearchPlan)
            and isinstance(item, dict)
            and item.get("status") == 400
        ]
        if not rejected:
            return
        lines = []
        for i in rejected:
            lines += [dump(parsed.items[i].header), dump(parsed.items[i].body)]
        request = self._upstream.rewritten_request(
            incoming, query, b"application/x-ndjson", b"\n".join(lines) + b"\n"
        )
        try:
            replayed = json_object(await self._upstream.send(request))
        except httpx.HTTPError:
            return
        answers = replayed.get("responses") if replayed is not None else None
        if not isinstance(answers, list) or len(answers) != len(rejected):
            return
        for i, answer in zip(rejected, answers, strict=True):
            responses[i] = answer
            plans[i] = rules.Skip("engine rejected the window request (400)")

    async def _pass(
        self,
        incoming: Incoming,
        send: Send,
        outcome: str,
        reason: str,
        *,
        body: bytes | None = None,
        head: bytes = b"",
    ) -> None:
        """Pass the request through as the client sent it, saying why it was not reranked."""
        status = rules.status_header(outcome, reason)
        await self._upstream.pass_through(incoming, send, body=body, head=head, status=status)

    async def _read_search_body(self, incoming: Incoming, send: Send) -> bytes | None:
        """The search body, or ``None`` once a body too large to read was passed through."""
        try:
            return await read_body(incoming, limit=self.settings.max_search_body_bytes)
        except BodyTooLarge as exc:
            await self._pass(
                incoming, send, "skipped", "search body too large to read", head=exc.head
            )
            return None


def _plan_safely(
    body: dict[str, Any], params: Sequence[rules.QueryParam], **kwargs: Any
) -> rules.SearchPlan | rules.Skip:
    """:func:`~secondpass.proxy.rules.plan_search`, where a body it cannot read passes through.

    Bodies are the client's and may be anything the engine accepts (or rejects);
    whatever trips the planner, the engine gets the request as it came.
    """
    try:
        return rules.plan_search(body, params, **kwargs)
    except Exception as exc:  # noqa: BLE001 - never turn an odd body into our own error
        logger.warning("could not plan a search, passing it through: %s", type(exc).__name__)
        return rules.Skip(f"could not read the search body ({type(exc).__name__})")


def _server_timeout(body: dict[str, Any], deadline: float | None) -> dict[str, Any]:
    """``body`` with the engine's own search ``timeout`` set to what is left of ``deadline``.

    The engine then stops collecting hits at about the time the proxy stops
    waiting for them (and answers ``timed_out: true`` with what it has),
    instead of searching on for nobody. A ``timeout`` the client set is kept.
    """
    if deadline is None or "timeout" in body:
        return body
    left_ms = max(1, round((deadline - time.monotonic()) * 1000))
    return {**body, "timeout": f"{left_ms}ms"}


def _cap_reranked(plans: list[rules.SearchPlan | rules.Skip], cap: int) -> None:
    """Keep the first ``cap`` rerankable searches of an ``_msearch``; skip the rest in place.

    Each reranked search costs a window of model work; without a cap one
    ``_msearch`` of hundreds of searches would hold the model for minutes. The
    skipped ones go up as the client wrote them (no widened window) and come
    back in engine order.
    """
    seen = 0
    for i, plan in enumerate(plans):
        if isinstance(plan, rules.SearchPlan):
            seen += 1
            if seen > cap:
                plans[i] = rules.Skip(f"msearch rerank cap of {cap} searches reached")


@dataclasses.dataclass(frozen=True, slots=True)
class _Budget:
    """One request's reranking deadline, shared by all the searches of an ``_msearch``.

    The clock starts when the engine answered (as ``deadline_ms`` does for a
    single search). Every search is scored with what is left of it, so the
    searches split the one budget between them through the engine's fair
    batch shares, and the whole ``_msearch`` answers within ``deadline_ms``.
    """

    started: float  # time.perf_counter()
    deadline_ms: float | None

    @classmethod
    def start(cls, deadline_ms: float | None) -> _Budget:
        return cls(time.perf_counter(), deadline_ms)

    def left_ms(self) -> float | None:
        """Milliseconds left (``None``: no deadline); zero or less once spent."""
        if self.deadline_ms is None:
            return None
        return self.deadline_ms - (time.perf_counter() - self.started) * 1000

    def spent_reason(self) -> str:
        return f"msearch deadline of {self.deadline_ms:g} ms already spent before reranking"
