"""BackgroundProxy waits on uvicorn's startup as an event: ready at once, failures at once."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from tests.unit.test_proxy_app import UPSTREAM, NumberScorer

from secondpass.errors import ServerStartError
from secondpass.proxy import BackgroundProxy, ProxySettings, RerankProxy


def make_proxy() -> RerankProxy:
    return RerankProxy(ProxySettings(upstream=UPSTREAM), scorer=NumberScorer())


def test_the_url_answers_as_soon_as_it_is_returned() -> None:
    with BackgroundProxy(make_proxy()) as url, httpx.Client(base_url=url) as client:
        assert client.get("/_secondpass/livez").json() == {"status": "ok"}


def test_a_port_in_use_fails_fast_with_a_typed_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ServerStartError, match=f"did not start on 127.0.0.1:{port}"):
            BackgroundProxy(make_proxy(), port=port).__enter__()
        # Woken by the failed startup, not by the 30 s start timeout.
        assert time.monotonic() - started < 10
