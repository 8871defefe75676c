"""Progress bars go to a person at a terminal, never into a log.

``secondpass index`` runs against a real OpenSearch node with its stderr on a
pseudo-terminal (a bar is drawn) and on a pipe, with ``--quiet`` and with
``TQDM_DISABLE`` (no bar). The service test reads the log of a real ``serve``
process (stderr on a file, as under systemd or Kubernetes): the Hugging Face
"Loading weights" bar must not be in it.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
import uuid
from pathlib import Path

import httpx
import pytest
from tests.fixtures.service import ServiceProcess

from secondpass.datasets import sample_dataset

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BAR = re.compile(r"\d+%\|")  # tqdm's "100%|█████|"


def _corpus(dest: Path, n: int = 20) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with (dest / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for doc in list(sample_dataset().iter_corpus())[:n]:
            fh.write(json.dumps({"_id": doc.id, "title": doc.title, "text": doc.text}) + "\n")
    return dest


def _index(
    url: str,
    corpus: Path,
    *,
    tty: bool,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> str:
    """Run ``secondpass index`` into a fresh index; returns what it wrote to stderr."""
    index = f"progress-{uuid.uuid4().hex[:8]}"
    child_env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE",)}
    child_env.update(env or {})
    cmd = [
        sys.executable,
        "-m",
        "secondpass",
        *extra,
        "index",
        str(corpus),
        "--url",
        url,
        "--index",
        index,
    ]
    try:
        if not tty:
            result = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                env=child_env,
                cwd=REPO,
                timeout=120,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            return result.stderr
        main_fd, child_fd = pty.openpty()
        # A fresh pty is 0x0, and tqdm draws nothing in 0 columns: size it like a terminal.
        fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        process = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=child_fd, env=child_env, cwd=REPO
        )
        os.close(child_fd)
        chunks = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # EIO: the child closed its end of the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(main_fd)
        assert process.wait(30) == 0
        return b"".join(chunks).decode("utf-8", "replace")
    finally:
        httpx.delete(f"{url}/{index}", timeout=10)


def test_index_draws_a_bar_only_on_a_terminal(opensearch_url: str, tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "data")
    on_terminal = _index(opensearch_url, corpus, tty=True)
    assert BAR.search(on_terminal), on_terminal  # the bar is there for a person
    assert not BAR.search(_index(opensearch_url, corpus, tty=False))
    assert not BAR.search(_index(opensearch_url, corpus, tty=True, extra=("--quiet",)))
    assert not BAR.search(_index(opensearch_url, corpus, tty=True, env={"TQDM_DISABLE": "1"}))


def test_a_service_log_has_no_progress_bars(service: ServiceProcess) -> None:
    assert httpx.get(f"{service.url}/readyz", timeout=10).status_code == 200  # the model has loaded
    log = service.log()
    assert "Loading weights" not in log
    assert not BAR.search(log), log[-2000:]
