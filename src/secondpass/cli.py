"""The ``secondpass`` command line.

Each sub-command lives in its own module under ``secondpass.commands`` and only
registers its parser here; heavy imports (torch, engine clients) happen inside the
command's handler so ``secondpass --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from secondpass.errors import SecondPassError
from secondpass.redaction import (
    install_log_redaction,
    register_environment_secrets,
    register_secrets_from,
)

# module name under secondpass.commands -> each exposes register(subparsers)
COMMANDS = ("demo", "index", "eval", "serve", "proxy", "report", "tune")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="secondpass", description="Cross-encoder reranking for Elasticsearch and OpenSearch."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument(
        "-v", "--verbose", action="store_true", help="log at DEBUG level, client libraries included"
    )
    loudness.add_argument(
        "-q", "--quiet", action="store_true",
        help="no progress bars and only warnings and errors in the log (results are still printed)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"secondpass.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"secondpass.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def package_version() -> str:
    """The installed distribution's version (what pip and the wheel say), else the source tree's."""
    try:
        return version("secondpass")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from secondpass import __version__

        return __version__


_FALSE = frozenset({"", "0", "false", "no", "off"})


def wants_progress(*, quiet: bool) -> bool:
    """Whether to draw progress bars: only for a person watching a terminal.

    Not with ``--quiet``, not when ``TQDM_DISABLE`` is set (tqdm's own switch,
    which an explicit ``disable=False`` would otherwise override) and not when
    stderr is a file or a pipe: a service log or a CI log gets no bars.
    """
    if quiet or os.environ.get("TQDM_DISABLE", "").strip().lower() not in _FALSE:
        return False
    return sys.stderr.isatty()


def silence_library_progress() -> None:
    """Turn off the bars the Hugging Face libraries draw by themselves ("Loading weights", downloads).

    They do not ask us: transformers draws its weight-loading bar whenever
    huggingface_hub's bars are on, which its environment variable decides when it
    is first imported. Set both ways, for a process that imported them already.
    """
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; project errors become one clear line on stderr and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.progress = wants_progress(quiet=args.quiet)
    if not args.progress:
        silence_library_progress()
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Before any command logs: secrets from the environment and the command line
    # (a URL's password); serve and proxy add those of their loaded settings.
    register_environment_secrets()
    register_secrets_from(args)
    install_log_redaction(quiet_http_clients=not args.verbose)
    try:
        return int(args.handler(args) or 0)
    except SecondPassError as exc:
        print(f"secondpass: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
