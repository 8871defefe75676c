"""Configuration pieces of the scale-out story that need no servers (docs/scaling.md)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from tests.docs_examples import run_blocks

from secondpass.deploy.ray import RayServeOptions, app_builder
from secondpass.errors import ConfigurationError
from secondpass.servers.haproxy import haproxy_config
from secondpass.service.settings import ServiceSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_HAPROXY = REPO / "deploy" / "compose" / "haproxy.cfg"


def test_compose_haproxy_config_is_the_generated_one() -> None:
    """The file compose mounts is what the replica tests run, byte for byte (after the header)."""
    text = COMPOSE_HAPROXY.read_text(encoding="utf-8")
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    assert body == haproxy_config(
        bind=":8080", servers=[("serve-a", "serve-a:8080"), ("serve-b", "serve-b:8080")]
    )


def test_haproxy_accepts_the_generated_config(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        haproxy_config(
            bind="127.0.0.1:18080", servers=[("r0", "127.0.0.1:1"), ("r1", "127.0.0.1:2")]
        ),
        encoding="utf-8",
    )
    binary = shutil.which("haproxy")
    assert binary, "scripts/bootstrap.sh installs haproxy"
    done = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_haproxy_config_needs_a_server() -> None:
    with pytest.raises(ConfigurationError, match="at least one backend"):
        haproxy_config(bind="127.0.0.1:0", servers=[])


def test_compose_replicas_share_redis_and_drain_longer_than_the_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    assert {"serve-a", "serve-b", "haproxy", "proxy"} <= set(services)
    assert services["serve-a"]["environment"] == services["serve-b"]["environment"]
    for key, value in services["serve-a"]["environment"].items():
        monkeypatch.setenv(key, str(value).replace("${SECONDPASS_API_KEYS:-}", "k" * 20))
    settings = ServiceSettings()
    assert settings.cache.backend == "redis"
    assert settings.cache.redis_url == "redis://redis:6379/0"
    # HAProxy's default check: 2 failures x 500 ms
    assert settings.shutdown_delay_s > 2 * 0.5
    assert (
        "./deploy/compose/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"
        in services["haproxy"]["volumes"]
    )


def test_scaling_page_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    run_blocks("scaling.md")
    out = capsys.readouterr().out
    assert "{'num_cpus': 1.0, 'num_gpus': 0.5}" in out
    assert "refused: True" in out


def test_ray_options_fixed_or_autoscaled() -> None:
    fixed = RayServeOptions(num_replicas=3, num_gpus=0.25).deployment_kwargs()
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.25}
    scaled = RayServeOptions(max_replicas=4).deployment_kwargs()
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"]["min_replicas"] == 1
    assert scaled["autoscaling_config"]["max_replicas"] == 4
    assert RayServeOptions().deployment_kwargs()["max_ongoing_requests"] == 32


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"num_gpus": "-1"}, "num_gpus"),
        ({"num_replicas": "two"}, "num_replicas"),
        ({"min_replicas": "4", "max_replicas": "2"}, "min_replicas must not exceed"),
        ({"replicas": "2"}, "replicas"),
    ],
)
def test_serve_run_arguments_are_validated_before_ray_starts(
    args: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigurationError, match="invalid Ray Serve options") as info:
        app_builder(args)
    assert named in str(info.value)
