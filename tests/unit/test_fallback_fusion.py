"""The offline fallback ranks by RRF of its bi-encoder order and the first-stage order.

Alone, the bi-encoder fallback made SciFact's hybrid first stage worse; fused, a
document the first stage put first is not sunk by one bad bi-encoder score.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping, Sequence

import pytest

from secondpass.errors import ConfigurationError
from secondpass.pipeline.dense import BiEncoderScorer, SentenceTransformerEncoder
from secondpass.pipeline.fusion import FirstStageFusion, first_stage_fusion
from secondpass.pipeline.models import FALLBACK_FUSION
from secondpass.pipeline.retriever import Retriever
from secondpass.types import Hit, PassageScore

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class TableScorer:
    """Scores each passage from a fixed table; carries a fusion like the fallback does."""

    fingerprint = "table-scorer/v1"

    def __init__(self, table: Mapping[str, float], fusion: FirstStageFusion | None) -> None:
        self.table = table
        self.first_stage_fusion = fusion

    def score(self, query, passages, *, timings=None):  # type: ignore[no-untyped-def]
        return self.score_pairs([(query, p) for p in passages], timings=timings)

    def score_pairs(self, pairs, *, timings=None):  # type: ignore[no-untyped-def]
        return [PassageScore(raw=self.table[p], normalized=self.table[p]) for _, p in pairs]


def _hits(texts: Sequence[str]) -> list[Hit]:
    return [
        Hit(index="docs", id=f"d{n}", score=100.0 - n, rank=n + 1, fields={"body": text})
        for n, text in enumerate(texts)
    ]


def _ranked(scorer: object, hits: list[Hit], **kwargs: object) -> list[tuple[str, float | None]]:
    with Retriever(scorer=scorer, window=len(hits), **kwargs) as retriever:  # type: ignore[arg-type]
        result = retriever.rerank_hits("the query", hits)
    assert result.status == "ok"
    return [(r.hit.id, r.score) for r in result.hits]


def test_fused_order_equals_an_independent_rrf_computation() -> None:
    rng = random.Random(7)
    texts = [f"passage {n}" for n in range(40)]
    table = {text: rng.random() for text in texts}
    fusion = FirstStageFusion(k=FALLBACK_FUSION.k, first_stage_weight=1.0, scorer_weight=0.7)
    got = _ranked(TableScorer(table, fusion), _hits(texts))

    # RRF written out: 1-based first-stage position p, 1-based scorer rank r, ties by p.
    by_scorer = sorted(range(len(texts)), key=lambda p: -table[texts[p]])
    scorer_rank = {p: r for r, p in enumerate(by_scorer, start=1)}
    fused = {
        p: 1.0 / (fusion.k + p + 1) + 0.7 / (fusion.k + scorer_rank[p])
        for p in range(len(texts))
    }
    expected = sorted(fused, key=lambda p: (-fused[p], p))
    assert [doc for doc, _ in got] == [f"d{p}" for p in expected]
    for doc, score in got:
        assert score is not None and math.isclose(score, fused[int(doc[1:])], rel_tol=1e-12)
    # both inputs matter: the fused order is neither the first stage's nor the scorer's
    assert expected != list(range(len(texts))) and expected != by_scorer


def test_min_score_reads_the_scorers_own_value_not_the_fused_one() -> None:
    texts = ["a", "b", "c"]
    table = {"a": 0.2, "b": 0.9, "c": 0.6}
    got = _ranked(TableScorer(table, FALLBACK_FUSION), _hits(texts), min_score=0.5)
    assert [doc for doc, _ in got] == ["d1", "d2"]  # fused values are ~0.03, all below 0.5


def test_a_scorer_without_fusion_ranks_by_its_scores_alone() -> None:
    table = {"a": 0.2, "b": 0.9, "c": 0.6}
    assert first_stage_fusion(TableScorer(table, None)) is None
    got = _ranked(TableScorer(table, None), _hits(["a", "b", "c"]))
    assert got == [("d1", 0.9), ("d2", 0.6), ("d0", 0.2)]


@pytest.mark.parametrize(
    "kwargs",
    [{"k": -1}, {"first_stage_weight": -0.1}, {"first_stage_weight": 0.0, "scorer_weight": 0.0}],
)
def test_bad_fusion_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        FirstStageFusion(**kwargs)  # type: ignore[arg-type]


QUERY = "statins lower LDL cholesterol"
RELEVANT = (
    "HMG-CoA reductase inhibitors cut low-density lipoprotein levels in plasma by about a third "
    "in a randomised trial of 4,000 patients."
)
# Lexical echoes of the query that say nothing about it: a bi-encoder likes them.
ECHOES = [
    "Statins and cholesterol: a history of the names.",
    "LDL cholesterol statins lower: a word list.",
    "Cholesterol is a sterol; statins is a plural noun.",
    "Lower LDL? Statins? Cholesterol? Questions people type.",
    "The statins cholesterol LDL lower tagline of a pharmacy shop.",
    "Cholesterol statins LDL lower cholesterol statins LDL lower.",
    "A statins-and-cholesterol crossword for beginners.",
    "Why LDL cholesterol and statins trend on search engines.",
]


@pytest.fixture(scope="module")
def packaged_encoder() -> SentenceTransformerEncoder:
    encoder = SentenceTransformerEncoder(device="cpu")
    encoder.warm_up()
    return encoder


def test_fallback_keeps_a_first_stage_top_relevant_doc_up(packaged_encoder) -> None:
    hits = _hits([RELEVANT, *ECHOES])
    alone = [doc for doc, _ in _ranked(BiEncoderScorer(packaged_encoder), hits)]
    fused = [
        doc
        for doc, _ in _ranked(BiEncoderScorer(packaged_encoder, first_stage_fusion=FALLBACK_FUSION), hits)
    ]
    # the real bi-encoder sinks the relevant abstract to the bottom of the window...
    assert alone.index("d0") >= len(hits) - 2
    # ...while the fused ranking keeps it in the top 2 (see the next test for why)
    assert fused.index("d0") <= 1
    assert fused != alone


@pytest.mark.parametrize("size", [2, 3, 9, 20, 100])
def test_the_fallbacks_first_stage_top_hit_ends_at_worst_second(size: int) -> None:
    # k=1, weights 1 / 0.5: the #1 gets at least 1/2 + 0.5/(1 + size); only the first
    # stage's #2 with the bi-encoder's #1 (1/3 + 0.5/2) can pass it; ties keep first-stage order.
    rng = random.Random(size)
    for _ in range(20):
        texts = [f"passage {n}" for n in range(size)]
        table = {text: rng.random() for text in texts}
        table[texts[0]] = -1.0  # the bi-encoder puts the first stage's #1 last
        got = [doc for doc, _ in _ranked(TableScorer(table, FALLBACK_FUSION), _hits(texts))]
        assert got.index("d0") <= 1


def test_the_evaluation_page_example_runs() -> None:
    from tests.docs_examples import python_blocks

    [block] = [b for b in python_blocks("evaluation.md") if "FALLBACK_FUSION.fuse" in b]
    exec(compile(block, "docs/evaluation.md", "exec"), {"__name__": "__docs__"})
