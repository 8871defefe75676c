"""What the Dockerfile builds, checked without a Docker engine.

No Docker engine runs here and the base image's registry is unreachable, so
the image itself is never built in CI. This test does the Dockerfile's own
steps instead: it copies exactly what the Dockerfile copies (filtered by
``.dockerignore``) into a bare directory, installs it with the extras the
Dockerfile names into a fresh virtual environment (not editable, as in the
image), runs the ENTRYPOINT from outside the repository and the HEALTHCHECK
command against it, scores through the API and stops it with the image's
STOPSIGNAL. A file the package needs but the image would not contain, an extra
that is missing, or an entrypoint that no longer starts fails here.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tests.fixtures.service import free_port

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text(encoding="utf-8")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _ignored(relative: str) -> bool:
    """Whether ``.dockerignore`` keeps ``relative`` out of the build context (last match wins)."""
    excluded = False
    for pattern in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if pattern == "**":
            matched = True
        else:
            globs = [pattern, pattern.replace("**/", "")]
            parts = relative.split("/")
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            matched = any(fnmatch.fnmatch(p, g) for p in prefixes for g in globs) or any(
                fnmatch.fnmatch(part, g) for part in parts for g in globs if "/" not in g
            )
        if matched:
            excluded = not negate
    return excluded


def _build_context(target: Path) -> None:
    """Copy what the Dockerfile's COPY instructions take from the context into ``target``."""
    for word, args in _instructions():
        if word != "COPY":
            continue
        *sources, _dest = [a for a in shlex.split(args) if not a.startswith("--")]
        for source in sources:
            path = REPO / source
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                if _ignored(relative):
                    continue
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target / relative)


def _install_spec() -> str:
    for word, args in _instructions():
        found = re.search(r'pip install "?(\.\[[^\]]+\])"?', args) if word == "RUN" else None
        if found:
            return found.group(1)
    raise AssertionError("the Dockerfile has no `pip install .[extras]` step")


def _exec_form(word: str) -> list[str]:
    args = next(rest for name, rest in _instructions() if name == word)
    if word == "HEALTHCHECK":
        args = args.split(" CMD ", 1)[1]
        return ["sh", "-c", args]
    return list(json.loads(args))


def test_the_image_contents_install_and_serve(tiny_cross_encoder_dir: Path, tmp_path: Path) -> None:
    context = tmp_path / "context"
    _build_context(context)
    assert (context / "pyproject.toml").is_file() and (context / "src" / "secondpass").is_dir()
    assert not list(context.rglob("__pycache__")) and not (context / "tests").exists()

    venv = tmp_path / "venv"
    uv = [sys.executable, "-m", "uv"]
    subprocess.run([*uv, "venv", "-q", "-p", sys.executable, str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [*uv, "pip", "install", "-q", "-p", str(python), f"{context}{_install_spec()[1:]}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    port = free_port()
    entrypoint = _exec_form("ENTRYPOINT")
    assert entrypoint[:2] == ["secondpass", "serve"]
    command = [str(venv / "bin" / entrypoint[0]), *entrypoint[1:]]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SECONDPASS_", "PYTHON"))}
    env.update(
        PATH=f"{venv / 'bin'}:{env.get('PATH', '')}",
        HF_HOME=str(tmp_path / "models" / "hf"),
        HF_HUB_OFFLINE="1",
        SECONDPASS_SERVICE_RERANK__MODEL=str(tiny_cross_encoder_dir),
        SECONDPASS_SERVICE_RERANK__DEVICE="cpu",
    )
    # The image as shipped (all interfaces, no key) refuses to start: it never binds.
    refused = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "without authentication" in refused.stderr and "API_KEYS" in refused.stderr
    key = "dockerfile-test-key-0123456789"
    env["SECONDPASS_SERVICE_API_KEYS"] = key
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.3)
        # the code that serves is the installed copy, not this checkout
        where = subprocess.run(
            [str(python), "-c", "import secondpass; print(secondpass.__file__)"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            check=True,
        ).stdout
        assert str(venv) in where and str(REPO) not in where

        health = _exec_form("HEALTHCHECK")
        health[-1] = health[-1].replace("8080", str(port))
        assert subprocess.run(health, env=env, cwd=tmp_path, timeout=30).returncode == 0

        request = {"query": "cat food", "documents": ["cats eat fish", "", "the tower"]}
        anonymous = httpx.post(f"http://127.0.0.1:{port}/v1/rerank", json=request, timeout=30)
        assert anonymous.status_code == 401, anonymous.text
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/rerank",
            json=request,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert key not in (tmp_path / "serve.log").read_text()
        assert sorted(r["index"] for r in response.json()["results"]) == [0, 1, 2]

        stop = next(rest for name, rest in _instructions() if name == "STOPSIGNAL")
        process.send_signal(getattr(signal, stop))
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()


@pytest.mark.parametrize(
    "relative", ["tests/conftest.py", "src/secondpass/__pycache__/x.pyc", ".venv/bin/python"]
)
def test_dockerignore_keeps_the_context_small(relative: str) -> None:
    assert _ignored(relative)


def test_dockerignore_keeps_what_the_install_needs() -> None:
    for relative in ("pyproject.toml", "README.md", "src/secondpass/__init__.py"):
        assert not _ignored(relative), relative
