"""``secondpass proxy``: an Elasticsearch/OpenSearch-compatible proxy that reranks ``_search``.

Point an existing application at the proxy instead of the cluster; everything is
forwarded, and search answers come back reranked. Every setting of
:class:`~secondpass.proxy.settings.ProxySettings` is a flag (generated from
the settings class, as for ``serve``); the passage fields of each index are given
with ``--index NAME=FIELD[,FIELD...]`` and, optionally, ``--index-template
NAME=TEMPLATE``. Secrets have no flags: set ``SECONDPASS_PROXY_PASSWORD``,
``SECONDPASS_PROXY_API_KEY`` or ``SECONDPASS_PROXY_CLIENT_API_KEYS`` (a JSON list)
in the environment or the config file, or use ``--client-api-key-file``.
Configured upstream credentials are refused unless ``--lend-credentials`` is given;
that check runs before the model loads.
"""

from __future__ import annotations

import argparse
from typing import Any

from secondpass.commands._flags import add_settings_flags, flag_overrides
from secondpass.commands._observability import add_observability_flags
from secondpass.commands._serving import add_server_parser, run_server

_AREAS = {"rerank": "SECONDPASS_RERANK_", "cache": "SECONDPASS_CACHE_"}
# indices: --index/--index-template; client_api_keys: secrets get no flag (a list
# of SecretStr is not caught by the generator's SecretStr rule).
_SPECIAL = ("indices", "client_api_keys")


def register(subparsers: Any) -> None:
    """Add the ``proxy`` sub-command."""
    from secondpass.proxy.settings import CONFIG_FILE_ENV, ProxySettings

    parser = add_server_parser(
        subparsers,
        "proxy",
        summary="run a drop-in Elasticsearch/OpenSearch proxy that reranks _search",
        description=(
            "Listen like a cluster, forward everything to --upstream, rerank search "
            "answers on the way back. Precedence: flags > SECONDPASS_PROXY_* variables > "
            "config file > each area's own variables > defaults."
        ),
        epilog=(
            "Example: secondpass proxy --upstream http://127.0.0.1:9200 --listen 127.0.0.1:9201 "
            "--index docs=title,body --index-template 'docs={title}: {body}'"
        ),
        config_env=CONFIG_FILE_ENV,
    )
    parser.add_argument(
        "--index", dest="index_fields", action="append", default=[], metavar="NAME=FIELDS",
        help="passage fields of an index, alias or pattern, comma-separated (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--index-template", dest="index_templates", action="append", default=[],
        metavar="NAME=TEMPLATE",
        help="str.format template over an --index's fields, e.g. 'docs={title}: {body}'",
    )  # fmt: skip
    add_settings_flags(
        parser,
        ProxySettings,
        group="proxy",
        env_prefix="SECONDPASS_PROXY_",
        areas=_AREAS,
        skip=_SPECIAL,
    )
    add_observability_flags(parser)
    parser.set_defaults(handler=_run)


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    from secondpass.errors import ConfigurationError

    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            msg = f"{flag} expects NAME=VALUE, got {value!r}"
            raise ConfigurationError(msg)
        out[name] = rest
    return out


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line sets, as keyword overrides for ``ProxySettings.load``."""
    from secondpass.errors import ConfigurationError

    overrides = flag_overrides(args, skip=("index_fields", "index_templates"))
    fields = _pairs(args.index_fields, "--index")
    templates = _pairs(args.index_templates, "--index-template")
    unknown = sorted(set(templates) - set(fields))
    if unknown:
        msg = f"--index-template names indices without --index: {unknown}"
        raise ConfigurationError(msg)
    if fields:
        overrides["indices"] = {
            name: {
                "fields": [f.strip() for f in value.split(",") if f.strip()],
                "template": templates.get(name),
            }
            for name, value in fields.items()
        }
    return overrides


def _run(args: argparse.Namespace) -> int:
    from secondpass.proxy.running import run
    from secondpass.proxy.settings import ProxySettings
    from secondpass.redaction import register_secrets_from

    settings = ProxySettings.load(args.config, **overrides_from_args(args))
    register_secrets_from(settings)  # every secret of the settings is redacted from logs
    settings.access_gate()  # refuse unsafe lending before the slow model load
    return run_server(args, settings, port_flag="--listen", service_name="secondpass-proxy", run=run)
