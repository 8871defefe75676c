"""RedisScoreCache against a real redis-server: sharing, TTL, auth and faults."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pydantic import SecretStr
from tests.fixtures.cache import CountingScorer

from secondpass.config import CacheSettings
from secondpass.pipeline.batcher import BatchingOptions
from secondpass.pipeline.cache import RedisScoreCache, build_cache, cache_key, encode_score
from secondpass.pipeline.engine import EngineResult, ScoringEngine
from secondpass.servers import LocalRedis
from secondpass.types import PassageScore

pytestmark = pytest.mark.integration


def _score(
    scorer: CountingScorer, cache: RedisScoreCache, query: str, items: list[tuple[str, str, str]]
) -> EngineResult:
    """One request through a scoring engine over ``cache``, the way every front-end scores."""
    with ScoringEngine(scorer=scorer, cache=cache, options=BatchingOptions(max_wait_ms=0.0)) as engine:
        return engine.score_sync(query, items)

SCORE = PassageScore(raw=-2.25, normalized=0.095, tokens_in=700, tokens_scored=512, truncated=True)
ITEMS = [
    ("docs", "1", "cats purr and cats sleep"),
    ("docs", "2", "dogs bark"),
    ("news", "9", "cats in the news"),
]
PASSWORD = "pw-" + uuid.uuid4().hex  # unique, so finding it anywhere means it leaked


@pytest.fixture
def admin(redis_server: LocalRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=10)
    yield client
    client.close()


def _cache(redis_server: LocalRedis, prefix: str, **overrides: Any) -> RedisScoreCache:
    options: dict[str, Any] = {
        "url": redis_server.url,
        "key_prefix": prefix,
        "ttl_s": 600,
        "timeout_s": 2.0,
        "connect_timeout_s": 2.0,
        "cooldown_s": 0.0,
    }
    options.update(overrides)
    return RedisScoreCache(**options)


def test_round_trip_stores_compact_json(
    redis_cache: RedisScoreCache, admin: redis.Redis, redis_key_prefix: str
) -> None:
    key = cache_key("fp", "q", "docs", "1", "text")
    assert redis_cache.get_many([key]) == {}
    redis_cache.set_many({key: SCORE})
    assert redis_cache.get_many([key, "absent"]) == {key: SCORE}
    assert admin.get(redis_key_prefix + key) == encode_score(SCORE)
    stats = redis_cache.stats.snapshot()
    assert (stats["hits"], stats["misses"], stats["writes"], stats["errors"]) == (1, 2, 1, 0)


def test_two_replicas_share_scores(redis_server: LocalRedis, redis_key_prefix: str) -> None:
    replica_a, replica_b = (_cache(redis_server, redis_key_prefix) for _ in range(2))
    scorer_a, scorer_b = CountingScorer(), CountingScorer()
    first = _score(scorer_a, replica_a, "cats", ITEMS)
    second = _score(scorer_b, replica_b, "cats", ITEMS)
    assert scorer_a.passages_scored == 3
    assert scorer_b.calls == []  # replica B never ran its model
    assert second.cache_hits == 3 and second.scores == first.scores
    replica_a.close()
    replica_b.close()


def test_settings_build_a_working_redis_cache(
    redis_server: LocalRedis, redis_key_prefix: str
) -> None:
    cache = build_cache(
        CacheSettings(
            backend="redis", redis_url=redis_server.url, key_prefix=redis_key_prefix, ttl_s=60
        )
    )
    cache.set_many({"k": SCORE})
    assert cache.get_many(["k"]) == {"k": SCORE}
    cache.close()


def test_corrupt_value_is_a_counted_miss_then_repaired(
    redis_cache: RedisScoreCache, admin: redis.Redis, redis_key_prefix: str
) -> None:
    scorer = CountingScorer()
    key = cache_key(scorer.fingerprint, "cats", *ITEMS[0])
    admin.set(redis_key_prefix + key, b'{"raw":NaN,"normalized":0.5}')
    result = _score(scorer, redis_cache, "cats", ITEMS[:1])
    assert result.cache_misses == 1 and scorer.passages_scored == 1
    stats = redis_cache.stats.snapshot()
    assert stats["corrupt"] == 1 and stats["errors"] == 1
    assert _score(scorer, redis_cache, "cats", ITEMS[:1]).cache_hits == 1  # overwritten


def test_concurrent_requests_share_the_pool(
    redis_server: LocalRedis, redis_key_prefix: str
) -> None:
    cache = _cache(redis_server, redis_key_prefix, max_connections=4)
    failures: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(50):
                cache.set_many({f"{worker}:{i}": SCORE})
                assert cache.get_many([f"{worker}:{i}"]) == {f"{worker}:{i}": SCORE}
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert cache.stats.snapshot()["errors"] == 0
    cache.close()


# ------------------------------------------------------------------------ auth


@pytest.fixture(scope="module")
def password_redis() -> Iterator[LocalRedis]:
    """A second redis-server with ``requirepass`` (the session one has no password)."""
    server = LocalRedis(password=PASSWORD).start()
    yield server
    server.close()


def test_password_auth_and_no_secret_in_logs(
    password_redis: LocalRedis, redis_key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, redis-py's included
    good = _cache(password_redis, redis_key_prefix, password=SecretStr(PASSWORD))
    good.set_many({"k": SCORE})
    assert good.get_many(["k"]) == {"k": SCORE}
    assert good.stats.snapshot()["errors"] == 0

    wrong = _cache(password_redis, redis_key_prefix, password=SecretStr(PASSWORD + "-wrong"))
    assert wrong.get_many(["k"]) == {}  # refused: a miss, not an exception
    wrong.set_many({"k2": SCORE})
    assert wrong.stats.snapshot()["errors"] == 2
    assert any(r.levelname == "WARNING" and r.name == "secondpass.cache" for r in caplog.records)

    for cache in (good, wrong):
        assert PASSWORD not in repr(cache)
        cache.close()
    assert PASSWORD not in caplog.text
    for record in caplog.records:
        assert PASSWORD not in record.getMessage()
        assert PASSWORD not in repr(record.args)


def test_missing_password_is_a_miss(password_redis: LocalRedis, redis_key_prefix: str) -> None:
    cache = _cache(password_redis, redis_key_prefix)
    assert cache.get_many(["k"]) == {}
    assert cache.stats.snapshot()["errors"] == 1
    cache.close()


def test_acl_user_with_password(
    redis_server: LocalRedis, admin: redis.Redis, redis_key_prefix: str
) -> None:
    user = "cache-" + uuid.uuid4().hex[:8]
    admin.execute_command(
        "ACL", "SETUSER", user, "on", f">{PASSWORD}", f"~{redis_key_prefix}*", "+@all"
    )
    try:
        url = f"redis://{user}@127.0.0.1:{redis_server.port}/0"
        cache = _cache(redis_server, redis_key_prefix, url=url, password=SecretStr(PASSWORD))
        cache.set_many({"k": SCORE})
        assert cache.get_many(["k"]) == {"k": SCORE}
        assert PASSWORD not in repr(cache) and user not in repr(cache)
        cache.close()
    finally:
        admin.execute_command("ACL", "DELUSER", user)


# ---------------------------------------------------------------------- faults


@pytest.mark.parametrize("how", ["sigstop", "client-pause"])
def test_paused_redis_costs_misses_within_the_timeout(
    how: str,
    redis_server: LocalRedis,
    admin: redis.Redis,
    redis_key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = _cache(redis_server, redis_key_prefix, timeout_s=0.2, connect_timeout_s=0.2)
    scorer = CountingScorer()
    _score(scorer, cache, "cats", ITEMS)  # warm: all three cached
    assert _score(scorer, cache, "cats", ITEMS).cache_hits == 3

    pause_s = 2.5  # CLIENT UNPAUSE itself waits for the pause to end
    if how == "sigstop":
        redis_server.pause()  # the process is frozen; the kernel still accepts connections
    else:
        admin.execute_command("CLIENT", "PAUSE", int(pause_s * 1000), "ALL")
    try:
        with caplog.at_level(logging.WARNING, logger="secondpass.cache"):
            started = time.monotonic()
            during = _score(scorer, cache, "cats", ITEMS)
            elapsed = time.monotonic() - started
    finally:
        if how == "sigstop":
            redis_server.resume()
        else:
            admin.execute_command("CLIENT", "UNPAUSE")
    # Behaviour, not speed: the call gave up on Redis instead of waiting for it to come back.
    assert elapsed < pause_s
    assert during.cache_misses == 3 and scorer.passages_scored == 6  # scoring went on
    direct = scorer.score("cats", [text for *_, text in ITEMS])
    assert list(during.scores) == direct
    assert cache.stats.snapshot()["errors"] >= 1
    assert any("skipping Redis" in r.getMessage() for r in caplog.records)

    after = _score(scorer, cache, "cats", ITEMS)  # cooldown 0: straight back
    assert after.cache_hits == 3
    cache.close()


def test_killed_redis_costs_misses_and_recovers(
    redis_server: LocalRedis, redis_key_prefix: str
) -> None:
    cache = _cache(redis_server, redis_key_prefix, timeout_s=0.5, connect_timeout_s=0.5)
    scorer = CountingScorer()
    _score(scorer, cache, "cats", ITEMS)
    redis_server.kill()  # a crash: no goodbye to open connections
    try:
        during = _score(scorer, cache, "cats", ITEMS)
        assert during.cache_misses == 3 and len(during.scores) == 3
        assert scorer.passages_scored == 6
        assert cache.stats.snapshot()["errors"] == 2  # lookup and write-back
    finally:
        redis_server.start()
    # A fresh, empty Redis: the cache reconnects by itself and fills again.
    assert _score(scorer, cache, "cats", ITEMS).cache_misses == 3
    assert _score(scorer, cache, "cats", ITEMS).cache_hits == 3
    cache.close()
