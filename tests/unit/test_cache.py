"""Score cache: keys, value validation and LRU behaviour."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.fixtures.cache import CountingScorer

from secondpass.config import CacheSettings
from secondpass.errors import ConfigurationError
from secondpass.pipeline.cache import (
    LRUScoreCache,
    NullScoreCache,
    RedisScoreCache,
    build_cache,
    cache_key,
    cache_keys,
    decode_score,
    encode_score,
)
from secondpass.pipeline.protocols import ScoreCache, Scorer
from secondpass.types import PassageScore

FP = "tiny/rev1|max_length=512|template={title} {body}|long=truncate"
SCORE = PassageScore(raw=1.5, normalized=0.82, tokens_in=40, tokens_scored=32, truncated=True)


# ----------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("q", "idx", "ab", "c"), ("q", "idx", "a", "bc")),  # id/text boundary
        (("q", "ab", "c", "t"), ("q", "a", "bc", "t")),  # index/id boundary
        (("qa", "b", "1", "t"), ("q", "ab", "1", "t")),  # query/index boundary
        (("q", "i", "", "1t"), ("q", "i", "1", "t")),  # empty component
        (("q", "i", "1", "x\x00y"), ("q", "i", "1\x00x", "y")),  # separator in the data
    ],
)
def test_shifted_boundaries_give_different_keys(
    left: tuple[str, str, str, str], right: tuple[str, str, str, str]
) -> None:
    # plain or separator-joined concatenation would collide
    assert "".join(left) == "".join(right) or "\x00".join(left) == "\x00".join(right)
    assert cache_key(FP, *left) != cache_key(FP, *right)


@given(
    st.lists(st.text(max_size=6), min_size=5, max_size=5),
    st.lists(st.text(max_size=6), min_size=5, max_size=5),
)
def test_keys_are_equal_only_for_equal_tuples(a: list[str], b: list[str]) -> None:
    assert (cache_key(*a) == cache_key(*b)) == (a == b)


def test_every_component_changes_the_key() -> None:
    base = ("fp", "query", "docs", "7", "the text")
    keys = {cache_key(*base)}
    for position in range(5):
        changed = list(base)
        changed[position] += "!"
        keys.add(cache_key(*changed))
    assert len(keys) == 6


def test_scorer_settings_are_part_of_the_key() -> None:
    args = ("query", "docs", "7", "text")
    assert cache_key("m@r1|max_length=512", *args) != cache_key("m@r1|max_length=256", *args)
    assert cache_key("m@r1|long=truncate", *args) != cache_key("m@r1|long=chunk", *args)


def test_batch_keys_equal_single_keys() -> None:
    items = [("docs", "1", "alpha"), ("news", "2", "béta \ud800 surrogate"), ("docs", "3", "")]
    assert cache_keys(FP, "q", items) == [cache_key(FP, "q", *item) for item in items]


def test_key_is_a_sha256_hex_digest() -> None:
    key = cache_key(FP, "q", "docs", "1", "text")
    assert len(key) == 64 and int(key, 16) >= 0


# --------------------------------------------------------------------------- values


def test_encoding_round_trips_every_field_compactly() -> None:
    data = encode_score(SCORE)
    assert b" " not in data
    assert decode_score(data) == SCORE
    assert decode_score(data.decode()) == SCORE


@pytest.mark.parametrize(
    "stored",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"raw":NaN,"normalized":0.5,"tokens_in":0,"tokens_scored":0,"truncated":false,"chunks":1}',
        b'{"raw":Infinity,"normalized":0.5,"tokens_in":0,"tokens_scored":0,"truncated":false,"chunks":1}',
        b'{"raw":1e999,"normalized":0.5,"tokens_in":0,"tokens_scored":0,"truncated":false,"chunks":1}',
        b'{"raw":"1.0","normalized":0.5,"tokens_in":0,"tokens_scored":0,"truncated":false,"chunks":1}',
        b'{"raw":true,"normalized":0.5,"tokens_in":0,"tokens_scored":0,"truncated":false,"chunks":1}',
        b'{"raw":1.0,"normalized":0.5,"tokens_in":-1,"tokens_scored":0,"truncated":false,"chunks":1}',
        b'{"raw":1.0,"normalized":0.5,"tokens_in":1.5,"tokens_scored":0,"truncated":false,"chunks":1}',
        b'{"raw":1.0,"normalized":0.5,"tokens_in":0,"tokens_scored":0,"truncated":0,"chunks":1}',
        b'{"raw":1.0,"normalized":0.5,"tokens_in":0,"tokens_scored":0,"truncated":false,"chunks":0}',
        b'{"raw":1.0,"normalized":0.5,"tokens_in":0,"tokens_scored":0,"truncated":false}',
        b'{"raw":1.0,"normalized":0.5,"tokens_in":0,"tokens_scored":0,"truncated":false,"chunks":1,"x":1}',
        b"\xff\xfe",
    ],
)
def test_corrupt_values_are_rejected(stored: bytes) -> None:
    assert decode_score(stored) is None


def test_integer_scores_are_accepted_as_floats() -> None:
    stored = (
        b'{"raw":2,"normalized":1,"tokens_in":3,"tokens_scored":3,"truncated":false,"chunks":1}'
    )
    score = decode_score(stored)
    assert score is not None and isinstance(score.raw, float) and score.raw == 2.0


# ------------------------------------------------------------------------------ LRU


def test_lru_rejects_a_zero_bound() -> None:
    with pytest.raises(ConfigurationError, match="max_entries"):
        LRUScoreCache(max_entries=0)


def test_lru_is_consistent_under_threads() -> None:
    cache = LRUScoreCache(max_entries=50)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(500):
                key = f"{worker}:{i % 80}"
                cache.set_many({key: SCORE})
                cache.get_many([key, f"{worker}:{(i + 7) % 80}"])
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cache) == 50
    stats = cache.stats.snapshot()
    assert stats["hits"] + stats["misses"] == 4 * 500 * 2
    assert stats["writes"] == 4 * 500


def test_every_cache_satisfies_the_protocol() -> None:
    for cache in (LRUScoreCache(), NullScoreCache(), RedisScoreCache(url="redis://127.0.0.1:1/0")):
        assert isinstance(cache, ScoreCache)
    assert isinstance(CountingScorer(), Scorer)


def test_null_cache_never_hits() -> None:
    cache = NullScoreCache()
    cache.set_many({"a": SCORE})
    assert cache.get_many(["a"]) == {}
    assert cache.stats.snapshot()["misses"] == 1


# ------------------------------------------------------------------- build / settings


def test_build_cache_picks_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(build_cache(CacheSettings(backend="none")), NullScoreCache)
    lru = build_cache(CacheSettings(backend="memory", max_entries=7))
    assert isinstance(lru, LRUScoreCache) and lru.max_entries == 7
    monkeypatch.setenv("SECONDPASS_CACHE_BACKEND", "redis")
    monkeypatch.setenv("SECONDPASS_CACHE_REDIS_URL", "redis://cache.internal:6380/2")
    monkeypatch.setenv("SECONDPASS_CACHE_REDIS_PASSWORD", "s3cret-pw")
    monkeypatch.setenv("SECONDPASS_CACHE_KEY_PREFIX", "sp:")
    redis_cache = build_cache(CacheSettings())
    assert isinstance(redis_cache, RedisScoreCache)
    assert redis_cache.key_prefix == "sp:"
    assert "s3cret-pw" not in repr(redis_cache)
    assert "s3cret-pw" not in repr(CacheSettings())


def test_redis_backend_needs_a_url() -> None:
    with pytest.raises(ConfigurationError, match="REDIS_URL"):
        build_cache(CacheSettings(backend="redis"))


def test_invalid_redis_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="invalid Redis URL"):
        RedisScoreCache(url="http://not-redis:80", password="pw")


def test_redis_url_credentials_stay_out_of_repr() -> None:
    cache = RedisScoreCache(url="redis://user:hunter2@127.0.0.1:6379/3")
    assert "hunter2" not in repr(cache) and "user" not in repr(cache)
    assert "127.0.0.1:6379/3" in repr(cache)


def test_unreachable_redis_is_all_misses_without_raising(caplog: pytest.LogCaptureFixture) -> None:
    # Port 1 on loopback refuses at once: a dead Redis must cost a miss, not an error.
    cache = RedisScoreCache(url="redis://127.0.0.1:1/0", cooldown_s=60.0, warn_interval_s=60.0)
    with caplog.at_level("WARNING", logger="secondpass.cache"):
        assert cache.get_many(["a", "b"]) == {}
        cache.set_many({"a": SCORE})  # cooling down: not even tried
        assert cache.get_many(["a"]) == {}
    stats = cache.stats.snapshot()
    assert stats["errors"] == 1 and stats["misses"] == 3 and stats["bypassed"] == 2
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "127.0.0.1:1/0" in warnings[0].getMessage()


def test_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    cache = RedisScoreCache(url="redis://127.0.0.1:1/0", cooldown_s=0.0, warn_interval_s=60.0)
    with caplog.at_level("DEBUG", logger="secondpass.cache"):
        for _ in range(5):
            assert cache.get_many(["a"]) == {}
    assert cache.stats.snapshot()["errors"] == 5
    assert sum(r.levelname == "WARNING" for r in caplog.records) == 1
    assert sum(r.levelname == "DEBUG" for r in caplog.records) == 4


# The scoring path through a cache (one lookup, one write-back, blanks, order,
# duplicates, faults) is the scoring engine's contract: tests/unit/test_engine.py.
