"""``secondpass serve``: the HTTP service (rerank, search, health, metrics).

Every setting of :class:`~secondpass.service.settings.ServiceSettings` is a flag,
generated from the settings class so the two can never drift apart; each flag's
help names its environment variable. Secrets (passwords, API keys) have no flag,
because command lines are visible to every user of the machine: set them in the
environment or the config file.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

from pydantic import SecretStr
from pydantic.fields import FieldInfo

_AREAS = {"rerank": "SECONDPASS_RERANK_", "cache": "SECONDPASS_CACHE_", "engine": "SECONDPASS_ENGINE_"}


def register(subparsers: Any) -> None:
    """Add the ``serve`` sub-command (settings imported lazily would need the classes now)."""
    from secondpass.service.settings import CONFIG_FILE_ENV, ServiceSettings

    parser = subparsers.add_parser(
        "serve",
        help="run the HTTP service (Cohere/TEI rerank, /v1/search, /metrics)",
        description=(
            "Run the SecondPass HTTP service. Precedence: flags > SECONDPASS_SERVICE_* "
            "variables > config file > each area's own variables > defaults."
        ),
        epilog=(
            "Secrets have no flags: set SECONDPASS_ENGINE_PASSWORD, SECONDPASS_ENGINE_API_KEY, "
            "SECONDPASS_CACHE_REDIS_PASSWORD (or the SECONDPASS_SERVICE_<AREA>__<NAME> forms) "
            "or put them in the config file."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"settings file (.toml, .json or .yaml) [env {CONFIG_FILE_ENV}]",
    )
    top = parser.add_argument_group("service")
    for name, info in ServiceSettings.model_fields.items():
        if name in _AREAS:
            continue
        _add_flag(top, name, name, info, f"SECONDPASS_SERVICE_{name.upper()}")
    for area, prefix in _AREAS.items():
        area_cls = ServiceSettings.model_fields[area].annotation
        assert isinstance(area_cls, type)
        group = parser.add_argument_group(area)
        for name, info in area_cls.model_fields.items():  # type: ignore[attr-defined]
            env = f"{prefix}{name.upper()}"
            _add_flag(group, f"{area}-{name}", f"{area}.{name}", info, env)
    parser.set_defaults(handler=_run)


def _add_flag(group: Any, flag: str, dest: str, info: FieldInfo, env: str) -> None:
    kind, optional = _unwrap(info.annotation)
    if kind is SecretStr:
        return
    default = info.get_default(call_default_factory=True)
    if isinstance(default, list):
        default = " ".join(str(v) for v in default)
    help_text = (info.description or dest.replace("_", " ")).replace("%", "%%")
    help_text += f" (default: {default}) [env {env}]"
    kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text}
    origin = typing.get_origin(kind)
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is Literal:
        kwargs["choices"] = list(typing.get_args(kind))
    elif origin is list:
        kwargs["nargs"] = "+"
        kwargs["metavar"] = "VALUE"
    elif kind in (int, float):
        kwargs["type"] = kind
        kwargs["metavar"] = "N" if kind is int else "X"
    else:
        kwargs["metavar"] = "TEXT"
    if optional and kind is not bool and origin is not list:
        kwargs["help"] += "; 'none' unsets"
        base = kwargs.pop("type", str)
        kwargs["type"] = _nullable(base)
    group.add_argument("--" + flag.replace("_", "-"), **kwargs)


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the type inside ``X | None``, whether None was allowed)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _nullable(base: Any) -> Any:
    def convert(text: str) -> Any:
        return None if text.lower() == "none" else base(text)

    convert.__name__ = getattr(base, "__name__", "value")
    return convert


def _run(args: argparse.Namespace) -> int:
    from secondpass.service.server import serve
    from secondpass.service.settings import ServiceSettings

    overrides: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in ("handler", "command", "verbose", "config"):
            continue
        area, _, name = key.partition(".")
        if name:
            overrides.setdefault(area, {})[name] = value
        else:
            overrides[key] = value
    settings = ServiceSettings.load(args.config, **overrides)
    return serve(settings)
