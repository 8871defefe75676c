"""docker-compose.yml is for users with Docker; check it stays consistent with the code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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


def test_service_environment_is_understood_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in COMPOSE["services"]["secondpass"]["environment"].items():
        monkeypatch.setenv(key, str(value))
    settings = ServiceSettings()
    assert settings.search_index == "docs"
    assert settings.engine.engine == "opensearch"
    assert settings.engine.hosts == ["http://opensearch:9200"]
    assert settings.cache.backend == "redis"
