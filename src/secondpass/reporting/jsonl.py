"""Read a JSONL log line by line, with a bound on each line and a tally of bad ones.

Why its own module: the rank log and the click log are both written by live
traffic (possibly cut off mid-line by a crash or rotated while being written),
so a report must survive any line, never load the file whole, and say how
many lines it skipped and why instead of failing on the first bad one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from secondpass.errors import ConfigurationError

MAX_LINE_BYTES = 1 << 20
"""Longest line read (1 MiB); a longer one is skipped as malformed, never buffered whole."""
MAX_EXAMPLES = 5
"""How many malformed lines are quoted (line number and reason) in a report."""


@dataclass
class SkippedLines:
    """Count of malformed lines and the first few, as ``(line number, reason)``."""

    count: int = 0
    examples: list[tuple[int, str]] = field(default_factory=list)

    def add(self, line_no: int, reason: str) -> None:
        """Count one skipped line; remember it if fewer than ``MAX_EXAMPLES`` are kept."""
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append((line_no, reason))

    def as_dict(self) -> dict[str, Any]:
        """JSON form: ``{"count": n, "examples": [{"line": i, "reason": "..."}]}``."""
        return {
            "count": self.count,
            "examples": [{"line": n, "reason": r} for n, r in self.examples],
        }


def open_log(path: str | Path, *, what: str) -> IO[bytes]:
    """Open ``path`` for reading, or raise a ``ConfigurationError`` naming ``what`` it is."""
    target = Path(path)
    if target.is_dir():
        msg = f"{what} {target} is a directory, not a JSONL file"
        raise ConfigurationError(msg)
    try:
        return target.open("rb")
    except FileNotFoundError as exc:
        msg = f"{what} {target} does not exist"
        raise ConfigurationError(msg) from exc
    except OSError as exc:
        msg = f"cannot read {what} {target}: {exc.strerror or exc}"
        raise ConfigurationError(msg) from exc


def _lines(stream: IO[bytes], skipped: SkippedLines) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line number, bytes)`` of every line no longer than ``MAX_LINE_BYTES``."""
    line_no = 0
    while True:
        line = stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        line_no += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # drain the rest in bounded chunks
                line = stream.readline(MAX_LINE_BYTES)
            skipped.add(line_no, f"longer than {MAX_LINE_BYTES} bytes")
            continue
        yield line_no, line


def read_objects(
    path: str | Path, *, what: str, skipped: SkippedLines
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each line of ``path`` that is a JSON object.

    Blank lines are ignored; a line that is not UTF-8, not JSON or not an object
    is counted in ``skipped``. Raises ``ConfigurationError`` when the file cannot
    be opened or read.
    """
    with open_log(path, what=what) as stream:
        try:
            for line_no, raw in _lines(stream, skipped):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    skipped.add(line_no, "not UTF-8")
                    continue
                except ValueError:
                    skipped.add(line_no, "not JSON")
                    continue
                if not isinstance(obj, dict):
                    skipped.add(line_no, "not a JSON object")
                    continue
                yield line_no, obj
        except OSError as exc:
            msg = f"cannot read {what} {path}: {exc.strerror or exc}"
            raise ConfigurationError(msg) from exc
