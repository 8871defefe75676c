"""Operability of ``serve`` and ``proxy``: tracing, request ids, structured logs.

:mod:`~secondpass.observability.tracing` (OpenTelemetry spans, a no-op unless
configured; safe to use from ``pipeline/``), :mod:`~secondpass.observability.logs`
(log levels, text or JSON lines, request ids) and
:mod:`~secondpass.observability.asgi` (the request middleware both front-ends
install). Metrics stay with each front-end (``service/metrics.py``,
``proxy/metrics.py``, ``scoring_metrics.py``). See docs/observability.md.
"""
