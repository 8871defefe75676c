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
import json
import logging
import os
import subprocess
import sys
import time
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
from tests.support.secrets import (
    API_KEY,
    CLIENT_KEY,
    REDIS_PASSWORD,
    TEST_SECRETS,
    WRONG_PASSWORD,
    find_leaks,
    secret_forms,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

SECRETS = [SECURE_PASSWORD, *TEST_SECRETS]


def _assert_no_secret(text: str, where: str) -> None:
    leaks = find_leaks(text, SECRETS)
    assert leaks == [], f"a secret appears in {where}: {leaks}"


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


def _index_corpus(engine: Any) -> str:
    index = f"sp-rel-secret-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=engine.url, auth=(engine.username, engine.password), timeout=60) as client:
        for doc in corpus(10):
            client.put(f"/{index}/_doc/{doc['_id']}", json={k: v for k, v in doc.items() if k != "_id"}).raise_for_status()
        client.post(f"/{index}/_refresh").raise_for_status()
    return index


def _drop_index(engine: Any, index: str) -> None:
    with httpx.Client(base_url=engine.url, auth=(engine.username, engine.password), timeout=30) as client:
        client.delete(f"/{index}")


def _spawn(cmd: list[str], env: dict[str, str], log_path: Path, port: int) -> ServiceProcess:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("SECONDPASS_")}
    child_env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **env)
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env, cwd=Path(__file__).resolve().parents[2])
    return ServiceProcess(url=f"http://127.0.0.1:{port}", port=port, process=process, log_path=log_path, args=cmd)


def _record_scan(figures: Any, scenario: str, text: str) -> None:
    forms = {f for s in SECRETS for f in secret_forms(s)}
    figures.add(scenario, "log lines scanned", len(text.splitlines()), "lines")
    figures.add(scenario, "secret forms checked (plain, URL-encoded, base64, JSON)", len(forms), "forms")
    figures.add(scenario, "secret occurrences found", 0, "")


@pytest.mark.parametrize("credentials", ["environment", "engine URL"])
def test_service_process_at_debug_never_logs_secrets(
    credentials: str, tiny_cross_encoder_dir: Path, tmp_path: Path, elasticsearch_secure: Any, secured_redis: LocalRedis, figures: Any
) -> None:
    url = elasticsearch_secure.url
    index = _index_corpus(elasticsearch_secure)
    port = free_port()
    env = {
        "SECONDPASS_SERVICE_SEARCH_INDEX": index,
        "SECONDPASS_SERVICE_SEARCH_FIELDS": '["title", "body"]',
        "SECONDPASS_ENGINE_ENGINE": "elasticsearch",
        "SECONDPASS_CACHE_BACKEND": "redis",
        "SECONDPASS_CACHE_REDIS_URL": secured_redis.url,
        "SECONDPASS_CACHE_REDIS_PASSWORD": REDIS_PASSWORD,
    }
    if credentials == "environment":
        env.update(SECONDPASS_ENGINE_HOSTS=url, SECONDPASS_ENGINE_USERNAME="elastic", SECONDPASS_ENGINE_PASSWORD=SECURE_PASSWORD)
    else:
        env["SECONDPASS_ENGINE_HOSTS"] = url.replace("://", f"://elastic:{SECURE_PASSWORD}@")
    cmd = [
        sys.executable, "-m", "secondpass", "-v", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--rerank-model", str(tiny_cross_encoder_dir), "--rerank-device", "cpu", "--rerank-dtype", "float32",
        "--log-level", "debug", "--access-log",
    ]  # fmt: skip
    service = _spawn(cmd, env, tmp_path / "service-debug.log", port)
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
        _drop_index(elasticsearch_secure, index)
    text = service.log()
    assert " DEBUG " in text, "the service did not log at DEBUG"
    _assert_no_secret(text, "the service's output")
    _record_scan(figures, f"secrets in logs: service, credentials in {credentials}", text)


