"""What the ``index``, ``eval`` and ``demo`` commands share: reaching an engine.

Either the user names a cluster (``--url``, credentials from the
``SECONDPASS_ENGINE_*`` environment) or the command starts a throw-away local
node and always stops it, even on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import logging
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ENGINES = ("opensearch", "elasticsearch")
TEXT_FIELDS = ("title", "text")
DEFAULT_MODEL_HELP = (
    "cross-encoder: a Hugging Face id or a local directory (default: BAAI/bge-reranker-v2-m3), "
    "or a rerank API such as cohere:rerank-v3.5 or tei:http://host:8080 "
    "(docs/remote-rerankers.md; keys from the environment)"
)
REACH_TIMEOUT_S = 5.0


def add_engine_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Callable[[argparse.Namespace], int],
    summary: str,
    description: str,
    *,
    local_default: bool,
) -> argparse.ArgumentParser:
    """The parser of a command that works on an engine (``index``, ``eval``, ``demo``).

    One place for what they share: the parser itself, ``--engine``/``--url`` and
    the handler, so the three commands cannot drift apart in how an engine is named.
    """
    parser = subparsers.add_parser(name, help=summary, description=description)
    add_engine_arguments(parser, local_default=local_default)
    parser.set_defaults(handler=handler)
    return parser


def add_dataset_argument(
    parser: argparse.ArgumentParser, what: str, *, optional: bool = False
) -> None:
    """The ``DATASET_DIR`` positional (a BEIR folder); ``what`` says which of its files are read.

    ``optional`` lets a command that has a mode without a dataset (``eval --clicks``)
    check its presence itself.
    """
    parser.add_argument(
        "dataset", type=Path, metavar="DATASET_DIR", nargs="?" if optional else None,
        default=None, help=f"BEIR folder: {what}",
    )  # fmt: skip


def add_model_arguments(parser: argparse.ArgumentParser, *, what: str) -> None:
    """``--model`` and ``--device`` of the commands that load a reranker; ``what`` names the models."""
    parser.add_argument("--model", default=None, help=DEFAULT_MODEL_HELP)
    parser.add_argument(
        "--device",
        default=None,
        help=f"torch device for {what}, e.g. cpu or cuda:0 (default: auto)",
    )


def add_engine_arguments(parser: argparse.ArgumentParser, *, local_default: bool) -> None:
    """``--engine`` and ``--url`` (with help saying what happens without ``--url``)."""
    parser.add_argument(
        "--engine", choices=ENGINES, default="opensearch",
        help="which search engine the cluster runs (default: opensearch)",
    )  # fmt: skip
    where = (
        "start a local single-node engine for this run and stop it afterwards"
        if local_default
        else "use SECONDPASS_ENGINE_HOSTS, else http://127.0.0.1:9200"
    )
    parser.add_argument("--url", default=None, help=f"engine URL; without it: {where}")


_CHATTY_LOGGERS = (
    "opensearch", "elastic_transport", "elasticsearch", "httpx",
    "sentence_transformers", "transformers", "huggingface_hub",
)  # fmt: skip


# The engine clients log every failed attempt at WARNING with a full traceback;
# our connector already logs one line per retry and raises one typed error.
_ENGINE_CLIENT_LOGGERS = ("opensearch", "elastic_transport", "elasticsearch")


def quiet_client_logs() -> None:
    """Keep per-request lines and tracebacks of the client libraries out of command output (unless -v)."""
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in _ENGINE_CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def engine_hosts(url: str | None) -> list[str]:
    """The URL(s) a command will use: ``url``, else ``SECONDPASS_ENGINE_HOSTS`` and its default."""
    if url is not None:
        return [url]
    from secondpass.config import ConnectionSettings

    return list(ConnectionSettings().hosts)


def check_reachable(engine: str, url: str | None) -> None:
    """Fail with one line naming the URL when no node of the cluster accepts a connection.

    Why: without it an unreachable engine surfaced only after every retry of the
    first call (seconds) and after the command loaded its models; a TCP connect
    is enough to tell "nothing listens there" apart from every later failure,
    which the connector reports itself. Credentials in a URL are never shown.
    """
    from secondpass.errors import BackendUnavailableError

    hosts = engine_hosts(url)
    reasons = []
    for host in hosts:
        parts = urlsplit(host if "://" in host else f"http://{host}")
        shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"  # no user:password@
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection(
                (parts.hostname or "localhost", port), timeout=REACH_TIMEOUT_S
            ):
                return
        except OSError as exc:
            reasons.append(f"{shown} ({exc.strerror or exc})")
    msg = f"cannot reach {engine} at {', '.join(reasons)}: is it running? (give its URL with --url)"
    raise BackendUnavailableError(msg)


def say(line: str = "") -> None:
    """Print a line of command output and flush (output interleaves with progress bars)."""
    print(line, flush=True)


def note(line: str) -> None:
    """Print one line of notice to stderr (fallbacks, what a command is doing)."""
    print(f"secondpass: {line}", file=sys.stderr, flush=True)


@contextmanager
def engine_url(engine: str, url: str | None) -> Iterator[str]:
    """Yield ``url``, or start a local node of ``engine`` and yield its URL.

    The local node is stopped when the block exits, however it exits.
    """
    if url is not None:
        yield url
        return
    from secondpass.servers import LocalEngine

    node = LocalEngine(engine)
    note(
        f"starting a local {engine} {node.version} node (first run downloads it; this takes a minute) ..."
    )
    started = time.perf_counter()
    node.start()
    note(f"{engine} is up at {node.url} (start took {time.perf_counter() - started:.1f} s)")
    try:
        yield node.url
    finally:
        note(f"stopping the local {engine} node")
        node.stop()


def make_connector(engine: str, url: str | None, index: str) -> Any:
    """A synchronous connector on ``index`` searching title and text.

    Only the text fields come back in ``_source`` (not the stored vectors, which
    would cost far more bandwidth than the passages themselves).
    """
    options: dict[str, Any] = {"index": index, "fields": list(TEXT_FIELDS), "source_includes": []}
    if url is not None:
        options["hosts"] = [url]
    if engine == "elasticsearch":
        from secondpass.connectors.elasticsearch import ElasticsearchConnector

        return ElasticsearchConnector(**options)
    from secondpass.connectors.opensearch import OpenSearchConnector

    return OpenSearchConnector(**options)


def slug(text: str) -> str:
    """Lower-case index-name-safe form of a dataset or model name."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned[:60] or "x"
