"""docker-compose.yml is for users with Docker; check it stays consistent with the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from secondpass.errors import ConfigurationError
from secondpass.servers.versions import DOCKER_IMAGES
from secondpass.service.settings import ServiceSettings

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())


def test_every_service_has_a_healthcheck() -> None:
    services = COMPOSE["services"]
    assert {"elasticsearch", "opensearch", "redis", "secondpass"} <= set(services)
    for name, service in services.items():
        assert "healthcheck" in service, name


@pytest.mark.parametrize("name", ["elasticsearch", "opensearch", "redis"])
def test_engine_images_match_the_recorded_versions(name: str) -> None:
    assert COMPOSE["services"][name]["image"] == DOCKER_IMAGES[name]


def _interpolate(value: object, variables: dict[str, str]) -> str:
    """Compose's ``${NAME:-default}`` substitution, enough for this file."""
    return re.sub(
        r"\$\{(\w+):-([^}]*)\}", lambda m: variables.get(m.group(1), m.group(2)), str(value)
    )


def test_service_environment_is_understood_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    variables = {"SECONDPASS_API_KEYS": "compose-test-key-0001,compose-test-key-0002"}
    for key, value in COMPOSE["services"]["secondpass"]["environment"].items():
        monkeypatch.setenv(key, _interpolate(value, variables))
    settings = ServiceSettings()
    assert [k.get_secret_value() for k in settings.api_keys] == variables[
        "SECONDPASS_API_KEYS"
    ].split(",")
    assert settings.search_index == "docs"
    assert settings.engine.engine == "opensearch"
    assert settings.engine.hosts == ["http://opensearch:9200"]
    assert settings.cache.backend == "redis"


def test_the_service_needs_a_key_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset SECONDPASS_API_KEYS: the container listens on 0.0.0.0, so serve refuses to start."""
    for key, value in COMPOSE["services"]["secondpass"]["environment"].items():
        monkeypatch.setenv(key, _interpolate(value, {}))
    settings = ServiceSettings(host="0.0.0.0")  # the Dockerfile's ENTRYPOINT
    assert settings.api_keys == [] and not settings.allow_unauthenticated
    with pytest.raises(ConfigurationError, match="without authentication"):
        settings.check_exposure(keys_configured=False)
    assert "ALLOW_UNAUTHENTICATED" not in str(COMPOSE["services"]["secondpass"]["environment"])
