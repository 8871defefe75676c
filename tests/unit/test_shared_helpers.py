"""Helpers that replaced repeated code keep the behaviour of every place that now calls them.

Each test pins what callers saw before the code was written once: the exact
refusals of the query allow-list, ``Scorer.score`` on top of ``score_pairs``, the
engines' launcher variables, the local servers' addresses and load-error summaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from secondpass.connectors.confine import Confinement, RefusedQueryError
from secondpass.errors import ServerStartError
from secondpass.pipeline.onnx_backend import error_summary
from secondpass.pipeline.protocols import Scorer
from secondpass.servers import LocalEngine, LocalRedis
from secondpass.servers.versions import ELASTICSEARCH, OPENSEARCH
from secondpass.types import PassageScore

CONFINE = Confinement(fields=["title", "text"], vector_field="embedding")
KNN = {"field": "embedding", "query_vector": [1.0], "k": 1, "num_candidates": 2}

# (filters, body) -> (JSON path, message): the texts clients got before the shared helpers.
REFUSALS: list[tuple[Any, Any, str, str]] = [
    ([[1]], None, "filters[0]", "a query clause must be an object, got a list"),
    (
        [{"term": {"title": "a"}, "match": {}}],
        None,
        "filters[0]",
        "a query clause must have exactly one key (its name), got 2",
    ),
    (
        (),
        {"query": {"range": [1]}},
        "body.query.range",
        "must be an object naming exactly one field",
    ),
    (
        (),
        {"query": {"range": {"title": {"gt": 1}, "text": {"gt": 2}}}},
        "body.query.range",
        "must be an object naming exactly one field",
    ),
    (
        (),
        {"sort": ["title", {"title": "asc", "text": "desc"}]},
        "body.sort[1]",
        "a sort must be a field name or an object naming exactly one field",
    ),
    (
        (),
        {"sort": 5},
        "body.sort",
        "a sort must be a field name or an object naming exactly one field",
    ),
    (
        (),
        {"knn": [KNN, {**KNN, "field": "x"}]},
        "body.knn[1].field",
        '"x" is not the configured vector field "embedding"',
    ),
    (
        (),
        {"query": {"knn": {"a": {}, "b": {}}}},
        "body.query.knn",
        "must be an object naming exactly one vector field",
    ),
    (
        (),
        {"query": {"term": ["x"]}},
        "body.query.term",
        "must be an object naming one field, got a list",
    ),
    (
        (),
        {"query": {"term": {"title": "a", "text": "b"}}},
        "body.query.term",
        "must name exactly one field, got 2 keys",
    ),
    (
        (),
        {"query": {"bool": {"must": [{"match_all": {}}, 3]}}},
        "body.query.bool.must[1]",
        "a query clause must be an object, got a number",
    ),
]


@pytest.mark.parametrize(("filters", "body", "path", "message"), REFUSALS)
def test_single_entry_and_list_options_refuse_as_before(
    filters: Any, body: Any, path: str, message: str
) -> None:
    with pytest.raises(RefusedQueryError) as info:
        CONFINE.check(filters=filters, body=body)
    assert info.value.path == path
    assert str(info.value) == f"{path}: {message}"


def test_one_or_a_list_of_sorts_and_knn_searches_pass() -> None:
    CONFINE.check(body={"sort": {"title": "asc"}, "knn": KNN})
    CONFINE.check(body={"sort": ["title", {"text": {"order": "desc"}}], "knn": [KNN, KNN]})


class _PairScorer(Scorer):
    """Implements only ``score_pairs``: ``score`` comes from the protocol."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str]]] = []

    @property
    def fingerprint(self) -> str:
        return "pair-scorer"

    def score_pairs(
        self, pairs: Sequence[tuple[str, str]], *, timings: dict[str, float] | None = None
    ) -> list[PassageScore]:
        self.calls.append(list(pairs))
        if timings is not None:
            timings["model_ms"] = timings.get("model_ms", 0.0) + 1.0
        return [PassageScore(raw=float(len(p)), normalized=0.5) for _, p in pairs]


def test_scorer_protocol_scores_one_query_through_score_pairs() -> None:
    scorer = _PairScorer()
    timings: dict[str, float] = {}
    scores = scorer.score("q", ["a", "bbb", ""], timings=timings)
    assert [s.raw for s in scores] == [1.0, 3.0, 0.0]
    assert scorer.calls == [[("q", "a"), ("q", "bbb"), ("q", "")]]
    assert timings == {"model_ms": 1.0}
    assert isinstance(scorer, Scorer)


@pytest.mark.parametrize(
    ("spec", "prefix", "config_file", "executable"),
    [
        (ELASTICSEARCH, "ES", "elasticsearch.yml", "bin/elasticsearch"),
        (OPENSEARCH, "OPENSEARCH", "opensearch.yml", "bin/opensearch"),
    ],
)
def test_engine_launcher_names_follow_the_engine(
    spec: Any, prefix: str, config_file: str, executable: str
) -> None:
    assert [spec.env(s) for s in ("JAVA_HOME", "JAVA_OPTS", "PATH_CONF", "TMPDIR")] == [
        f"{prefix}_JAVA_HOME",
        f"{prefix}_JAVA_OPTS",
        f"{prefix}_PATH_CONF",
        f"{prefix}_TMPDIR",
    ]
    assert (spec.config_file, spec.executable) == (config_file, executable)


def test_local_servers_have_no_url_before_a_port_and_one_on_loopback_after() -> None:
    redis, node = LocalRedis(), LocalEngine("opensearch")
    for server in (redis, node):
        with pytest.raises(ServerStartError, match="no port until it is started"):
            _ = server.url
    assert LocalRedis(port=6390).url == "redis://127.0.0.1:6390/0"
    assert LocalEngine("opensearch", port=9201).url == "http://127.0.0.1:9201"


def test_claimed_workdir_and_port_are_kept_for_restarts() -> None:
    redis = LocalRedis()
    try:
        workdir, port = redis._claim_workdir_and_port("redis")
        assert workdir.is_dir() and workdir.name.startswith("secondpass-redis-")
        assert redis._claim_workdir_and_port("redis") == (workdir, port)
        assert redis.url == f"redis://127.0.0.1:{port}/0"
    finally:
        redis.close()
    assert not workdir.exists()


def test_error_summary_names_the_type_and_first_line_even_without_a_message() -> None:
    assert error_summary(RuntimeError("bad graph\nnode 1\nnode 2")) == "RuntimeError: bad graph"
    assert error_summary(ValueError("x" * 400)) == "ValueError: " + "x" * 300
    assert error_summary(KeyError()) == "KeyError: "
