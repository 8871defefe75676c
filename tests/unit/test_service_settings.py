"""Service settings: every field is a flag, and flags > env > config file > area env > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from secondpass.cli import build_parser
from secondpass.commands.serve import _run
from secondpass.errors import ConfigurationError
from secondpass.service.settings import ServiceSettings


def test_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    for name in ServiceSettings.model_fields:
        if name not in ("rerank", "cache", "engine", "api_keys"):
            assert "--" + name.replace("_", "-") in out
    assert "--api-keys" not in out  # client keys too: env or config file only
    assert "--rerank-model" in out and "--cache-backend" in out and "--engine-hosts" in out
    assert "--engine-password" not in out  # secrets only via env or file
    assert "SECONDPASS_SERVICE_MAX_WAIT_MS" in out


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "service.toml"
    config.write_text('port = 9001\nmax_wait_ms = 7\n[rerank]\nmodel = "from-file"\ndevice = "cuda"\n')
    monkeypatch.setenv("SECONDPASS_SERVICE_MAX_WAIT_MS", "9")
    monkeypatch.setenv("SECONDPASS_RERANK_DTYPE", "float16")
    monkeypatch.setenv("SECONDPASS_SERVICE_ENGINE__HOSTS", '["http://10.0.0.1:9200"]')
    args = build_parser().parse_args(["serve", "--config", str(config), "--rerank-device", "cpu"])
    captured = {}
    monkeypatch.setattr(
        "secondpass.service.server.serve", lambda settings: captured.setdefault("s", settings) and 0
    )
    _run(args)
    s = captured["s"]
    assert s.port == 9001  # file
    assert s.max_wait_ms == 9  # env beats file
    assert s.rerank.device == "cpu"  # flag beats file
    assert s.rerank.model == "from-file"
    assert s.rerank.dtype == "float16"  # the area's own env fills the gap
    assert s.engine.hosts == ["http://10.0.0.1:9200"]


def test_invalid_settings_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="port"):
        ServiceSettings.load(port=-1)
    with pytest.raises(ConfigurationError, match="does not exist"):
        ServiceSettings.load(tmp_path / "missing.toml")
