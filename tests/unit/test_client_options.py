"""Client constructor arguments reach the official clients' connection pools (no I/O)."""

from __future__ import annotations

import pytest

from secondpass.config import ConnectionSettings
from secondpass.connectors import elasticsearch as es_module
from secondpass.connectors import opensearch as os_module


def test_opensearch_sync_pool_holds_max_connections() -> None:
    import opensearchpy

    settings = ConnectionSettings(hosts=["http://127.0.0.1:9"], max_connections=7)
    client = opensearchpy.OpenSearch(**os_module.client_kwargs(settings))
    [connection] = client.transport.connection_pool.connections
    assert connection.pool.pool.maxsize == 7
    client.close()


async def test_opensearch_async_pool_holds_max_connections() -> None:
    import opensearchpy

    settings = ConnectionSettings(hosts=["http://127.0.0.1:9"], max_connections=7)
    client = opensearchpy.AsyncOpenSearch(**os_module.client_kwargs(settings))
    await client.transport._async_call()  # the async transport builds its connections on first use
    [connection] = client.transport.connection_pool.connections
    assert connection._limit == 7
    await client.close()


@pytest.mark.parametrize("asynchronous", [False, True])
def test_elasticsearch_pool_holds_max_connections(asynchronous: bool) -> None:
    kwargs = es_module.client_kwargs(
        ConnectionSettings(engine="elasticsearch", hosts=["http://127.0.0.1:9"], max_connections=7),
        asynchronous=asynchronous,
    )
    assert kwargs["connections_per_node"] == 7
    import elasticsearch

    cls = elasticsearch.AsyncElasticsearch if asynchronous else elasticsearch.Elasticsearch
    client = cls(**kwargs)
    assert client.transport.node_pool.get().config.connections_per_node == 7


def test_max_connections_is_bounded() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_connections"):
        ConnectionSettings(max_connections=0)
