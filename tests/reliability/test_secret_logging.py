"""Secrets never reach logs, at any level, in any library's logger.

Every logger (ours, the engine clients', urllib3, aiohttp, redis, httpx) is
captured at DEBUG while real calls succeed and fail with an API key, a basic
auth password and a Redis password: right credentials, wrong credentials,
servers down. The secrets and their encoded forms (the base64 of a basic-auth
header) must appear in no log record, no exception text, no repr and nothing
written to stdout or stderr. Last, the real service process runs at DEBUG with
all three secrets configured and its whole output is searched.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from secondpass.config import CacheSettings, ConnectionSettings
from secondpass.connectors import (
    AsyncElasticsearchConnector,
    ElasticsearchConnector,
    OpenSearchConnector,
)
from secondpass.errors import SecondPassError
from secondpass.pipeline.cache import RedisScoreCache, build_cache
from secondpass.servers import LocalRedis
from secondpass.types import PassageScore, SearchRequest
from tests.fixtures.servers import SECURE_PASSWORD
from tests.fixtures.service import ServiceProcess, free_port, wait_until_ready
from tests.reliability._common import corpus

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

API_KEY = "c3AtYXBpLWtleS1pZDpzcC1hcGkta2V5LXNlY3JldA=="  # base64("sp-api-key-id:sp-api-key-secret")
REDIS_PASSWORD = "sp-redis-Secret-77"
WRONG_PASSWORD = "sp-wrong-Passw0rd-99"


def _forms(secret: str, user: str = "elastic") -> list[str]:
    """The secret and the encodings it could leak in (basic-auth header, URL quoting)."""
    basic = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return [secret, basic, secret.replace("-", "%2D")]


SECRETS = [*_forms(SECURE_PASSWORD), *_forms(WRONG_PASSWORD), API_KEY, "sp-api-key-secret", REDIS_PASSWORD]


def _assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret ({secret[:4]}...) appears in {where}"


@pytest.fixture
def everything_logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    for name in ("elastic_transport", "urllib3", "opensearchpy", "opensearch", "redis", "httpx", "httpcore", "aiohttp", "secondpass"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield caplog


@pytest.fixture(scope="module")
def secured_redis() -> Iterator[LocalRedis]:
    server = LocalRedis(password=REDIS_PASSWORD)
    server.start()
    yield server
    server.close()


def _log_text(caplog: pytest.LogCaptureFixture) -> str:
    parts = []
    for record in caplog.records:
        parts.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(repr(record.exc_info[1]))
            parts.append(str(record.exc_info[1]))
    return "\n".join(parts)


def test_engine_credentials_never_logged(
    everything_logged: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], elasticsearch_secure: Any, opensearch_url: str
) -> None:
    seen: list[str] = []
    good = ElasticsearchConnector(
        index="sp-rel-secret-probe", fields=["body"], hosts=[elasticsearch_secure.url], username="elastic", password=SECURE_PASSWORD, max_attempts=1
    )
    seen.append(repr(good))
    try:
        good.search(SearchRequest("cat"))
    except SecondPassError as exc:  # the index does not exist: a QueryError after a successful login
        seen += [str(exc), repr(exc)]
    good.close()
    for kwargs in (
        {"username": "elastic", "password": WRONG_PASSWORD},
        {"api_key": API_KEY},
    ):
        bad = ElasticsearchConnector(index="sp-rel-secret-probe", fields=["body"], hosts=[elasticsearch_secure.url], max_attempts=1, **kwargs)
        seen.append(repr(bad))
        with pytest.raises(SecondPassError) as info:
            bad.search(SearchRequest("cat"))
        seen += [str(info.value), repr(info.value), str(info.value.__cause__)]
        bad.close()

    async def async_calls() -> None:
        conn = AsyncElasticsearchConnector(
            index="sp-rel-secret-probe", fields=["body"], hosts=[elasticsearch_secure.url], username="elastic", password=WRONG_PASSWORD, max_attempts=1
        )
        try:
            with pytest.raises(SecondPassError) as info:
                await conn.search(SearchRequest("cat"))
            seen.append(str(info.value))
        finally:
            await conn.close()

    asyncio.run(async_calls())
    # Credentials in the URL are moved out of it before anything can log the URL.
    in_url = ConnectionSettings(engine="opensearch", hosts=[opensearch_url.replace("http://", f"http://admin:{SECURE_PASSWORD}@")])
    seen += [repr(in_url), str(in_url.hosts)]
    with OpenSearchConnector(index="sp-rel-secret-probe", fields=["body"], settings=in_url, max_attempts=1) as os_conn:
        with pytest.raises(SecondPassError) as info:
            os_conn.search(SearchRequest("cat"))
        seen.append(str(info.value))
    # A connection that fails before any answer (nothing listening) logs and raises too.
    down = ElasticsearchConnector(index="x", fields=["body"], hosts=[f"http://127.0.0.1:{free_port()}"], username="elastic", password=SECURE_PASSWORD, max_attempts=2, initial_backoff_s=0.01)
    with pytest.raises(SecondPassError) as info:
        down.search(SearchRequest("cat"))
    seen.append(str(info.value))
    down.close()
    out, err = capfd.readouterr()
    logs = _log_text(everything_logged)
    assert len(everything_logged.records) > 5, "nothing was logged: the capture is not working"
    _assert_no_secret(logs, "a log record")
    _assert_no_secret("\n".join(seen), "an exception or repr")
    _assert_no_secret(out + err, "stdout/stderr")


def test_redis_password_never_logged(
    everything_logged: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], secured_redis: LocalRedis
) -> None:
    prefix = f"sp-rel-secret:{uuid.uuid4().hex}:"
    score = PassageScore(raw=1.0, normalized=0.7)
    good = build_cache(CacheSettings(backend="redis", redis_url=secured_redis.url, redis_password=REDIS_PASSWORD, key_prefix=prefix))
    assert isinstance(good, RedisScoreCache)
    good.set_many({"k": score})
    assert good.get_many(["k"]) == {"k": score}
    wrong = RedisScoreCache(url=secured_redis.url, password=WRONG_PASSWORD, key_prefix=prefix, warn_interval_s=0)
    assert wrong.get_many(["k"]) == {}
    in_url = RedisScoreCache(url=f"redis://:{REDIS_PASSWORD}@127.0.0.1:{secured_redis.port}/0", key_prefix=prefix)
    assert in_url.get_many(["k"]) == {"k": score}
    seen = [repr(good), repr(wrong), repr(in_url), repr(CacheSettings(backend="redis", redis_url=secured_redis.url, redis_password=REDIS_PASSWORD))]
    secured_redis.stop()
    try:
        down = RedisScoreCache(url=secured_redis.url, password=REDIS_PASSWORD, key_prefix=prefix, warn_interval_s=0)
        assert down.get_many(["k"]) == {}
        down.set_many({"k": score})
    finally:
        secured_redis.start()
    for cache in (good, wrong, in_url, down):
        cache.close()
    out, err = capfd.readouterr()
    logs = _log_text(everything_logged)
    assert "score cache" in logs, "the failure warnings were not captured"
    _assert_no_secret(logs, "a log record")
    _assert_no_secret("\n".join(seen), "a repr")
    _assert_no_secret(out + err, "stdout/stderr")


def test_service_process_at_debug_never_logs_secrets(
    tiny_cross_encoder_dir: Path, tmp_path: Path, elasticsearch_secure: Any, secured_redis: LocalRedis, figures: Any
) -> None:
    url = elasticsearch_secure.url
    auth = (elasticsearch_secure.username, elasticsearch_secure.password)
    index = f"sp-rel-secret-{uuid.uuid4().hex[:8]}"
    docs = corpus(10)
    with httpx.Client(base_url=url, auth=auth, timeout=60) as client:
        for doc in docs:
            client.put(f"/{index}/_doc/{doc['_id']}", json={k: v for k, v in doc.items() if k != "_id"}).raise_for_status()
        client.post(f"/{index}/_refresh").raise_for_status()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECONDPASS_")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        SECONDPASS_SERVICE_SEARCH_INDEX=index,
        SECONDPASS_SERVICE_SEARCH_FIELDS='["title", "body"]',
        SECONDPASS_ENGINE_ENGINE="elasticsearch",
        SECONDPASS_ENGINE_HOSTS=url,
        SECONDPASS_ENGINE_USERNAME="elastic",
        SECONDPASS_ENGINE_PASSWORD=SECURE_PASSWORD,
        SECONDPASS_CACHE_BACKEND="redis",
        SECONDPASS_CACHE_REDIS_URL=secured_redis.url,
        SECONDPASS_CACHE_REDIS_PASSWORD=REDIS_PASSWORD,
    )
    log_path = tmp_path / "service-debug.log"
    cmd = [
        sys.executable, "-m", "secondpass", "-v", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--rerank-model", str(tiny_cross_encoder_dir), "--rerank-device", "cpu", "--rerank-dtype", "float32",
        "--log-level", "debug", "--access-log",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parents[2])
    service = ServiceProcess(url=f"http://127.0.0.1:{port}", port=port, process=process, log_path=log_path, args=cmd)
    try:
        wait_until_ready(service, 180)
        ok = httpx.post(f"{service.url}/v1/search", json={"query": "cat", "k": 3}, timeout=60)
        assert ok.status_code == 200, ok.text
        assert httpx.post(f"{service.url}/v1/search", json={"query": "cat", "k": 3}, timeout=60).json()["cache_hits"] > 0
        secured_redis.stop()  # the cache fails: warnings are logged with the Redis location
        try:
            assert httpx.post(f"{service.url}/v1/search", json={"query": "dog", "k": 3}, timeout=60).status_code == 200
        finally:
            secured_redis.start()
        bad = httpx.post(f"{service.url}/v1/search", json={"query": "cat", "body": {"bogus": {}}}, timeout=60)
        assert bad.status_code == 400
    finally:
        service.stop()
        with httpx.Client(base_url=url, auth=auth, timeout=30) as client:
            client.delete(f"/{index}")
    text = service.log()
    assert " DEBUG " in text, "the service did not log at DEBUG"
    _assert_no_secret(text, "the service's output")
    figures.add("secrets in logs (DEBUG, all loggers)", "log lines searched from the service process", len(text.splitlines()), "lines")
    figures.add("secrets in logs (DEBUG, all loggers)", "secret occurrences found", 0, "")
