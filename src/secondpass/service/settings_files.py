"""A pydantic-settings base that adds a config file (TOML, JSON or YAML) below the environment.

Why: ``secondpass serve`` and ``secondpass proxy`` take their settings from
flags, environment variables and a config file chosen at run time (``--config``
or an environment variable). pydantic-settings asks the class for its sources,
so the path travels in a context variable, set only while :meth:`load` builds
the settings: no global state, and two loads never see each other's file.
Errors name every invalid field and never echo a value (it may be a secret).
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from secondpass.errors import ConfigurationError

_config_file: ContextVar[Path | None] = ContextVar("secondpass_config_file", default=None)

_Settings = TypeVar("_Settings", bound="FileBackedSettings")


class FileBackedSettings(BaseSettings):
    """Settings whose sources are, highest first: init, environment, dotenv, config file, defaults.

    Subclasses name the variable that may point at the config file
    (``config_file_env``) and what they configure (``settings_name``, used in errors).
    """

    config_file_env: ClassVar[str]
    settings_name: ClassVar[str]

    # Shared by every application's settings (a subclass adds its ``env_prefix``):
    # nested areas by ``__`` (``..._RERANK__DEVICE``), a misspelt key is an error,
    # and defaults are validated too.
    model_config = SettingsConfigDict(
        env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Add the config file below the environment and above the defaults."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        path = _config_file.get()
        if path is None and os.environ.get(cls.config_file_env):
            path = Path(os.environ[cls.config_file_env])
        if path is not None:
            sources.append(file_source(settings_cls, path))
        sources.append(file_secret_settings)
        return tuple(sources)

    @classmethod
    def load(
        cls: type[_Settings], config_file: str | Path | None = None, **overrides: Any
    ) -> _Settings:
        """Build settings from a config file, the environment and explicit overrides.

        ``overrides`` win over everything (the CLI passes the flags it was given);
        nested areas are dicts, e.g. ``rerank={"device": "cpu"}``. Invalid settings
        raise :class:`~secondpass.errors.ConfigurationError` naming each field.
        """
        path = Path(config_file) if config_file is not None else None
        if path is not None and not path.is_file():
            msg = f"config file {str(path)!r} does not exist"
            raise ConfigurationError(msg)
        token = _config_file.set(path)
        try:
            return cls(**overrides)
        except ValueError as exc:
            if isinstance(exc, ConfigurationError):
                raise
            msg = f"invalid {cls.settings_name} settings: {summarise_errors(exc)}"
            raise ConfigurationError(msg) from exc
        finally:
            _config_file.reset(token)


def file_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    """The pydantic-settings source for a config file, chosen by its suffix."""
    suffix = path.suffix.lower()
    if not path.is_file():
        msg = f"config file {str(path)!r} does not exist"
        raise ConfigurationError(msg)
    if suffix == ".toml":
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    if suffix == ".json":
        return JsonConfigSettingsSource(settings_cls, json_file=path)
    if suffix in (".yaml", ".yml"):
        return YamlConfigSettingsSource(settings_cls, yaml_file=path)
    msg = f"config file {str(path)!r}: unsupported format {suffix!r}; use .toml, .json or .yaml"
    raise ConfigurationError(msg)


def summarise_errors(exc: ValueError) -> str:
    """One line per invalid setting, without echoing values (they may be secrets)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0]
    parts = []
    for err in errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc or 'settings'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)
