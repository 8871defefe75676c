"""The ``--log-format`` and ``--otlp-endpoint`` flags of ``serve`` and ``proxy``, and applying them.

Why flags rather than settings fields: they configure the process (its log
handler, its trace exporter), not the service, and are applied before the
settings' own checks run, so a failing start is logged in the chosen format.
Each has an environment variable as well (``SECONDPASS_LOG_FORMAT``, and the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` family for tracing).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

LOG_FORMAT_ENV = "SECONDPASS_LOG_FORMAT"


def add_observability_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--log-format`` and ``--otlp-endpoint`` to a server command."""
    group = parser.add_argument_group("observability")
    group.add_argument(
        "--log-format",
        dest="log_format",
        choices=["text", "json"],
        default=None,
        help="log lines as text or as one JSON object per line, each with its request id "
        f"(default: text) [env {LOG_FORMAT_ENV}]",
    )
    group.add_argument(
        "--otlp-endpoint",
        dest="otlp_endpoint",
        metavar="URL",
        default=None,
        help="send OpenTelemetry traces over OTLP/HTTP to URL/v1/traces, e.g. "
        "http://127.0.0.1:4318 (needs the 'tracing' extra; default: off unless "
        "OTEL_EXPORTER_OTLP_ENDPOINT is set) [env OTEL_EXPORTER_OTLP_ENDPOINT]",
    )


def start_observability(args: argparse.Namespace, *, log_level: str, service_name: str) -> Any:
    """Configure logging and tracing from the flags; the tracer provider to shut down, or None."""
    from secondpass.observability import tracing
    from secondpass.observability.logs import configure_logging

    fmt = args.log_format or os.environ.get(LOG_FORMAT_ENV, "text").strip().lower() or "text"
    level = "debug" if getattr(args, "verbose", False) else log_level
    configure_logging(level=level, fmt=fmt)
    return tracing.configure(endpoint=args.otlp_endpoint, service_name=service_name)


def stop_observability(provider: Any) -> None:
    """Flush and stop the tracer provider from :func:`start_observability`."""
    from secondpass.observability import tracing

    if provider is not None:
        tracing.disable()
        provider.shutdown()
