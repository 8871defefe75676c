"""CLI habits a user expects: --version, real flag help, one-line failures, no bars off a terminal.

The failure tests run the real ``secondpass`` command in a child process (the
way a user meets it), against a loopback port nothing listens on or one a test
socket holds; no engine and no model is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from tests.fixtures.service import free_port

from secondpass.cli import build_parser, main, wants_progress
from secondpass.commands._help import FIELD_HELP

REPO = Path(__file__).resolve().parents[2]


def _run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("SECONDPASS_")}
    child_env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "secondpass", *args],
        capture_output=True, text=True, env=child_env, cwd=REPO, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port a listening socket holds for the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


# ------------------------------------------------------------------ --version


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"secondpass {version('secondpass')}"


# ------------------------------------------------------------------ flag help


def _flags(
    parser: argparse.ArgumentParser, path: str = "secondpass"
) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _flags(sub, f"{path} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, action


def _what_it_does(help_text: str) -> str:
    """The sentence of a help text, without the generated '(default: ...)' and '[env ...]' tails."""
    return re.split(r" \(default: | \[env ", help_text)[0]


def test_every_flag_of_every_command_says_what_it_does() -> None:
    vague = []
    for path, action in _flags(build_parser()):
        name = "/".join(action.option_strings) or action.dest
        sentence = _what_it_does(action.help or "")
        dotted = re.search(r"\b[a-z]+\.[a-z_]+\b", sentence)  # "rerank.token budget"
        if (
            len(sentence.split()) < 3
            or sentence == action.dest.replace("_", " ").replace(".", " ")
            or (
                dotted is not None
                and dotted.group(0).split(".")[0] in {"rerank", "cache", "engine"}
            )
        ):
            vague.append(f"{path} {name}: {action.help!r}")
    assert not vague, "flags whose help does not say what they do:\n" + "\n".join(vague)


def test_token_budget_help_is_a_sentence() -> None:
    """The flag the issue quotes, read from the rendered ``--help``."""
    result = _run_cli("serve", "--help", timeout=60)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "rerank.token budget" not in text
    assert "--rerank-token-budget N most padded tokens in one forward pass" in text


def test_help_texts_name_only_fields_that_exist() -> None:
    """A renamed setting must take its help text along (no stale entries)."""
    dests = {action.dest for _, action in _flags(build_parser())}
    assert set(FIELD_HELP) <= dests, sorted(set(FIELD_HELP) - dests)


# ------------------------------------------------------------------ progress bars


@pytest.mark.parametrize(
    ("tty", "quiet", "tqdm_disable", "expected"),
    [
        (True, False, None, True),
        (False, False, None, False),  # a log file or a pipe: never bars
        (True, True, None, False),  # --quiet
        (True, False, "1", False),  # TQDM_DISABLE
        (True, False, "True", False),
        (True, False, "0", True),  # tqdm's own reading: 0 is "not disabled"
    ],
)
def test_progress_bars_only_for_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
    tty: bool,
    quiet: bool,
    tqdm_disable: str | None,
    expected: bool,
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    if tqdm_disable is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", tqdm_disable)
    assert wants_progress(quiet=quiet) is expected


def test_quiet_and_verbose_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["-q", "-v", "demo"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# ------------------------------------------------------------------ unreachable engine


def _beir(root: Path) -> Path:
    """A three-document BEIR folder (corpus, queries, test qrels)."""
    (root / "qrels").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(3):
            fh.write(
                json.dumps({"_id": f"d{i}", "title": f"title {i}", "text": f"text {i}"}) + "\n"
            )
    (root / "queries.jsonl").write_text(
        json.dumps({"_id": "q0", "text": "text"}) + "\n", encoding="utf-8"
    )
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq0\td1\t1\n", encoding="utf-8"
    )
    return root


@pytest.mark.parametrize("command", ["index", "eval", "demo"])
def test_an_unreachable_engine_is_one_line_naming_the_url(command: str, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    data = str(_beir(tmp_path / "data"))
    args = {
        "index": ["index", data, "--index", "x"],
        "eval": ["eval", data, "--out", str(tmp_path / "out")],
        "demo": ["demo"],
    }[command]
    # Credentials in the URL must not be echoed back.
    secret_url = url.replace("http://", "http://elastic:s3cret-pw@")
    result = _run_cli(*args, "--url", secret_url)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"secondpass: error: cannot reach opensearch at {url} ")
    assert "Traceback" not in result.stderr and "s3cret-pw" not in result.stderr


def test_index_uses_the_environment_hosts_when_no_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = _run_cli(
        "index", str(_beir(tmp_path / "data")), "--engine", "elasticsearch", "--index", "x",
        env={"SECONDPASS_ENGINE_HOSTS": url},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"secondpass: error: cannot reach elasticsearch at {url} (Connection refused): "
        "is it running? (give its URL with --url)"
    )


# ------------------------------------------------------------------ port clash


@pytest.mark.parametrize("command", ["serve", "proxy"])
def test_a_taken_port_fails_before_the_model_loads(
    command: str, taken_port: int, tmp_path: Path
) -> None:
    # A model directory that does not exist: had loading started, the error would be about it.
    missing_model = str(tmp_path / "no-such-model")
    args = {
        "serve": ["serve", "--port", str(taken_port), "--rerank-model", missing_model],
        "proxy": [
            "proxy", "--listen", f"127.0.0.1:{taken_port}", "--upstream", f"http://127.0.0.1:{free_port()}",
            "--rerank-model", missing_model,
        ],
    }[command]  # fmt: skip
    flag = {"serve": "--port", "proxy": "--listen"}[command]
    started = time.monotonic()
    result = _run_cli(*args)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == (
        f"secondpass: error: cannot listen on 127.0.0.1:{taken_port}: the port is already in use "
        f"by another process; stop it or choose another port with {flag}"
    )
    assert elapsed < 60, f"took {elapsed:.1f} s"


def test_port_zero_and_a_free_port_pass() -> None:
    from secondpass.commands._serving import check_port_free

    check_port_free("127.0.0.1", 0, flag="--port")
    check_port_free("127.0.0.1", free_port(), flag="--port")
