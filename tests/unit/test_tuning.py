"""The pure parts of ``secondpass tune``: the seeded split by query and hard-negative mining."""

from __future__ import annotations

import pytest

from secondpass.tuning import (
    Pair,
    TuningDataError,
    check_pairs,
    mine_examples,
    ranking_samples,
    split_queries,
)


def test_split_is_seeded_disjoint_and_order_independent() -> None:
    ids = [f"q{i}" for i in range(20)]
    train, dev = split_queries(ids, dev_fraction=0.25, seed=3)
    assert (len(train), len(dev)) == (15, 5)
    assert set(train).isdisjoint(dev) and set(train) | set(dev) == set(ids)
    assert split_queries(reversed(ids), dev_fraction=0.25, seed=3) == (train, dev)
    assert split_queries(ids, dev_fraction=0.25, seed=4) != (train, dev)


def test_split_refuses_too_few_queries_and_bad_fractions() -> None:
    with pytest.raises(TuningDataError, match="3 judged queries"):
        split_queries(["a", "b", "c"], dev_fraction=0.2, seed=0)
    with pytest.raises(Exception, match="--dev-fraction"):
        split_queries(["a", "b", "c", "d"], dev_fraction=1.0, seed=0)


def test_mining_keeps_first_stage_order_and_skips_judged_and_missing() -> None:
    passages = {d: f"text {d}" for d in ("r1", "r2", "n1", "n2", "n3", "z")}
    qrels = {"q": {"r1": 1, "r2": 2, "z": 0}}
    hits = {"q": ["n2", "r1", "gone", "z", "n1", "n3"]}
    pairs = mine_examples(["q"], {"q": "query"}, qrels, hits, passages, negatives_per_query=3)
    assert [(p.passage, p.label) for p in pairs] == [
        ("text r1", 1.0), ("text r2", 1.0), ("text n2", 0.0), ("text z", 0.0), ("text n1", 0.0),
    ]  # fmt: skip
    [sample] = ranking_samples(["q"], {"q": "query"}, qrels, hits, passages)
    assert sample.positives == ("text r1", "text r2")
    assert sample.documents[0] == "text n2" and len(sample.documents) == 5


def test_check_pairs_names_the_missing_class() -> None:
    with pytest.raises(TuningDataError, match="no hard negatives"):
        check_pairs([Pair("q", "p", 1.0)], "train")
    with pytest.raises(TuningDataError, match="no relevant documents"):
        check_pairs([Pair("q", "p", 0.0)], "train")
