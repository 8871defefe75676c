"""What the long-running commands (``serve``, ``proxy``) share: their parser, and a free port.

Why a port check of our own: uvicorn binds its socket only after the model has
loaded (seconds to minutes), so a port clash used to surface as a bind error
after all that work. Trying the bind first turns it into one line at once.
"""

from __future__ import annotations

import argparse
import errno
import socket
from collections.abc import Callable
from typing import Any


def add_server_parser(
    subparsers: Any,
    name: str,
    *,
    summary: str,
    description: str,
    epilog: str,
    config_env: str,
) -> argparse.ArgumentParser:
    """The parser of a long-running command, with its ``--config FILE`` option."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", metavar="FILE", default=None,
        help=f"settings file (.toml, .json or .yaml) whose values flags override [env {config_env}]",
    )  # fmt: skip
    return parser


def check_port_free(host: str, port: int, *, flag: str) -> None:
    """Raise ``ConfigurationError`` naming ``host:port`` and ``flag`` when something listens there.

    The probe binds as uvicorn does (``SO_REUSEADDR``, so a port in TIME_WAIT
    after a restart is not mistaken for a clash) and closes at once. Port 0
    (any free port) always passes; errors other than "address in use" are left
    for the server itself to report, as before.
    """
    from secondpass.errors import ConfigurationError

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return  # an unknown host name: the server's own error says so
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    continue
                shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                msg = (
                    f"cannot listen on {shown}: the port is already in use by another process; "
                    f"stop it or choose another port with {flag}"
                )
                raise ConfigurationError(msg) from exc


def run_server(
    args: argparse.Namespace,
    settings: Any,
    *,
    port_flag: str,
    service_name: str,
    run: Callable[[Any], int],
) -> int:
    """Start a loaded ``serve``/``proxy`` configuration: port check, observability, then ``run``.

    ``settings`` has ``host``, ``port`` and ``log_level``; its secrets must be
    registered for redaction before this is called. Tracing is flushed and
    stopped however ``run`` ends.
    """
    from secondpass.commands._observability import start_observability, stop_observability

    check_port_free(settings.host, settings.port, flag=port_flag)  # before the slow model load
    tracer = start_observability(args, log_level=settings.log_level, service_name=service_name)
    try:
        return run(settings)
    finally:
        stop_observability(tracer)
