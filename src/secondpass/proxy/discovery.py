"""Node discovery through the proxy, so a sniffing client keeps talking to it.

The official clients can discover the cluster's nodes and talk to them
directly: elasticsearch-py (``elastic_transport``) and opensearch-py ask
``GET /_nodes/_all/http`` (on start, on a node failure, or every few minutes)
and replace or extend their pool with each node's ``http.publish_address``;
the Java, Go and Ruby sniffers ask ``GET /_nodes/http``. Relayed unchanged,
that answer hands the client the engine's own address and it stops reranking
without a word. So the proxy answers these calls itself: it asks the engine
the same question (with the client's credentials), and every node's
``http.publish_address`` and ``http.bound_address`` become the proxy's own
publish address. Names, roles, attributes and versions stay the engine's, so a
client's node filter (master-only nodes left out, attribute filters) decides
as it would; whichever nodes it keeps, they are all the proxy.

The proxy's publish address is ``publish_address`` when configured (a proxy
behind a load balancer publishes the balancer), else the local address of the
connection the request came in on, which is the address the client reached.

Example:
    >>> is_node_discovery("GET", b"/_nodes/_all/http")
    True
    >>> answer = {"nodes": {"n1": {"roles": ["data"], "http": {
    ...     "publish_address": "10.0.0.5:9200", "bound_address": ["10.0.0.5:9200"]}}}}
    >>> published(answer, "127.0.0.1:9201")["nodes"]["n1"]["http"]["publish_address"]
    '127.0.0.1:9201'
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Mapping
from typing import Any

import httpx

from secondpass.proxy import rules
from secondpass.proxy.plumbing import (
    REWRITTEN_DOWN,
    REWRITTEN_UP,
    Answer,
    Incoming,
    Send,
    Upstream,
    dump,
    json_object,
    negotiated,
    send_answer,
    unreachable,
)

logger = logging.getLogger(__name__)

# /_nodes/http and /_nodes/{node filter}/http: the node-info API asked for the
# http section only, which is what every official sniffer sends. Not the stats,
# usage or hot-threads APIs, whose paths share the prefix.
_DISCOVERY_PATH = re.compile(rb"^/_nodes(?:/(?P<nodes>[^/]+))?/http/?$")
_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):[0-9]{1,5}$")
_NOT_NODE_FILTERS = frozenset({b"stats", b"usage", b"hot_threads", b"_hot_threads"})
# The answer's shape does not depend on the API version asked for, and a client
# of a newer major than the engine (the 9.x Python client sniffs with
# compatible-with=9 whatever it was configured with) must still find the proxy.
_ASKED_AS = b"application/json"


def is_node_discovery(method: str, path: bytes) -> bool:
    """Whether ``method path`` is a node-discovery call the proxy answers itself."""
    if method != "GET":
        return False
    match = _DISCOVERY_PATH.match(path)
    return match is not None and match.group("nodes") not in _NOT_NODE_FILTERS


def publish_address(
    configured: str | None, server: tuple[str, int | None] | None, host_header: str | None = None
) -> str | None:
    """The ``host:port`` a client should use to reach this proxy (``None``: unknown).

    ``configured`` (the ``publish_address`` setting) wins; else ``server``, the
    ASGI scope's local address of the connection; else (a unix socket has no
    port) the ``Host`` the client sent, when it names a port. An IPv6 literal
    is bracketed, as the engines publish it.
    """
    if configured is not None:
        return configured
    if server is None or server[1] is None:
        if host_header and _HOST_PORT.match(host_header):
            return host_header
        return None
    host, port = server
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            host = f"[{host}]"
    except ValueError:
        pass  # a host name (or a unix socket path: no port, handled above)
    return f"{host}:{port}"


def published(answer: Mapping[str, Any], address: str) -> dict[str, Any]:
    """The node-info ``answer`` with every node's HTTP address replaced by ``address``.

    Only ``http.publish_address`` and ``http.bound_address`` change, and only
    where the node has an ``http`` section (a ``filter_path`` may have removed it).
    """
    out = dict(answer)
    nodes = answer.get("nodes")
    if not isinstance(nodes, Mapping):
        return out
    rewritten: dict[str, Any] = {}
    for node_id, node in nodes.items():
        http = node.get("http") if isinstance(node, Mapping) else None
        if isinstance(http, Mapping):
            http = dict(http)
            if "publish_address" in http:
                http["publish_address"] = address
            if "bound_address" in http:
                http["bound_address"] = [address]
            node = {**node, "http": http}
        rewritten[node_id] = node
    out["nodes"] = rewritten
    return out


def _as_json(query: bytes) -> bytes:
    """The client's query without the proxy's own parameters and without ``format``.

    The answer must be JSON for the proxy to put its own address in it; a
    ``format=yaml`` (or cbor, smile) answer would carry the engine's address.
    """
    params = rules.split_query(query)
    kept = [p for p in params if p.key not in (rules.OPT_OUT_PARAM, "format")]
    return query if len(kept) == len(params) else rules.join_query(kept)


class NodeDiscovery:
    """Answers the node-discovery calls (:func:`is_node_discovery`) with the proxy's address."""

    def __init__(self, *, upstream: Upstream, configured_address: str | None) -> None:
        self._upstream = upstream
        self._configured = configured_address

    async def answer(
        self, incoming: Incoming, server: tuple[str, int | None] | None, send: Send
    ) -> None:
        """Ask the engine, publish the proxy in its place, answer the client.

        An engine error (401, 404, ...) comes back as the engine sent it; a
        ``format`` parameter is dropped (the answer must be JSON to be
        rewritten), and a 200 answer that still cannot be rewritten is 502,
        never relayed; an unreachable engine is 502/504 as for any other call.
        """
        headers = self._upstream.up_headers(
            incoming.headers, REWRITTEN_UP | {b"accept", b"content-type"}
        )
        headers.append((b"accept", _ASKED_AS))
        request = httpx.Request(
            "GET", self._upstream.url(incoming.raw_path, _as_json(incoming.query)), headers=headers
        )
        try:
            response = await self._upstream.send(request)
        except httpx.HTTPError as exc:
            await send_answer(send, unreachable(exc, None))
            return
        accept_encoding = incoming.header(b"accept-encoding")
        address = publish_address(self._configured, server, incoming.header(b"host"))
        parsed = json_object(response)
        kept = [(k, v) for k, v in response.headers.raw if k.lower() not in REWRITTEN_DOWN]
        if response.status_code != 200:
            answer = Answer(response.status_code, kept, response.content)
        elif parsed is None or address is None:
            # Never relay a node list the proxy could not rewrite: it names the
            # engine's own address, which a sniffing client would then use directly.
            logger.warning("node discovery refused: the answer is not JSON, or no own address")
            body = {
                "error": {
                    "type": "secondpass_proxy_exception",
                    "reason": "node discovery: the node list could not be rewritten to the proxy",
                },
                "status": 502,
            }
            answer = Answer(502, [(b"content-type", b"application/json")], dump(body))
        else:
            kept = [(k, v) for k, v in kept if k.lower() != b"content-type"]
            kept.append((b"content-type", b"application/json"))
            answer = Answer(200, kept, dump(published(parsed, address)))
        await send_answer(send, negotiated(answer, accept_encoding))
