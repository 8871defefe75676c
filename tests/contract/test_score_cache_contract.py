"""One contract for every score cache: the in-process LRU and Redis pass the same tests.

As Haystack runs one document-store suite against every store, each test here
gets ``harness`` (parametrized over the implementations) and builds its caches
with ``harness.make(...)``, so a new cache joins by adding one entry to
``_HARNESSES``. The LRU runs everywhere; Redis runs against the session's real
``redis-server`` (tests/fixtures/servers.py) and is marked ``integration``.
``NullScoreCache`` is deliberately not here: it caches nothing by design.

What each implementation documents beyond the shared contract (the LRU's entry
bound, Redis' TTL, Redis' faults) is tested at the end, on that implementation
only (``indirect`` parametrization), so no test is skipped to express it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from secondpass.pipeline.cache import (
    InstrumentedScoreCache,
    LRUScoreCache,
    RedisScoreCache,
    cache_key,
    cache_keys,
    is_cacheable,
)
from secondpass.pipeline.protocols import ScoreCache
from secondpass.servers import LocalRedis
from secondpass.types import PassageScore

LRU = pytest.param("lru", id="lru")
REDIS = pytest.param("redis", id="redis", marks=pytest.mark.integration)

FP = "cross-encoder|model=m|revision=-"
SCORE = PassageScore(raw=1.5, normalized=0.82, tokens_in=40, tokens_scored=32, truncated=True)
# Every field, awkward floats included: JSON (Redis) must give back exactly the same values.
SCORES = [
    SCORE,
    PassageScore(
        raw=-2.25, normalized=0.095, tokens_in=700, tokens_scored=512, truncated=True, chunks=8
    ),
    PassageScore(raw=0.1 + 0.2, normalized=5e-324, tokens_in=0, tokens_scored=0),
    PassageScore(raw=-1234.5678901234567, normalized=1.0, tokens_in=1, tokens_scored=1, chunks=1),
    PassageScore(raw=1e300, normalized=1e-300, tokens_in=2**40, tokens_scored=2**31, chunks=3),
    PassageScore(raw=2.0, normalized=0.0),
]


@dataclass
class Harness:
    """Builds caches of one implementation; every cache it built is closed after the test."""

    name: str
    build: Callable[..., InstrumentedScoreCache]
    shared: bool  # do two instances see each other's entries (one backend behind both)?
    made: list[InstrumentedScoreCache] = field(default_factory=list)

    def make(self, **options: Any) -> InstrumentedScoreCache:
        cache = self.build(**options)
        self.made.append(cache)
        return cache


def _lru(request: pytest.FixtureRequest) -> Harness:
    def build(**options: Any) -> LRUScoreCache:
        return LRUScoreCache(**{"max_entries": 1000, **options})

    return Harness("lru", build, shared=False)


def _redis(request: pytest.FixtureRequest) -> Harness:
    server: LocalRedis = request.getfixturevalue("redis_server")
    prefix = f"secondpass-contract:{uuid.uuid4().hex}:"  # this test's own key space

    def build(**options: Any) -> RedisScoreCache:
        settings: dict[str, Any] = {
            "url": server.url,
            "key_prefix": prefix,
            "ttl_s": 600,
            "timeout_s": 2.0,  # generous: a loaded 2-core CI box
            "connect_timeout_s": 2.0,
            "cooldown_s": 0.0,
        }
        return RedisScoreCache(**{**settings, **options})

    return Harness("redis", build, shared=True)


_HARNESSES: dict[str, Callable[[pytest.FixtureRequest], Harness]] = {"lru": _lru, "redis": _redis}


@pytest.fixture(params=[LRU, REDIS])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    made = _HARNESSES[request.param](request)
    yield made
    for cache in made.made:
        cache.close()


# ----------------------------------------------------------------- the contract


def test_is_a_score_cache_that_counts(harness: Harness) -> None:
    cache = harness.make()
    assert isinstance(cache, ScoreCache)
    assert isinstance(cache, InstrumentedScoreCache)
    assert cache.stats.snapshot() == dict.fromkeys(cache.stats.NAMES, 0)


def test_get_many_returns_only_the_asked_keys_that_are_present(harness: Harness) -> None:
    cache = harness.make()
    cache.set_many({"a": SCORES[0], "b": SCORES[1], "c": SCORES[2]})
    assert cache.get_many(["a", "missing", "c"]) == {"a": SCORES[0], "c": SCORES[2]}
    assert cache.get_many(["b", "b"]) == {"b": SCORES[1]}
    assert cache.get_many(["missing", "also-missing"]) == {}
    assert cache.get_many([]) == {}


def test_set_then_get_round_trips_every_field_exactly(harness: Harness) -> None:
    cache = harness.make()
    stored = {f"k{n}": score for n, score in enumerate(SCORES)}
    assert all(is_cacheable(score) for score in SCORES)
    cache.set_many(stored)
    got = cache.get_many(list(stored))
    assert got == stored
    for score in got.values():
        assert type(score) is PassageScore
        assert type(score.raw) is float and type(score.normalized) is float
        assert type(score.truncated) is bool and type(score.chunks) is int


def test_the_last_write_of_a_key_wins(harness: Harness) -> None:
    cache = harness.make()
    cache.set_many({"k": SCORES[0]})
    cache.set_many({"k": SCORES[1]})
    assert cache.get_many(["k"]) == {"k": SCORES[1]}


def test_counters_move_per_key(harness: Harness) -> None:
    cache = harness.make()
    cache.set_many({"a": SCORE, "b": SCORE})
    cache.get_many(["a", "x", "y"])
    stats = cache.stats.snapshot()
    assert (stats["writes"], stats["hits"], stats["misses"], stats["errors"]) == (2, 1, 2, 0)


def test_non_finite_scores_are_never_written(harness: Harness) -> None:
    cache = harness.make()
    bad = {
        "a": PassageScore(raw=float("nan"), normalized=0.5),
        "b": PassageScore(1.0, float("inf")),
    }
    assert not any(is_cacheable(s) for s in bad.values())
    cache.set_many({**bad, "c": SCORE})  # refused and counted, never raised
    assert cache.get_many(["a", "b", "c"]) == {"c": SCORE}
    stats = cache.stats.snapshot()
    assert stats["writes"] == 1 and stats["errors"] == 2


def test_malformed_values_are_refused_without_raising(harness: Harness) -> None:
    cache = harness.make()
    malformed = {
        "negative-count": PassageScore(1.0, 0.7, tokens_in=-1),
        "no-chunks": PassageScore(1.0, 0.7, chunks=0),  # blank passages: never cached
        "not-a-score": "1.0",
    }
    cache.set_many(malformed)  # type: ignore[arg-type]
    assert cache.get_many(list(malformed)) == {}
    assert cache.stats.snapshot()["errors"] == len(malformed)


def test_keys_from_cache_keys_are_stable_and_work_as_stored(harness: Harness) -> None:
    # Pinned: a change here silently invalidates every shared cache on upgrade.
    golden = "d709b587c0b232c162f35875b3e026fdcc7bc70aba1aa6d282c553c1161cc3b0"
    assert cache_key(FP, "what do cats eat", "docs", "7", "Cats purr.") == golden
    items = [
        ("docs", "7", "Cats purr."),
        ("news", "7", "Cats purr."),  # same id and text, another index: another entry
        ("docs", "8", "東京 🚀 café \ud800"),  # a lone surrogate (possible in JSON input)
    ]
    keys = cache_keys(FP, "what do cats eat", items)
    assert keys[0] == golden
    assert keys == [cache_key(FP, "what do cats eat", *item) for item in items]
    assert len(set(keys)) == 3 and all(len(k) == 64 and int(k, 16) >= 0 for k in keys)
    cache = harness.make()
    cache.set_many(dict(zip(keys, SCORES, strict=False)))
    assert cache.get_many(keys) == dict(zip(keys, SCORES, strict=False))
    other_query = cache_keys(FP, "what do dogs eat", items)
    assert cache.get_many(other_query) == {}


def test_two_instances_share_entries_only_through_a_shared_backend(harness: Harness) -> None:
    first, second = harness.make(), harness.make()
    first.set_many({"k": SCORE})
    assert second.get_many(["k"]) == ({"k": SCORE} if harness.shared else {})


# ------------------------------------------------- what each documents on its own


@pytest.mark.parametrize("harness", [LRU], indirect=True)
def test_lru_evicts_least_recently_used(harness: Harness) -> None:
    cache = harness.make(max_entries=2)
    cache.set_many({"a": SCORE, "b": SCORE})
    assert cache.get_many(["a"]) == {"a": SCORE}  # "a" is now the most recent
    cache.set_many({"c": SCORE})
    assert set(cache.get_many(["a", "b", "c"])) == {"a", "c"}
    assert len(cache) == 2  # type: ignore[arg-type]
    stats = cache.stats.snapshot()
    assert stats["evictions"] == 1
    assert (stats["hits"], stats["misses"], stats["writes"]) == (3, 1, 3)


@pytest.fixture
def redis_admin(redis_server: LocalRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=10)
    yield client
    client.close()


@pytest.mark.parametrize("harness", [REDIS], indirect=True)
def test_redis_sets_the_ttl_on_every_write_or_none(
    harness: Harness, redis_admin: redis.Redis
) -> None:
    cache = harness.make(ttl_s=600)
    assert isinstance(cache, RedisScoreCache)
    cache.set_many({"a": SCORE, "b": SCORE})
    for key in ("a", "b"):
        assert 0 < redis_admin.ttl(cache.key_prefix + key) <= 600
    forever = harness.make(ttl_s=None)
    forever.set_many({"c": SCORE})
    assert redis_admin.ttl(cache.key_prefix + "c") == -1  # exists, no expiry


@pytest.mark.parametrize("harness", [REDIS], indirect=True)
def test_redis_fault_is_misses_never_an_exception_and_heals(
    harness: Harness, redis_server: LocalRedis
) -> None:
    cache = harness.make(timeout_s=0.2, connect_timeout_s=0.2)
    cache.set_many({"k": SCORE})
    redis_server.pause()  # frozen process: the kernel still accepts, nobody answers
    try:
        assert cache.get_many(["k", "other"]) == {}
        cache.set_many({"k2": SCORE})
    finally:
        redis_server.resume()
    stats = cache.stats.snapshot()
    assert stats["errors"] >= 1 and stats["misses"] == 2
    assert cache.get_many(["k"]) == {"k": SCORE}, "cooldown 0: back as soon as Redis answers"
