"""Command-line flags generated from a pydantic-settings class, and read back as overrides.

Why generated: ``serve`` and ``proxy`` expose every setting as a flag, and a
hand-written flag list drifts from the settings class the day a field is added.
Flags default to "not given" (``argparse.SUPPRESS``), so only what the user
typed overrides the environment and the config file. Secrets get no flag:
command lines are visible to every user of the machine.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from secondpass.commands._help import FIELD_HELP

# Fixed arguments of every command: never settings.
_NOT_SETTINGS = frozenset(
    {"handler", "command", "verbose", "quiet", "progress", "config", "log_format", "otlp_endpoint"}
)  # the last two: process flags of serve and proxy (commands/_observability.py)


def add_settings_flags(
    parser: argparse.ArgumentParser,
    settings_cls: Any,
    *,
    group: str,
    env_prefix: str,
    areas: Mapping[str, str],
    skip: Iterable[str] = (),
) -> None:
    """A flag per field of ``settings_cls``; nested ``areas`` (name -> env prefix) get ``--area-name``."""
    skipped = set(skip)
    top = parser.add_argument_group(group)
    for name, info in settings_cls.model_fields.items():
        if name in areas or name in skipped:
            continue
        add_flag(top, name, name, info, f"{env_prefix}{name.upper()}")
    for area, prefix in areas.items():
        area_cls = settings_cls.model_fields[area].annotation
        assert isinstance(area_cls, type)
        area_group = parser.add_argument_group(area)
        for name, info in area_cls.model_fields.items():  # type: ignore[attr-defined]
            add_flag(
                area_group, f"{area}-{name}", f"{area}.{name}", info, f"{prefix}{name.upper()}"
            )


def flag_overrides(args: argparse.Namespace, *, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The settings given on the command line, as keyword overrides (areas as nested dicts)."""
    ignored = _NOT_SETTINGS | set(skip)
    overrides: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in ignored:
            continue
        area, _, name = key.partition(".")
        if name:
            overrides.setdefault(area, {})[name] = value
        else:
            overrides[key] = value
    return overrides


def add_flag(group: Any, flag: str, dest: str, info: FieldInfo, env: str) -> None:
    """One ``--flag`` for a settings field; its help names the default and the variable."""
    kind, optional = _unwrap(info.annotation)
    if kind is SecretStr:
        return
    default = info.get_default(call_default_factory=True)
    if isinstance(default, list):
        default = " ".join(str(v) for v in default)
    described = info.description or FIELD_HELP.get(dest) or dest.replace("_", " ")
    help_text = described.replace("%", "%%")
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
