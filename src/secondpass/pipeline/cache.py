"""Pair-level score caches: keys, value encoding, an in-process LRU, Redis and a no-op.

A cross-encoder score depends on the model, the settings that shape its input,
the query and the exact passage text, so the key is a sha256 over all of them in
a length-prefixed encoding (two different tuples can never produce the same
bytes). Because the passage text is part of the key, an edited document simply
misses; nothing has to be invalidated.

A cache is an optimisation, never a dependency: every implementation here turns
its own failures (Redis down, slow, or returning garbage) into misses, counts
them in :class:`CacheStats` and lets scoring go on.

Example:
    >>> cache = LRUScoreCache(max_entries=2)
    >>> key = cache_key("model@rev|max_length=512", "cats", "docs", "7", "Cats purr.")
    >>> cache.set_many({key: PassageScore(raw=2.0, normalized=0.88)})
    >>> cache.get_many([key])[key].raw
    2.0
    >>> cache.stats.snapshot()["hits"]
    1
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from pydantic import SecretStr

from secondpass.config import CacheSettings
from secondpass.errors import ConfigurationError, MissingDependencyError
from secondpass.types import PassageScore

if TYPE_CHECKING:  # pragma: no cover
    import redis

logger = logging.getLogger("secondpass.cache")

__all__ = [
    "CacheStats",
    "InstrumentedScoreCache",
    "LRUScoreCache",
    "NullScoreCache",
    "RedisScoreCache",
    "build_cache",
    "cache_key",
    "cache_keys",
    "decode_score",
    "encode_score",
    "is_cacheable",
]

# Bumping this tag invalidates every key ever written (a new key space, not a flush).
_KEY_TAG = b"secondpass/score-key/v1\x00"
_FIELD_SET = frozenset(f.name for f in fields(PassageScore))


# --------------------------------------------------------------------------- keys


def _feed(hasher: Any, part: str) -> None:
    # Length prefix makes the encoding prefix-free: ("ab", "c") and ("a", "bc")
    # feed different bytes. surrogatepass keeps lone surrogates (possible in JSON
    # input) hashable instead of raising.
    data = part.encode("utf-8", "surrogatepass")
    hasher.update(len(data).to_bytes(8, "big"))
    hasher.update(data)


def _query_hasher(fingerprint: str, query: str) -> Any:
    hasher = hashlib.sha256(_KEY_TAG)
    _feed(hasher, fingerprint)
    _feed(hasher, query)
    return hasher


def cache_key(fingerprint: str, query: str, index: str, doc_id: str, text: str) -> str:
    """Return the hex sha256 key of one (scorer, query, document, passage text) tuple.

    ``fingerprint`` is :attr:`Scorer.fingerprint` (model id, revision and every
    score-changing setting); ``text`` is the exact passage the model scores, so an
    edited document gets a new key.

    Example:
        >>> cache_key("m", "q", "i", "ab", "c") != cache_key("m", "q", "i", "a", "bc")
        True
    """
    hasher = _query_hasher(fingerprint, query)
    for part in (index, doc_id, text):
        _feed(hasher, part)
    return str(hasher.hexdigest())


def cache_keys(fingerprint: str, query: str, items: Iterable[tuple[str, str, str]]) -> list[str]:
    """Keys for many (index, id, text) items of one query; same values as :func:`cache_key`.

    The (fingerprint, query) prefix is hashed once and copied per item, which
    matters when the query is long and the window is a few hundred documents.
    """
    base = _query_hasher(fingerprint, query)
    keys = []
    for index, doc_id, text in items:
        hasher = base.copy()
        _feed(hasher, index)
        _feed(hasher, doc_id)
        _feed(hasher, text)
        keys.append(str(hasher.hexdigest()))
    return keys


# ------------------------------------------------------------------------ values


def _is_finite_number(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _valid(
    raw: object,
    normalized: object,
    tokens_in: object,
    tokens_scored: object,
    truncated: object,
    chunks: object,
) -> bool:
    return (
        _is_finite_number(raw)
        and _is_finite_number(normalized)
        and _is_count(tokens_in, 0)
        and _is_count(tokens_scored, 0)
        and isinstance(truncated, bool)
        and _is_count(chunks, 1)
    )


def is_cacheable(score: object) -> bool:
    """True for a :class:`PassageScore` with finite scores and sane counts.

    A NaN or infinite score is a bug upstream; caching it would make the bug
    outlive the fix, so such values are never written.
    """
    return isinstance(score, PassageScore) and _valid(
        score.raw,
        score.normalized,
        score.tokens_in,
        score.tokens_scored,
        score.truncated,
        score.chunks,
    )


# Built once: json.dumps/json.loads with options construct a new coder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _reject_constant(name: str) -> float:
    raise ValueError(name)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def encode_score(score: PassageScore) -> bytes:
    """Compact JSON of every :class:`PassageScore` field, e.g. ``{"raw":2.0,...}``."""
    return _ENCODER.encode(
        {
            "raw": score.raw,
            "normalized": score.normalized,
            "tokens_in": score.tokens_in,
            "tokens_scored": score.tokens_scored,
            "truncated": score.truncated,
            "chunks": score.chunks,
        }
    ).encode("ascii")


def decode_score(data: bytes | str) -> PassageScore | None:
    """Parse a stored value, or return ``None`` when it is not a valid score.

    Anything a shared store might hand back is checked: well-formed JSON, exactly
    the expected fields, finite floats (``NaN``, ``Infinity`` and ``1e999`` are
    rejected), non-negative integer counts and a boolean ``truncated``.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        values = _DECODER.decode(text)
    except (ValueError, AttributeError, TypeError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(values, dict) or values.keys() != _FIELD_SET:
        return None
    raw, normalized = values["raw"], values["normalized"]
    tokens_in, tokens_scored = values["tokens_in"], values["tokens_scored"]
    truncated, chunks = values["truncated"], values["chunks"]
    if not _valid(raw, normalized, tokens_in, tokens_scored, truncated, chunks):
        return None
    return PassageScore(
        raw=float(raw),
        normalized=float(normalized),
        tokens_in=tokens_in,
        tokens_scored=tokens_scored,
        truncated=truncated,
        chunks=chunks,
    )


# ------------------------------------------------------------------------- stats


class CacheStats:
    """Monotonic counters a service exports as metrics (thread-safe).

    ``hits``/``misses`` count keys looked up; ``writes`` keys stored; ``errors``
    backend failures plus values rejected on read or write; ``corrupt`` the
    values read back that failed validation (also counted as misses and errors);
    ``evictions`` LRU entries dropped for room; ``bypassed`` keys not even tried
    because a failing backend is cooling down (also counted as misses).

    Example:
        >>> stats = CacheStats()
        >>> stats.add(hits=2, misses=1)
        >>> stats.snapshot()["misses"]
        1
    """

    NAMES = ("hits", "misses", "errors", "writes", "corrupt", "evictions", "bypassed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.writes = 0
        self.corrupt = 0
        self.evictions = 0
        self.bypassed = 0

    def add(
        self,
        *,
        hits: int = 0,
        misses: int = 0,
        errors: int = 0,
        writes: int = 0,
        corrupt: int = 0,
        evictions: int = 0,
        bypassed: int = 0,
    ) -> None:
        """Increase counters atomically (several counters in one step stay consistent)."""
        with self._lock:
            self.hits += hits
            self.misses += misses
            self.errors += errors
            self.writes += writes
            self.corrupt += corrupt
            self.evictions += evictions
            self.bypassed += bypassed

    def snapshot(self) -> dict[str, int]:
        """Every counter at one instant, keyed by name."""
        with self._lock:
            return {name: getattr(self, name) for name in self.NAMES}

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v}" for k, v in self.snapshot().items())
        return f"CacheStats({body})"


@runtime_checkable
class InstrumentedScoreCache(Protocol):
    """A :class:`~secondpass.pipeline.protocols.ScoreCache` that also counts what it did."""

    @property
    def stats(self) -> CacheStats:
        """Counters since construction."""
        ...

    def get_many(self, keys: Sequence[str]) -> dict[str, PassageScore]:
        """Return the cached scores for the keys that are present and valid."""
        ...

    def set_many(self, items: Mapping[str, PassageScore]) -> None:
        """Store scores; failures are logged and counted, not raised."""
        ...

    def close(self) -> None:
        """Release connections (no-op for in-process caches)."""
        ...


def _cacheable_items(items: Mapping[str, PassageScore], stats: CacheStats) -> dict[str, Any]:
    good = {key: score for key, score in items.items() if is_cacheable(score)}
    rejected = len(items) - len(good)
    if rejected:
        stats.add(errors=rejected)
        logger.debug("score cache: refused %d invalid score(s) (non-finite or malformed)", rejected)
    return good


# -------------------------------------------------------------------- in-process


class NullScoreCache:
    """Caches nothing; every lookup is a miss. Used when caching is turned off.

    Example:
        >>> NullScoreCache().get_many(["k"])
        {}
    """

    def __init__(self) -> None:
        self._stats = CacheStats()

    @property
    def stats(self) -> CacheStats:
        """Counters since construction (only misses move)."""
        return self._stats

    def get_many(self, keys: Sequence[str]) -> dict[str, PassageScore]:
        """Return nothing, counting every key as a miss."""
        self._stats.add(misses=len(keys))
        return {}

    def set_many(self, items: Mapping[str, PassageScore]) -> None:
        """Drop the scores."""

    def close(self) -> None:
        """Nothing to release."""


class LRUScoreCache:
    """In-process cache bounded by entry count, least recently used evicted first.

    Thread-safe: the service scores from a worker pool. Values are the frozen
    :class:`PassageScore` objects themselves (no serialisation), validated when
    written so a read never needs to re-check them. About 300 bytes per entry on
    CPython, so the default 100,000 entries is roughly 30 MB.

    Example:
        >>> cache = LRUScoreCache(max_entries=1)
        >>> cache.set_many({"a": PassageScore(1.0, 0.7), "b": PassageScore(2.0, 0.9)})
        >>> sorted(cache.get_many(["a", "b"]))
        ['b']
    """

    def __init__(self, *, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            msg = f"max_entries must be at least 1, got {max_entries}"
            raise ConfigurationError(msg)
        self.max_entries = max_entries
        self._data: OrderedDict[str, PassageScore] = OrderedDict()
        self._lock = threading.Lock()
        self._stats = CacheStats()

    @property
    def stats(self) -> CacheStats:
        """Counters since construction."""
        return self._stats

    def __len__(self) -> int:
        return len(self._data)

    def get_many(self, keys: Sequence[str]) -> dict[str, PassageScore]:
        """Return the present keys and mark them as recently used."""
        found: dict[str, PassageScore] = {}
        data = self._data
        with self._lock:
            for key in keys:
                score = data.get(key)
                if score is not None:
                    data.move_to_end(key)
                    found[key] = score
        hits = sum(1 for key in keys if key in found)
        self._stats.add(hits=hits, misses=len(keys) - hits)
        return found

    def set_many(self, items: Mapping[str, PassageScore]) -> None:
        """Store valid scores, evicting the least recently used entries beyond the bound."""
        good = _cacheable_items(items, self._stats)
        if not good:
            return
        evicted = 0
        data = self._data
        with self._lock:
            for key, score in good.items():
                data[key] = score
                data.move_to_end(key)
            while len(data) > self.max_entries:
                data.popitem(last=False)
                evicted += 1
        self._stats.add(writes=len(good), evictions=evicted)

    def clear(self) -> None:
        """Drop every entry (counters are kept: they are monotonic)."""
        with self._lock:
            self._data.clear()

    def close(self) -> None:
        """Nothing to release; present so every cache can be closed the same way."""

    def __repr__(self) -> str:
        return f"LRUScoreCache(max_entries={self.max_entries}, size={len(self._data)})"


# ------------------------------------------------------------------------- Redis


def _redacted_location(url: str) -> str:
    """``host:port/db`` of a Redis URL, never its user name or password."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 6379
    except ValueError:
        return "<invalid redis url>"
    db = parts.path.lstrip("/") or "0"
    return f"{parts.scheme}://{host}:{port}/{db}"


class RedisScoreCache:
    """Score cache shared by every replica through Redis.

    One ``MGET`` per lookup and one pipelined batch of ``SET key value EX ttl`` per
    write, over a bounded, blocking connection pool. Timeouts are short on purpose
    (50 ms by default): when Redis is down, slow or rejects us, the call returns
    misses within about the timeout, a WARNING is logged (at most once per
    ``warn_interval_s``), ``stats.errors`` moves, and for ``cooldown_s`` afterwards
    calls skip Redis entirely so a dead cache costs nothing per request. Nothing
    is retried: the model is the fallback.

    The password is a :class:`~pydantic.SecretStr` and never appears in logs,
    ``repr`` or error messages; logs name the server as ``host:port/db`` only.
    Works with a single Redis (or a proxy in front of a cluster): keys of one
    ``MGET`` may hash to different cluster slots.

    Construction does no I/O; the first call connects.

    Example:
        >>> cache = RedisScoreCache(url="redis://127.0.0.1:6379/0", ttl_s=3600)
        >>> cache
        RedisScoreCache(redis://127.0.0.1:6379/0, prefix='secondpass:score:', ttl_s=3600)
    """

    def __init__(
        self,
        *,
        url: str,
        password: SecretStr | str | None = None,
        key_prefix: str = "secondpass:score:",
        ttl_s: int | None = 7 * 24 * 3600,
        timeout_s: float = 0.05,
        connect_timeout_s: float = 0.1,
        max_connections: int = 32,
        cooldown_s: float = 1.0,
        warn_interval_s: float = 30.0,
    ) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:  # pragma: no cover - redis is in the dev env
            package = "redis"
            raise MissingDependencyError(package, extra=package) from exc
        if ttl_s is not None and ttl_s < 1:
            msg = f"ttl_s must be a positive number of seconds or None, got {ttl_s}"
            raise ConfigurationError(msg)
        self._redis_errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.key_prefix = key_prefix
        self.ttl_s = ttl_s
        self.cooldown_s = cooldown_s
        self.warn_interval_s = warn_interval_s
        self._where = _redacted_location(url)
        secret = password.get_secret_value() if isinstance(password, SecretStr) else password
        try:
            self._pool = redis.BlockingConnectionPool.from_url(
                url,
                password=secret,
                max_connections=max_connections,
                timeout=timeout_s,  # wait for a free pooled connection
                socket_timeout=timeout_s,
                socket_connect_timeout=connect_timeout_s,
                retry=Retry(NoBackoff(), 0),  # no retries: a miss is the fallback
            )
        except ValueError as exc:
            msg = f"invalid Redis URL for the score cache ({self._where})"
            raise ConfigurationError(msg) from exc
        self._client: redis.Redis = redis.Redis(connection_pool=self._pool)
        self._stats = CacheStats()
        self._state_lock = threading.Lock()
        self._down_until = 0.0
        self._last_warning = -math.inf
        self._suppressed = 0

    @property
    def stats(self) -> CacheStats:
        """Counters since construction."""
        return self._stats

    def __repr__(self) -> str:
        return f"RedisScoreCache({self._where}, prefix={self.key_prefix!r}, ttl_s={self.ttl_s})"

    def get_many(self, keys: Sequence[str]) -> dict[str, PassageScore]:
        """One ``MGET``; absent, corrupt and unreachable keys are misses."""
        if not keys:
            return {}
        if self._cooling_down():
            self._stats.add(misses=len(keys), bypassed=len(keys))
            return {}
        try:
            values = self._client.mget([self.key_prefix + key for key in keys])
        except self._redis_errors as exc:
            self._stats.add(misses=len(keys))
            self._failed("lookup", exc)
            return {}
        found: dict[str, PassageScore] = {}
        corrupt = 0
        for key, value in zip(keys, values, strict=True):
            if value is None:
                continue
            score = decode_score(value)
            if score is None:
                corrupt += 1
            else:
                found[key] = score
        if corrupt:
            self._warn(
                "score cache: %d corrupt value(s) in Redis at %s treated as misses",
                corrupt,
                self._where,
            )
        self._stats.add(
            hits=len(found), misses=len(keys) - len(found), corrupt=corrupt, errors=corrupt
        )
        return found

    def set_many(self, items: Mapping[str, PassageScore]) -> None:
        """One pipelined round trip of ``SET key value EX ttl_s`` (no transaction)."""
        good = _cacheable_items(items, self._stats)
        if not good:
            return
        if self._cooling_down():
            self._stats.add(bypassed=len(good))
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, score in good.items():
                pipe.set(self.key_prefix + key, encode_score(score), ex=self.ttl_s)
            pipe.execute()
        except self._redis_errors as exc:
            self._failed("write", exc)
            return
        self._stats.add(writes=len(good))

    def close(self) -> None:
        """Close every pooled connection; a later call reconnects."""
        self._pool.disconnect()

    def _cooling_down(self) -> bool:
        return time.monotonic() < self._down_until

    def _failed(self, operation: str, exc: BaseException) -> None:
        self._stats.add(errors=1)
        with self._state_lock:
            self._down_until = time.monotonic() + self.cooldown_s
        # redis-py messages name host and port at most, never credentials.
        detail = f"{type(exc).__name__}: {exc}"[:300]
        self._warn(
            "score cache: Redis %s at %s failed (%s); scoring without the cache, "
            "skipping Redis for %.1f s",
            operation,
            self._where,
            detail,
            self.cooldown_s,
        )

    def _warn(self, message: str, *args: object) -> None:
        """Log at WARNING at most once per ``warn_interval_s``; DEBUG otherwise.

        A dead Redis fails on every request; one line per request would bury
        everything else in the log, so repeats are counted into the next warning.
        """
        now = time.monotonic()
        with self._state_lock:
            self._suppressed += 1
            if now - self._last_warning < self.warn_interval_s:
                logger.debug(message, *args)
                return
            repeats = self._suppressed - 1
            self._suppressed = 0
            self._last_warning = now
        if repeats:
            message += " (%d similar event(s) since the last warning)"
            args = (*args, repeats)
        logger.warning(message, *args)

    def ping(self) -> bool:
        """True when Redis answers within the timeout; for readiness probes, never raises."""
        try:
            return bool(self._client.ping())
        except self._redis_errors:
            return False


# ----------------------------------------------------------------------- factory


def build_cache(settings: CacheSettings) -> LRUScoreCache | RedisScoreCache | NullScoreCache:
    """Build the cache named by ``settings.backend``; no I/O happens here.

    Raises:
        ConfigurationError: ``backend="redis"`` without ``redis_url``.

    Example:
        >>> build_cache(CacheSettings(backend="memory", max_entries=10))
        LRUScoreCache(max_entries=10, size=0)
    """
    if settings.backend == "none":
        return NullScoreCache()
    if settings.backend == "memory":
        return LRUScoreCache(max_entries=settings.max_entries)
    if not settings.redis_url:
        msg = "cache backend 'redis' needs a URL: set SECONDPASS_CACHE_REDIS_URL (redis_url)"
        raise ConfigurationError(msg)
    return RedisScoreCache(
        url=settings.redis_url,
        password=settings.redis_password,
        key_prefix=settings.key_prefix,
        ttl_s=settings.ttl_s,
        timeout_s=settings.redis_timeout_s,
        connect_timeout_s=settings.redis_connect_timeout_s,
        max_connections=settings.redis_max_connections,
        cooldown_s=settings.cooldown_s,
        warn_interval_s=settings.warn_interval_s,
    )
