"""The local servers really run: engines answer, k-NN loads, restarts keep data, failures explain."""

from __future__ import annotations

import socket
import uuid

import httpx
import pytest
from tests.docs_examples import run_blocks
from tests.fixtures.servers import EngineHandle, SecureEngine

from secondpass.errors import ServerStartError
from secondpass.servers import LocalEngine, LocalRedis

pytestmark = pytest.mark.integration


def _redis_cmd(port: int, *parts: str, password: str | None = None) -> bytes:
    """Send one RESP command (after AUTH if given) and return the raw reply."""

    def encode(args: tuple[str, ...]) -> bytes:
        out = f"*{len(args)}\r\n".encode()
        for arg in args:
            data = arg.encode()
            out += b"$%d\r\n%s\r\n" % (len(data), data)
        return out

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        if password is not None:
            sock.sendall(encode(("AUTH", password)))
            assert sock.recv(64).startswith(b"+OK")
        sock.sendall(encode(parts))
        return sock.recv(4096)


def test_engine_answers_with_its_own_product(engine: EngineHandle) -> None:
    name, url = engine
    health = httpx.get(f"{url}/_cluster/health").json()
    assert health["status"] in {"green", "yellow"}
    assert health["cluster_name"] == f"secondpass-{name}"
    nodes = httpx.get(f"{url}/_nodes/_local").json()
    (info,) = nodes["nodes"].values()
    expected = {"elasticsearch": "8.19.21", "opensearch": "3.5.0"}[name]
    assert info["version"] == expected


def test_engine_indexes_and_finds_text(engine: EngineHandle) -> None:
    index = f"servers-{uuid.uuid4().hex[:8]}"
    url = engine.url
    try:
        r = httpx.put(f"{url}/{index}", json={"mappings": {"properties": {"body": {"type": "text"}}}})
        assert r.status_code == 200, r.text
        httpx.put(f"{url}/{index}/_doc/1?refresh=true", json={"body": "the quick brown fox"})
        hits = httpx.post(
            f"{url}/{index}/_search", json={"query": {"match": {"body": "fox"}}}
        ).json()["hits"]["hits"]
        assert [h["_id"] for h in hits] == ["1"]
    finally:
        httpx.delete(f"{url}/{index}")


def test_opensearch_has_knn_plugin_and_lucene_knn_works(opensearch_url: str) -> None:
    plugins = httpx.get(f"{opensearch_url}/_cat/plugins?format=json").json()
    assert {"component": "opensearch-knn", "version": "3.5.0.0"}.items() <= plugins[0].items()
    index = f"knn-{uuid.uuid4().hex[:8]}"
    mapping = {
        "settings": {"index.knn": True},
        "mappings": {
            "properties": {
                "v": {
                    "type": "knn_vector",
                    "dimension": 3,
                    "method": {"name": "hnsw", "engine": "lucene", "space_type": "l2"},
                }
            }
        },
    }
    try:
        assert httpx.put(f"{opensearch_url}/{index}", json=mapping).status_code == 200
        for i, vec in enumerate(([1, 0, 0], [0, 1, 0], [0.9, 0.1, 0])):
            httpx.put(f"{opensearch_url}/{index}/_doc/{i}", json={"v": vec})
        httpx.post(f"{opensearch_url}/{index}/_refresh")
        body = {"size": 2, "query": {"knn": {"v": {"vector": [1, 0, 0], "k": 2}}}}
        hits = httpx.post(f"{opensearch_url}/{index}/_search", json=body).json()["hits"]["hits"]
        assert [h["_id"] for h in hits] == ["0", "2"]
    finally:
        httpx.delete(f"{opensearch_url}/{index}")


