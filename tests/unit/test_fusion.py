"""Reciprocal rank fusion and the min-max linear blend, as pure functions over hits."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secondpass.errors import ConfigurationError
from secondpass.pipeline.first_stage import HybridStage
from secondpass.pipeline.fusion import RRF_K, linear_fusion, reciprocal_rank_fusion
from secondpass.types import Hit, KnnQuery, SearchRequest


def ranked(ids: list[str], *, index: str = "i", scores: list[float] | None = None) -> list[Hit]:
    scores = scores if scores is not None else [float(len(ids) - n) for n in range(len(ids))]
    return [
        Hit(index=index, id=doc, score=score, rank=n + 1, fields={"text": f"doc {doc}"})
        for n, (doc, score) in enumerate(zip(ids, scores, strict=True))
    ]


@st.composite
def hit_list(draw: st.DrawFn) -> list[Hit]:
    ids = draw(st.lists(st.sampled_from("abcdefgh"), max_size=12))
    scores = draw(
        st.lists(
            st.floats(min_value=-50, max_value=50, allow_nan=False),
            min_size=len(ids),
            max_size=len(ids),
        )
    )
    return ranked(ids, scores=sorted(scores, reverse=True))


def test_rrf_matches_the_formula() -> None:
    lexical = ranked(["a", "b", "c"])
    dense = ranked(["c", "a", "d"])
    fused = reciprocal_rank_fusion([lexical, dense])
    expected = {
        "a": 1 / (RRF_K + 1) + 1 / (RRF_K + 2),
        "b": 1 / (RRF_K + 2),
        "c": 1 / (RRF_K + 3) + 1 / (RRF_K + 1),
        "d": 1 / (RRF_K + 3),
    }
    assert [h.id for h in fused] == ["a", "c", "b", "d"]
    assert all(math.isclose(h.score or 0, expected[h.id]) for h in fused)
    assert [h.rank for h in fused] == [1, 2, 3, 4]


def test_rrf_weights_and_k() -> None:
    lexical, dense = ranked(["a", "b"]), ranked(["b", "a"])
    assert [h.id for h in reciprocal_rank_fusion([lexical, dense], weights=(2, 1))] == ["a", "b"]
    assert [h.id for h in reciprocal_rank_fusion([lexical, dense], weights=(1, 2))] == ["b", "a"]
    fused = reciprocal_rank_fusion([lexical], k=0)
    assert [h.score for h in fused] == [1.0, 0.5]


def test_ties_break_on_best_rank_then_index_and_id() -> None:
    # a and b each appear once at rank 1: equal RRF scores, equal best rank -> id order
    fused = reciprocal_rank_fusion([ranked(["b"]), ranked(["a"])])
    assert [h.id for h in fused] == ["a", "b"]
    same_id = reciprocal_rank_fusion([ranked(["x"], index="z"), ranked(["x"], index="y")])
    assert [(h.index, h.id) for h in same_id] == [("y", "x"), ("z", "x")]


def test_linear_fusion_blends_min_max_scores() -> None:
    lexical = ranked(["a", "b", "c"], scores=[12.0, 7.0, 2.0])  # -> 1.0, 0.5, 0.0
    dense = ranked(["c", "b"], scores=[0.9, 0.7])  # -> 1.0, 0.0
    fused = linear_fusion([lexical, dense], weights=(0.6, 0.4))
    scores = {h.id: h.score for h in fused}
    assert scores == pytest.approx({"a": 0.6, "b": 0.3, "c": 0.4})
    assert [h.id for h in fused] == ["a", "c", "b"]


def test_linear_fusion_constant_or_missing_scores_count_as_top() -> None:
    flat = ranked(["a", "b"], scores=[3.0, 3.0])
    assert [h.score for h in linear_fusion([flat])] == [1.0, 1.0]
    unscored = [Hit("i", "a", None, 1), Hit("i", "b", None, 2)]
    assert [h.id for h in linear_fusion([unscored])] == ["a", "b"]


def test_fused_hit_keeps_fields_of_the_first_list() -> None:
    lexical = [Hit("i", "a", 1.0, 1, {"text": "lexical copy"}, {"src": 1})]
    dense = [Hit("i", "a", 0.5, 1, {"text": "dense copy"})]
    (hit,) = reciprocal_rank_fusion([lexical, dense])
    assert hit.fields == {"text": "lexical copy"} and hit.source == {"src": 1}


@pytest.mark.parametrize("fuse", [reciprocal_rank_fusion, linear_fusion])
def test_weights_must_match_lists(fuse) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError):
        fuse([ranked(["a"]), ranked(["b"])], weights=(1.0,))
    with pytest.raises(ConfigurationError):
        fuse([ranked(["a"])], weights=(-1.0,))


def test_empty_inputs() -> None:
    assert reciprocal_rank_fusion([]) == []
    assert linear_fusion([[], []]) == []


@settings(max_examples=200, deadline=None)
@given(lists=st.lists(hit_list(), min_size=1, max_size=3), use_rrf=st.booleans())
def test_fusion_properties(lists: list[list[Hit]], use_rrf: bool) -> None:
    fused = reciprocal_rank_fusion(lists) if use_rrf else linear_fusion(lists)
    keys = [h.key for h in fused]
    assert len(keys) == len(set(keys))
    assert set(keys) == {h.key for hits in lists for h in hits}
    assert [h.rank for h in fused] == list(range(1, len(fused) + 1))
    scores = [h.score for h in fused]
    assert all(s is not None and math.isfinite(s) for s in scores)
    assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]
    # a pure function: same input, same output, inputs untouched
    again = reciprocal_rank_fusion(lists) if use_rrf else linear_fusion(lists)
    assert again == fused


# ------------------------------------------------------------ HybridStage


class TwoListConnector:
    """A Connector with a fixed lexical and a fixed dense ranking; records requests."""

    def __init__(self, lexical: list[str], dense: list[str]) -> None:
        self.lists = {"lexical": lexical, "dense": dense}
        self.requests: list[SearchRequest] = []

    def search(self, request: SearchRequest) -> list[Hit]:
        self.requests.append(request)
        ids = self.lists["dense" if request.knn is not None else "lexical"]
        return ranked(ids[: request.size])

    def close(self) -> None:
        pass


class FixedEncoder:
    dimension = 3

    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, texts):  # type: ignore[no-untyped-def]
        self.seen.extend(texts)
        return [[0.6, 0.8, 0.0] for _ in texts]


def test_hybrid_stage_issues_bm25_and_knn_and_fuses() -> None:
    connector = TwoListConnector(["a", "b", "c"], ["c", "d", "a"])
    encoder = FixedEncoder()
    stage = HybridStage(connector, encoder, "embedding", depth=10)
    fused = stage.retrieve("cats", size=3, filters=[{"term": {"lang": "en"}}])
    lexical_req, dense_req = connector.requests
    assert lexical_req.knn is None and lexical_req.query == "cats" and lexical_req.size == 10
    assert dense_req.knn == KnnQuery(field="embedding", vector=(0.6, 0.8, 0.0), k=10, num_candidates=20)
    assert lexical_req.filters == dense_req.filters == ({"term": {"lang": "en"}},)
    assert dense_req.body is None
    assert encoder.seen == ["cats"]
    assert [h.id for h in fused] == ["a", "c", "b"]  # d fused 4th, cut by size


def test_hybrid_stage_order_does_not_depend_on_size() -> None:
    lexical = [f"l{i}" for i in range(30)] + ["x"]
    dense = ["x"] + [f"d{i}" for i in range(30)]
    stage = HybridStage(TwoListConnector(lexical, dense), FixedEncoder(), "v", fusion="linear", depth=40)
    big = stage.retrieve("q", size=40)
    for size in (1, 5, 17):
        assert stage.retrieve("q", size=size) == big[:size]


async def test_hybrid_stage_async_matches_sync() -> None:
    stage = HybridStage(TwoListConnector(["a", "b"], ["b", "c"]), FixedEncoder(), "v")
    assert await stage.aretrieve("q", size=3) == stage.retrieve("q", size=3)


@pytest.mark.parametrize(
    "kwargs", [{"fusion": "max"}, {"alpha": 1.5}, {"vector_field": ""}, {"depth": 0}]
)
def test_hybrid_stage_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"vector_field": "v", **kwargs}
    with pytest.raises(ConfigurationError):
        HybridStage(TwoListConnector([], []), FixedEncoder(), **args)  # type: ignore[arg-type]