def _wait_for_proxy(proxy: ServiceProcess, index: str, timeout_s: float) -> None:
    """Until a search through the proxy answers 200 (the model is loaded, the upstream reached)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if not proxy.alive():
            raise AssertionError(f"proxy exited with {proxy.process.returncode}:\n{_redacted_tail(proxy.log())}")
        try:
            answer = httpx.get(f"{proxy.url}/{index}/_search", headers={"X-API-Key": CLIENT_KEY}, timeout=5)
            if answer.status_code == 200:
                return
            last = str(answer.status_code)
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.2)  # poll interval, not a clock: the deadline above bounds the wait
    proxy.stop()
    raise AssertionError(f"proxy not ready after {timeout_s}s ({last}):\n{_redacted_tail(proxy.log())}")


def _redacted_tail(text: str) -> str:
    """A log tail for a failure message, with the known forms masked (it is printed by pytest)."""
    tail = text[-4000:]
    for form in sorted({f for s in SECRETS for f in secret_forms(s)}, key=len, reverse=True):
        tail = tail.replace(form, "<SECRET>")
    return tail


@pytest.mark.parametrize("verbosity", ["default level", "DEBUG with access log"])
def test_proxy_process_with_password_in_upstream_never_logs_it(
    verbosity: str, tiny_cross_encoder_dir: Path, tmp_path: Path, elasticsearch_secure: Any, figures: Any
) -> None:
    """The attack that was found: ``--upstream http://elastic:PW@host`` logged by httpx on every request."""
    index = _index_corpus(elasticsearch_secure)
    port = free_port()
    upstream = elasticsearch_secure.url.replace("://", f"://elastic:{SECURE_PASSWORD}@")
    debug = verbosity.startswith("DEBUG")
    cmd = [
        sys.executable, "-m", "secondpass", *(["-v"] if debug else []), "proxy",
        "--upstream", upstream, "--listen", f"127.0.0.1:{port}", "--lend-credentials",
        "--index", f"{index}=title,body",
        "--rerank-model", str(tiny_cross_encoder_dir), "--rerank-device", "cpu", "--rerank-dtype", "float32",
        *(["--log-level", "debug", "--access-log"] if debug else []),
    ]  # fmt: skip
    env = {"SECONDPASS_PROXY_CLIENT_API_KEYS": json.dumps([CLIENT_KEY])}
    proxy = _spawn(cmd, env, tmp_path / "proxy.log", port)
    key = {"X-API-Key": CLIENT_KEY}
    try:
        _wait_for_proxy(proxy, index, 180)
        with httpx.Client(base_url=proxy.url, timeout=60) as client:
            found = client.post(f"/{index}/_search", json={"query": {"match": {"body": "cat"}}, "size": 3}, headers=key)
            assert found.status_code == 200, found.text
            assert found.json()["hits"]["hits"], "the search found nothing: the test would prove little"
            bearer = client.post(f"/{index}/_search?size=2", json={"query": {"match": {"title": "dog"}}}, headers={"Authorization": f"Bearer {CLIENT_KEY}"})
            assert bearer.status_code == 200, bearer.text
            # failures: the upstream says no, the client is unknown, the request is not lendable, bad input
            assert client.post("/sp-rel-secret-missing/_search", json={"query": {"match_all": {}}}, headers=key).status_code == 404
            assert client.get(f"/{index}/_search", headers={"X-API-Key": WRONG_PASSWORD}).status_code in (401, 403)
            assert client.get(f"/{index}/_search").status_code in (401, 403)
            assert client.delete(f"/{index}", headers=key).status_code in (401, 403, 405)
            malformed = client.post(f"/{index}/_search", content=b"{not json", headers={**key, "Content-Type": "application/json"})
            assert 400 <= malformed.status_code < 500, malformed.text
    finally:
        proxy.stop()
        _drop_index(elasticsearch_secure, index)
    text = proxy.log()
    if debug:
        assert " DEBUG " in text and "HTTP Request" in text, "httpx did not log: the check would be empty"
    _assert_no_secret(text, "the proxy's output")
    _record_scan(figures, f"secrets in logs: proxy, {verbosity}", text)
