"""``python -m secondpass.servers``: fetch the engines, or run one server in the foreground.

python -m secondpass.servers fetch                 # what scripts/bootstrap.sh runs
python -m secondpass.servers run opensearch        # prints the URL; Ctrl-C stops it
python -m secondpass.servers run redis --port 6379
python -m secondpass.servers info                  # versions, chosen JDKs, cache paths
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence

from secondpass.errors import SecondPassError
from secondpass.servers import _java, distributions
from secondpass.servers.engine import LocalEngine
from secondpass.servers.redis_server import LocalRedis
from secondpass.servers.versions import ENGINE_NAMES, ENGINES


def _fetch(args: argparse.Namespace) -> int:
    names = args.engines or list(ENGINE_NAMES)
    for name in names:
        engine = ENGINES[name]
        started = time.monotonic()
        already = distributions.is_fetched(engine)
        home = distributions.fetch(engine, progress=sys.stderr.isatty())
        took = time.monotonic() - started
        state = "cached" if already else f"fetched in {took:.1f} s (download if needed + unpack + plugins)"
        print(f"{name} {engine.version}: {home} ({state})")
        try:
            jdk = _java.find_jdk(engine)
        except SecondPassError as exc:  # fetching still succeeded; starting will not
            print(f"warning: {exc}", file=sys.stderr)
        else:
            print(f"  runs on Java {jdk.major} at {jdk.home}")
    return 0


def _info(args: argparse.Namespace) -> int:
    print(f"engine cache: {distributions.cache_root()}")
    print(f"maven repository: {distributions.maven_repository()}")
    for name, engine in ENGINES.items():
        plugins = ", ".join(f"{p.name} {p.artifact.version}" for p in engine.plugins) or "none"
        try:
            jdk = _java.find_jdk(engine)
            java = f"Java {jdk.major} at {jdk.home}"
        except SecondPassError as exc:
            java = f"no usable JDK ({exc})"
        state = "fetched" if distributions.is_fetched(engine) else "not fetched"
        print(f"{name} {engine.version} [{state}], plugins: {plugins}; {java}")
    return 0


def _run(args: argparse.Namespace) -> int:
    server: LocalEngine | LocalRedis
    if args.server == "redis":
        server = LocalRedis(port=args.port, password=args.password)
    else:
        server = LocalEngine(args.server, port=args.port, password=args.password, heap_mb=args.heap_mb)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    try:
        print(server.url, flush=True)
        if isinstance(server, LocalEngine):
            took = "" if server.last_start_s is None else f" (ready after {server.last_start_s:.1f} s)"
            print(f"{server.name} {server.version}{took}; console log: {server.log_path}", flush=True)
        while not stop.wait(1.0):
            if not server.is_running():
                print(f"{args.server} exited unexpectedly:\n{server.log_tail()}", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``fetch`` / ``run`` / ``info`` sub-commands."""
    parser = argparse.ArgumentParser(prog="python -m secondpass.servers", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    p_fetch = sub.add_parser("fetch", help="download (Maven) and unpack the engines into the cache")
    p_fetch.add_argument("engines", nargs="*", choices=[*ENGINE_NAMES, []], help="default: all")
    p_fetch.set_defaults(handler=_fetch)

    p_run = sub.add_parser("run", help="start one server in the foreground and print its URL")
    p_run.add_argument("server", choices=[*ENGINE_NAMES, "redis"])
    p_run.add_argument("--port", type=int, default=None, help="default: a free port")
    p_run.add_argument("--password", default=None, help="elasticsearch/redis only: require this password")
    p_run.add_argument("--heap-mb", type=int, default=512)
    p_run.set_defaults(handler=_run)

    p_info = sub.add_parser("info", help="show versions, JDK choices and cache paths")
    p_info.set_defaults(handler=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; project errors become one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(args.handler(args))
    except SecondPassError as exc:
        print(f"secondpass.servers: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
