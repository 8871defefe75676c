"""The kNN-only first stage: what it asks the engine for, filters included.

The connectors turn ``SearchRequest.filters`` on a kNN request into the engine's
in-graph filter (tested in ``test_query.py``; on real engines in
``tests/integration/test_hybrid.py::test_dense_stage_filters_inside_the_knn_search``),
so these tests check what the stage hands the connector.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from secondpass.errors import ConfigurationError
from secondpass.evaluation import build_stage
from secondpass.pipeline.first_stage import DenseStage, FirstStage, HybridStage, LexicalStage
from secondpass.types import Hit, KnnQuery, SearchRequest

FILTERS = ({"term": {"lang": "de"}}, {"range": {"year": {"gte": 2020}}})


def _hits(ids: Sequence[str]) -> list[Hit]:
    return [Hit("i", doc, 1.0 / (n + 1), n + 1, {"text": doc}) for n, doc in enumerate(ids)]


class RecordingConnector:
    """A sync Connector that records each request and answers its first ``size`` ids."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)
        self.requests: list[SearchRequest] = []

    def search(self, request: SearchRequest) -> list[Hit]:
        self.requests.append(request)
        return _hits(self.ids[: request.size])

    def close(self) -> None:
        pass


class AsyncRecordingConnector(RecordingConnector):
    """The same, speaking the AsyncConnector protocol."""

    async def search(self, request: SearchRequest) -> list[Hit]:  # type: ignore[override]
        return super().search(request)

    async def close(self) -> None:  # type: ignore[override]
        pass


class FixedEncoder:
    dimension = 3

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        return [[0.6, 0.8, 0.0] for _ in texts]


def test_dense_stage_sends_filters_inside_the_knn_request() -> None:
    connector = RecordingConnector(["a", "b", "c"])
    stage = DenseStage(connector, FixedEncoder(), "embedding")
    hits = stage.retrieve("cats", size=2, filters=FILTERS)
    (request,) = connector.requests
    assert request.filters == FILTERS
    assert request.knn == KnnQuery(
        field="embedding", vector=(0.6, 0.8, 0.0), k=2, num_candidates=100
    )
    assert request.body is None and request.size == 2
    assert [h.id for h in hits] == ["a", "b"]


def test_dense_stage_without_filters_sends_none() -> None:
    connector = RecordingConnector(["a"])
    DenseStage(connector, FixedEncoder(), "v", num_candidates=3).retrieve("q", size=5)
    (request,) = connector.requests
    assert request.filters == ()
    assert request.knn is not None and (request.knn.k, request.knn.num_candidates) == (5, 5)


async def test_dense_stage_async_connector_gets_the_same_request() -> None:
    sync_connector, async_connector = (
        RecordingConnector(["a", "b"]),
        AsyncRecordingConnector(["a", "b"]),
    )
    sync_hits = DenseStage(sync_connector, FixedEncoder(), "v").retrieve(
        "q", size=2, filters=FILTERS
    )
    async_hits = await DenseStage(async_connector, FixedEncoder(), "v").aretrieve(
        "q", size=2, filters=FILTERS
    )
    assert async_hits == sync_hits
    assert async_connector.requests == sync_connector.requests


def test_dense_stage_sync_call_refuses_an_async_connector() -> None:
    stage = DenseStage(AsyncRecordingConnector(["a"]), FixedEncoder(), "v")
    with pytest.raises(ConfigurationError, match="asynchronous"):
        stage.retrieve("q", size=1)


def test_dense_stage_refuses_a_body_instead_of_dropping_it() -> None:
    connector = RecordingConnector(["a"])
    stage = DenseStage(connector, FixedEncoder(), "v")
    with pytest.raises(ConfigurationError, match="body"):
        stage.retrieve("q", size=1, body={"query": {"match_all": {}}})
    assert connector.requests == []


def test_dense_stage_empty_window_asks_nothing() -> None:
    connector = RecordingConnector(["a"])
    assert DenseStage(connector, FixedEncoder(), "v").retrieve("q", size=0) == []
    assert connector.requests == []


@pytest.mark.parametrize(
    "kwargs", [{"vector_field": ""}, {"vector_field": "v", "num_candidates": 0}]
)
def test_dense_stage_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        DenseStage(RecordingConnector([]), FixedEncoder(), **kwargs)  # type: ignore[arg-type]


def test_evaluation_builds_the_pipeline_dense_stage() -> None:
    stage = build_stage("dense", RecordingConnector([]), encoder=FixedEncoder(), vector_field="v")
    assert isinstance(stage, DenseStage) and isinstance(stage, FirstStage)


# ------------------------------------------------------------------ the caller's deadline


def _stages(connector: RecordingConnector) -> list[FirstStage]:
    return [
        LexicalStage(connector),
        DenseStage(connector, FixedEncoder(), "v"),
        HybridStage(connector, FixedEncoder(), "v", depth=3),
    ]


def test_every_stage_puts_the_deadline_on_every_engine_request() -> None:
    for stage in _stages(connector := RecordingConnector(["a", "b", "c"])):
        stage.retrieve("q", size=2, deadline=1234.5)
    assert len(connector.requests) == 4  # lexical 1, dense 1, hybrid 2
    assert {r.deadline for r in connector.requests} == {1234.5}


async def test_every_stage_puts_the_deadline_on_async_requests_too() -> None:
    for stage in _stages(connector := AsyncRecordingConnector(["a", "b", "c"])):
        await stage.aretrieve("q", size=2, deadline=99.0)
    assert len(connector.requests) == 4
    assert {r.deadline for r in connector.requests} == {99.0}


def test_without_a_deadline_requests_carry_none() -> None:
    for stage in _stages(connector := RecordingConnector(["a"])):
        stage.retrieve("q", size=1)
    assert {r.deadline for r in connector.requests} == {None}
