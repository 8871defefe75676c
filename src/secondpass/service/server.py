"""Run the service under uvicorn with a graceful, probe-friendly shutdown.

On the first SIGTERM (or Ctrl-C) the service turns ``/readyz`` to 503 at once but
keeps serving for ``shutdown_delay_s`` (time for a load balancer to notice), then
stops accepting connections, lets in-flight requests finish (at most
``shutdown_timeout_s``), flushes the batching queue and exits 0. A second signal
exits at once.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType
from typing import Any

import uvicorn

from secondpass.service.app import ServiceState, create_app
from secondpass.service.http_limits import HttpLimits
from secondpass.service.settings import ServiceSettings

logger = logging.getLogger("secondpass.service")

__all__ = ["serve"]


class _DrainingServer(uvicorn.Server):
    """A uvicorn server whose first exit signal drains instead of closing at once."""

    def __init__(self, config: uvicorn.Config, state: ServiceState, delay_s: float) -> None:
        super().__init__(config)
        self._state = state
        self._delay_s = delay_s
        self._exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._exit_at is not None:  # second signal: uvicorn's own (forced) exit
            self.force_exit = True
            super().handle_exit(sig, frame)
            return
        logger.info("received %s: draining", signal.Signals(sig).name)
        self._state.begin_drain()
        self._exit_at = time.monotonic() + self._delay_s

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        return await super().on_tick(counter)


def serve(settings: ServiceSettings, **app_kwargs: Any) -> int:
    """Serve until a signal; returns the process exit code (0 after a graceful drain)."""
    app = create_app(settings, **app_kwargs)
    state: ServiceState = app.state.service
    settings.check_exposure(keys_configured=bool(state.api_keys))
    if state.api_keys:
        logger.info("API keys required (%d configured: %r)", len(state.api_keys), state.api_keys)
    elif settings.exposed:
        logger.warning(
            "serving %s WITHOUT authentication (allow_unauthenticated is set)", settings.host
        )
    if settings.ssl_certfile is None and state.api_keys and settings.exposed:
        logger.warning("API keys travel in clear text: set ssl_certfile/ssl_keyfile or a TLS proxy")
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        log_config=None,  # keep the CLI's logging set-up
        timeout_graceful_shutdown=int(max(1, settings.shutdown_timeout_s)),
        lifespan="on",
        ssl_certfile=None if settings.ssl_certfile is None else str(settings.ssl_certfile),
        ssl_keyfile=None if settings.ssl_keyfile is None else str(settings.ssl_keyfile),
        **HttpLimits.from_settings(settings).uvicorn_kwargs(),  # h11 pinned, head capped (431)
    )
    server = _DrainingServer(config, state, settings.shutdown_delay_s)
    server.run()
    return 0 if server.started else 1
