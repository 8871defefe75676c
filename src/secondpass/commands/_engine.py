"""What the ``index``, ``eval`` and ``demo`` commands share: reaching an engine.

Either the user names a cluster (``--url``, credentials from the
``SECONDPASS_ENGINE_*`` environment) or the command starts a throw-away local
node and always stops it, even on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

ENGINES = ("opensearch", "elasticsearch")
TEXT_FIELDS = ("title", "text")


def add_engine_arguments(parser: argparse.ArgumentParser, *, local_default: bool) -> None:
    """``--engine`` and ``--url`` (with help saying what happens without ``--url``)."""
    parser.add_argument("--engine", choices=ENGINES, default="opensearch", help="search engine (default: opensearch)")
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


def quiet_client_logs() -> None:
    """Keep per-request INFO lines of the HTTP clients out of command output (unless -v)."""
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


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
    note(f"starting a local {engine} {node.version} node (first run downloads it; this takes a minute) ...")
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
