"""The proxy refuses header values holding control bytes before anything goes upstream.

Elasticsearch answers such a header 400 and then never reads that connection
again (found by the session-3 attacker): forwarded, one request poisoned a pooled
upstream connection. The end-to-end case against a real engine is in
tests/reliability/test_session3_attacks.py.
"""

from __future__ import annotations

import httpx
import pytest
from tests.unit.test_proxy_app import Upstream, make_client

from secondpass.proxy.access import check_header_values

BAD = [b"ab\x1bc", b"\x00", b"x\x7f", b"a\x08b", b"\x1f", b"ok\x0bvt"]
GOOD = [b"plain", b"tab\tinside", b"caf\xc3\xa9", b"\x80obs-text", b"00-4bf92f35-01", b""]


@pytest.mark.parametrize("value", BAD)
def test_control_bytes_are_refused_naming_the_header(value: bytes) -> None:
    refusal = check_header_values([(b"accept", b"*/*"), (b"x-request-id", value)])
    assert refusal is not None and refusal.status == 400
    assert "[x-request-id]" in refusal.reason


@pytest.mark.parametrize("value", GOOD)
def test_ordinary_values_pass(value: bytes) -> None:
    assert check_header_values([(b"x-opaque-id", value)]) is None


@pytest.mark.parametrize("name", ["X-Request-ID", "X-Opaque-Id", "traceparent", "Authorization"])
async def test_nothing_with_a_control_byte_reaches_the_engine(name: str) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "green"})

    upstream = Upstream(answer)
    async with make_client(upstream) as client:
        refused = await client.get("/_cluster/health", headers={name: "ab\x1bc"})
        fine = await client.get("/_cluster/health", headers={name: "abc"})
    assert refused.status_code == 400
    assert refused.json()["error"]["reason"] == f"header [{name.lower()}] holds a control character"
    assert fine.status_code == 200
    assert len(upstream.requests) == 1  # only the clean request went up
