"""A threaded loopback TCP proxy for fault injection in tests.

Put it between a client and a real server (engine, Redis, our service) to make
the network misbehave on purpose, without touching either side:

* ``refuse_next(n)``: the next ``n`` connections are accepted and closed at once
  (the client sees EOF / "connection closed" before any reply);
* ``reset_next(n)``: the next ``n`` connections are reset (RST, the client sees
  ``ECONNRESET``);
* ``delay_s``: every chunk is held that long before it is forwarded (latency);
* ``pause()`` / ``resume()``: traffic is held (accepted connections hang) until
  resumed; ``reset_all()`` drops every open connection;
* ``accepted`` counts connections accepted so far (retries show up here).

Example::

    with TcpProxy(("127.0.0.1", redis_server.port)) as proxy:
        proxy.reset_next(2)
        client = redis.Redis(port=proxy.port)  # first two connects fail, third works
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from types import TracebackType


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target``, with knobs to break the connection."""

    def __init__(self, target: tuple[str, int], *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = target
        self.host = host
        self._requested_port = port
        self.port = 0
        self.delay_s = 0.0
        self.accepted = 0
        self._refuse = 0
        self._reset = 0
        self._running = threading.Event()  # set while traffic flows (cleared by pause)
        self._running.set()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()

    # -- knobs ---------------------------------------------------------------
    def refuse_next(self, n: int) -> None:
        """Close the next ``n`` connections right after accepting them."""
        with self._lock:
            self._refuse = n

    def reset_next(self, n: int) -> None:
        """Reset (RST) the next ``n`` connections right after accepting them."""
        with self._lock:
            self._reset = n

    def pause(self) -> None:
        """Hold all traffic (existing and new connections) until :meth:`resume`."""
        self._running.clear()

    def resume(self) -> None:
        """Let held traffic flow again."""
        self._running.set()

    def reset_all(self) -> None:
        """Reset every open connection (both sides)."""
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            _reset(sock)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, convenient for HTTP servers."""
        return f"http://{self.host}:{self.port}"

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> TcpProxy:
        """Bind and start accepting in a background thread."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self._requested_port))
        listener.listen(128)
        listener.settimeout(0.1)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        """Stop accepting, drop every connection and join the threads."""
        self._stopping.set()
        self._running.set()
        if self._listener is not None:
            self._listener.close()
        self.reset_all()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------
    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                if self._reset > 0:
                    self._reset -= 1
                    action = "reset"
                elif self._refuse > 0:
                    self._refuse -= 1
                    action = "refuse"
                else:
                    action = "forward"
            if action == "reset":
                _reset(client)
            elif action == "refuse":
                client.close()
            else:
                self._spawn(self._connect, client)

    def _connect(self, client: socket.socket) -> None:
        self._running.wait()
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            _reset(client)
            return
        with self._lock:
            self._open.update((client, upstream))
        try:
            self._relay(client, upstream)
        finally:
            with self._lock:
                self._open.difference_update((client, upstream))
            client.close()
            upstream.close()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy both directions until both have ended; an error resets both sides."""
        peer = {client: upstream, upstream: client}
        readable = {client, upstream}
        try:
            while readable and not self._stopping.is_set():
                ready, _, _ = select.select(list(readable), [], [], 0.1)
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        readable.discard(src)
                        with contextlib.suppress(OSError):
                            peer[src].shutdown(socket.SHUT_WR)
                        continue
                    if self.delay_s > 0:
                        time.sleep(self.delay_s)
                    self._running.wait()
                    peer[src].sendall(data)
        except (OSError, ValueError):  # ValueError: select() on a socket reset_all() closed
            _reset(client)
            _reset(upstream)


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0 so the peer gets a RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