def test_elasticsearch_dense_vector_knn_works(elasticsearch_url: str) -> None:
    index = f"knn-{uuid.uuid4().hex[:8]}"
    mapping = {"mappings": {"properties": {"v": {"type": "dense_vector", "dims": 3, "similarity": "l2_norm"}}}}
    try:
        assert httpx.put(f"{elasticsearch_url}/{index}", json=mapping).status_code == 200
        for i, vec in enumerate(([1, 0, 0], [0, 1, 0], [0.9, 0.1, 0])):
            httpx.put(f"{elasticsearch_url}/{index}/_doc/{i}", json={"v": vec})
        httpx.post(f"{elasticsearch_url}/{index}/_refresh")
        body = {"knn": {"field": "v", "query_vector": [1, 0, 0], "k": 2, "num_candidates": 3}}
        hits = httpx.post(f"{elasticsearch_url}/{index}/_search", json=body).json()["hits"]["hits"]
        assert [h["_id"] for h in hits] == ["0", "2"]
    finally:
        httpx.delete(f"{elasticsearch_url}/{index}")


@pytest.mark.slow
def test_restart_keeps_port_and_data(engine: EngineHandle) -> None:
    node = engine.node
    if node is None:
        pytest.fail("restart test needs a local node (it is not meaningful in docker mode)")
    index = f"restart-{uuid.uuid4().hex[:8]}"
    httpx.put(f"{node.url}/{index}/_doc/1?refresh=true", json={"body": "survives restarts"})
    url_before = node.url
    try:
        node.kill()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url_before}/_cluster/health", timeout=2)
        node.start()
        assert node.url == url_before
        doc = httpx.get(f"{node.url}/{index}/_doc/1").json()
        assert doc["_source"] == {"body": "survives restarts"}
    finally:
        if not node.is_running():
            node.start()
        httpx.delete(f"{node.url}/{index}")


def test_paused_engine_times_out_then_recovers(engine: EngineHandle) -> None:
    node = engine.node
    if node is None:
        pytest.fail("pause test needs a local node")
    node.pause()
    try:
        with pytest.raises(httpx.TimeoutException):
            httpx.get(f"{node.url}/_cluster/health", timeout=1.0)
    finally:
        node.resume()
    assert httpx.get(f"{node.url}/_cluster/health", timeout=10).status_code == 200


def test_impossible_setting_fails_with_log_tail() -> None:
    node = LocalEngine(
        "elasticsearch", settings={"secondpass.no_such_setting": "x"}, start_timeout_s=120
    )
    try:
        with pytest.raises(ServerStartError) as info:
            node.start()
    finally:
        node.close()
    message = str(info.value)
    assert "exited with code" in message
    assert "secondpass.no_such_setting" in message  # the engine's own complaint, from its log


def test_secure_elasticsearch_requires_the_password(elasticsearch_secure: SecureEngine) -> None:
    url = elasticsearch_secure.url
    assert httpx.get(f"{url}/_cluster/health").status_code == 401
    wrong = httpx.get(f"{url}/_cluster/health", auth=(elasticsearch_secure.username, "wrong"))
    assert wrong.status_code == 401
    ok = httpx.get(
        f"{url}/_cluster/health", auth=(elasticsearch_secure.username, elasticsearch_secure.password)
    )
    assert ok.status_code == 200
    assert elasticsearch_secure.password not in repr(elasticsearch_secure)
    assert elasticsearch_secure.node is not None
    assert elasticsearch_secure.password not in elasticsearch_secure.node.log_tail(10_000)


def test_redis_fixture_stop_start_keeps_url(redis_server: LocalRedis) -> None:
    assert _redis_cmd(redis_server.port, "SET", "k", "v").startswith(b"+OK")
    url = redis_server.url
    redis_server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", redis_server.port), timeout=1).close()
    redis_server.start()
    assert redis_server.url == url
    assert _redis_cmd(redis_server.port, "GET", "k") == b"$-1\r\n"  # no persistence


def test_redis_kill_is_revived_for_the_next_test(redis_server: LocalRedis) -> None:
    redis_server.kill()
    assert not redis_server.is_running()


def test_redis_was_revived(redis_server: LocalRedis) -> None:
    assert redis_server.is_running()
    assert _redis_cmd(redis_server.port, "PING") == b"+PONG\r\n"


def test_redis_with_password_needs_auth() -> None:
    with LocalRedis(password="pw-123") as server:
        assert _redis_cmd(server.port, "PING").startswith(b"-NOAUTH")
        assert _redis_cmd(server.port, "PING", password="pw-123") == b"+PONG\r\n"


def test_docs_example_runs() -> None:
    ns = run_blocks("local-servers.md")
    assert ns["reply"] is True
