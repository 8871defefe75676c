"""The fault-injection proxy forwards, refuses, resets, delays and holds as promised."""

from __future__ import annotations

import select
import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest
from tests.support.tcp_proxy import TcpProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[0], server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo_server: tuple[str, int]) -> Iterator[TcpProxy]:
    with TcpProxy(echo_server) as p:
        yield p


def _connect(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=5)


def _echo(proxy: TcpProxy, payload: bytes = b"hello") -> bytes:
    with _connect(proxy) as sock:
        sock.sendall(payload)
        return sock.recv(4096)


def _readable(sock: socket.socket, timeout_s: float) -> bool:
    return bool(select.select([sock], [], [], timeout_s)[0])


def test_forwards_both_ways_and_counts(proxy: TcpProxy) -> None:
    assert _echo(proxy, b"abc") == b"abc"
    assert _echo(proxy, b"x" * 100_000)[:10] == b"x" * 10
    assert proxy.accepted == 2


def test_refused_connections_see_eof_then_forwarding_resumes(proxy: TcpProxy) -> None:
    proxy.refuse_next(2)
    for _ in range(2):
        with _connect(proxy) as sock:
            assert sock.recv(10) == b""
    assert _echo(proxy) == b"hello"
    assert proxy.accepted == 3


def test_reset_connections_see_econnreset(proxy: TcpProxy) -> None:
    proxy.reset_next(1)
    # On loopback the RST often lands before connect() returns, so it may surface there.
    with pytest.raises(ConnectionResetError), _connect(proxy) as sock:
        sock.recv(10)
    assert _echo(proxy) == b"hello"


def test_delay_holds_each_chunk(proxy: TcpProxy) -> None:
    proxy.delay_s = 0.5
    with _connect(proxy) as sock:
        sock.sendall(b"slow")
        assert not _readable(sock, 0.05)
        assert _readable(sock, 10)
        assert sock.recv(10) == b"slow"


def test_pause_holds_traffic_until_resume(proxy: TcpProxy) -> None:
    with _connect(proxy) as sock:
        assert _echo(proxy) == b"hello"
        proxy.pause()
        sock.sendall(b"held")
        assert not _readable(sock, 0.3)
        proxy.resume()
        assert _readable(sock, 10)
        assert sock.recv(10) == b"held"


def test_reset_all_drops_open_connections(proxy: TcpProxy) -> None:
    with _connect(proxy) as sock:
        sock.sendall(b"a")
        assert sock.recv(10) == b"a"
        proxy.reset_all()
        assert _readable(sock, 10)
        try:
            assert sock.recv(10) == b""
        except ConnectionResetError:
            pass


def test_upstream_down_resets_the_client() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    with TcpProxy(("127.0.0.1", dead_port)) as proxy, pytest.raises(ConnectionResetError):
        with _connect(proxy) as sock:
            sock.recv(10)


def test_stop_closes_listener(echo_server: tuple[str, int]) -> None:
    proxy = TcpProxy(echo_server).start()
    port = proxy.port
    proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
