"""``secondpass serve``: the HTTP service (rerank, search, health, metrics).

Every setting of :class:`~secondpass.service.settings.ServiceSettings` is a flag,
generated from the settings class so the two can never drift apart; each flag's
help names its environment variable. Secrets (passwords, API keys) have no flag,
because command lines are visible to every user of the machine: set them in the
environment or the config file.
"""

from __future__ import annotations

import argparse
from typing import Any

from secondpass.commands._flags import add_settings_flags, flag_overrides
from secondpass.commands._observability import add_observability_flags
from secondpass.commands._serving import add_server_parser, run_server

_AREAS = {
    "rerank": "SECONDPASS_RERANK_",
    "cache": "SECONDPASS_CACHE_",
    "engine": "SECONDPASS_ENGINE_",
}


def register(subparsers: Any) -> None:
    """Add the ``serve`` sub-command (settings imported lazily would need the classes now)."""
    from secondpass.service.settings import CONFIG_FILE_ENV, ServiceSettings

    parser = add_server_parser(
        subparsers,
        "serve",
        summary="run the HTTP service (Cohere/TEI rerank, /v1/search, /metrics)",
        description=(
            "Run the SecondPass HTTP service. Precedence: flags > SECONDPASS_SERVICE_* "
            "variables > config file > each area's own variables > defaults."
        ),
        epilog=(
            "Secrets have no flags: set SECONDPASS_SERVICE_API_KEYS (or --api-key-file), "
            "SECONDPASS_ENGINE_PASSWORD, SECONDPASS_ENGINE_API_KEY, "
            "SECONDPASS_CACHE_REDIS_PASSWORD (or the SECONDPASS_SERVICE_<AREA>__<NAME> forms) "
            "or put them in the config file."
        ),
        config_env=CONFIG_FILE_ENV,
    )
    add_settings_flags(
        parser,
        ServiceSettings,
        group="service",
        env_prefix="SECONDPASS_SERVICE_",
        areas=_AREAS,
        skip=("api_keys",),  # secrets: environment or config file only
    )
    add_observability_flags(parser)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from secondpass.redaction import register_secrets_from
    from secondpass.service.server import serve
    from secondpass.service.settings import ServiceSettings

    settings = ServiceSettings.load(args.config, **flag_overrides(args))
    register_secrets_from(settings)  # every secret of the settings is redacted from logs
    return run_server(args, settings, port_flag="--port", service_name="secondpass-serve", run=serve)
