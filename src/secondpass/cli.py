"""The ``secondpass`` command line.

Each sub-command lives in its own module under ``secondpass.commands`` and only
registers its parser here; heavy imports (torch, engine clients) happen inside the
command's handler so ``secondpass --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from secondpass.errors import SecondPassError
from secondpass.redaction import (
    install_log_redaction,
    register_environment_secrets,
    register_secrets_from,
)

# module name under secondpass.commands -> each exposes register(subparsers)
COMMANDS = ("demo", "index", "eval", "serve", "proxy")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="secondpass", description="Cross-encoder reranking for Elasticsearch and OpenSearch."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; project errors become one clear line on stderr and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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
