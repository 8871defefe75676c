"""API keys, the closed default and model names of ``secondpass serve``, in-process (no servers).

Every route the app has (plus unknown paths and every method) is tried with each
way a key can be presented or botched; the check must answer before any route
code, body read or model call, and only ``/livez`` and ``/readyz`` stay open.
The model-name tests put the model at a path in every spelling and break its
loading in several ways: no answer to a client may contain that path.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from tests.fixtures.service import FakeScorer

from secondpass.cli import main
from secondpass.errors import ConfigurationError
from secondpass.service.app import create_app, redact_paths
from secondpass.service.auth import ApiKeys
from secondpass.service.metrics import ServiceMetrics
from secondpass.service.middleware import ApiKeyMiddleware
from secondpass.service.settings import ServiceSettings, looks_like_path

KEY = "k3y-for-tests-0123456789"
OTHER = "another-client-key-9876543210"
OPEN = {"/livez", "/readyz", "/health"}  # /health: TEI's probe
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
UNKNOWN = ["/", "/nope", "/v1/rerank/extra", "/readyz/../metrics", "/%6Detrics", "/livez/"]


def make_app(scorer: FakeScorer | None = None, **settings: Any) -> FastAPI:
    settings.setdefault("max_wait_ms", 1)
    settings.setdefault("cache", {"backend": "memory"})
    settings.setdefault("api_keys", [KEY, OTHER])
    return create_app(ServiceSettings(**settings), scorer=scorer or FakeScorer())


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        state = app.state.service
        deadline = time.monotonic() + 120  # the real loader imports transformers first
        while not (state.model_ok or state.load_failed) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            yield client


def _paths(app: FastAPI) -> list[str]:
    return sorted({getattr(r, "path", "") for r in app.routes} - {""}) + UNKNOWN


REFUSED = {
    "no key": {},
    "wrong key": {"Authorization": "Bearer not-the-key-at-all-000"},
    "wrong X-API-Key": {"X-API-Key": "not-the-key-at-all-000"},
    "prefix of the key": {"Authorization": f"Bearer {KEY[:-1]}"},
    "key plus a byte": {"X-API-Key": KEY + "0"},
    "other scheme": {"Authorization": f"Basic {KEY}"},
    "bare key in Authorization": {"Authorization": KEY},
    "empty bearer": {"Authorization": "Bearer "},
    "overlong header": {"Authorization": "Bearer " + KEY * 400},
    "latin-1 bytes": {"X-API-Key": KEY.replace("0", "\u00e9").encode("latin-1")},  # type: ignore[dict-item]
    "two keys, one wrong": {"X-API-Key": "wrong-key-0000000000", "Authorization": "Bearer x"},
}
ACCEPTED = {
    "bearer": {"Authorization": f"Bearer {KEY}"},
    "X-API-Key": {"X-API-Key": KEY},
    "lower-case scheme": {"authorization": f"bearer {KEY}"},
    "upper-case scheme": {"Authorization": f"BEARER {OTHER}"},
    "whitespace around": {"Authorization": f"  Bearer   {KEY}  "},
    "second key": {"X-API-Key": f" {OTHER} "},
}


async def test_every_route_and_method_refuses_requests_without_a_valid_key() -> None:
    scorer = FakeScorer()
    app = make_app(scorer)
    body = {"query": "capital", "documents": ["Paris"], "texts": ["Paris"]}
    async with running(app) as client:
        for path in _paths(app):
            for method in METHODS:
                for case, headers in REFUSED.items():
                    r = await client.request(method, path, headers=headers, json=body)
                    where = f"{method} {path} ({case})"
                    if path in OPEN:
                        assert r.status_code != 401, where
                        continue
                    assert r.status_code == 401, where
                    assert r.headers["www-authenticate"].startswith("Bearer"), where
                    if method != "HEAD":
                        message = r.json()["message"]
                        assert "API key" in message and KEY not in message, where
    # no request reached a route that scores: the model was only probed and calibrated at start
    assert all(
        pair[0] in ("readiness probe", "calibration query")
        for batch in scorer.batches
        for pair in batch
    )


@pytest.mark.parametrize("case", list(ACCEPTED))
async def test_every_accepted_key_form_reaches_every_route(case: str) -> None:
    app = make_app()
    async with running(app) as client:
        for path in _paths(app):
            r = await client.get(path, headers=ACCEPTED[case])
            assert r.status_code != 401, f"{path} ({case})"
        r = await client.post(
            "/v1/rerank",
            headers=ACCEPTED[case],
            json={"query": "capital", "documents": ["capital city", "cats"]},
        )
    assert r.status_code == 200, r.text
    assert [x["index"] for x in r.json()["results"]] == [0, 1]


async def test_missing_and_wrong_keys_get_distinct_cohere_shaped_answers() -> None:
    async with running(make_app()) as client:
        missing = await client.post("/v1/rerank", json={"query": "q", "documents": ["d"]})
        wrong = await client.post(
            "/v1/rerank", headers={"X-API-Key": "x" * 20}, json={"query": "q", "documents": ["d"]}
        )
        metrics = (await client.get("/metrics", headers={"X-API-Key": KEY})).text
    assert missing.status_code == wrong.status_code == 401
    assert "Authorization: Bearer" in missing.json()["message"]
    assert wrong.json()["message"] == "invalid API key"
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert 'secondpass_rejected_requests_total{reason="unauthenticated"} 2.0' in metrics


async def test_the_key_is_checked_before_the_body_is_read() -> None:
    """A client without a key cannot make the service read (or wait for) a body."""
    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append("app")

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read before the key was checked")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    guard = ApiKeyMiddleware(app, keys=ApiKeys({"ci": KEY}), metrics=ServiceMetrics())
    for method in ("POST", "PUT", "GET"):
        scope = {
            "type": "http",
            "method": method,
            "path": "/v1/rerank",
            "headers": [(b"content-length", b"1000000000"), (b"x-api-key", b"wrong" * 5)],
        }
        await guard(scope, receive, send)
    assert reached == []
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [401] * 3


async def test_without_keys_authentication_is_off_and_the_schema_says_so() -> None:
    app = make_app(api_keys=[])
    async with running(app) as client:
        r = await client.post("/v1/rerank", json={"query": "q", "documents": ["d"]})
        schema = (await client.get("/openapi.json")).json()
    assert r.status_code == 200
    assert "securitySchemes" not in schema.get("components", {})


async def test_the_openapi_document_declares_the_key_schemes() -> None:
    async with running(make_app(api_key_rate_per_s=5)) as client:
        schema = (await client.get("/openapi.json", headers={"X-API-Key": KEY})).json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyHeader"]["name"] == "X-API-Key"
    assert schema["security"] == [{"bearer": []}, {"apiKeyHeader": []}]
    assert schema["paths"]["/readyz"]["get"]["security"] == []
    answers = schema["paths"]["/v1/rerank"]["post"]["responses"]
    assert {"401", "429"} <= set(answers)


async def test_per_key_rate_limit_answers_429_with_retry_after() -> None:
    # 0.5 requests/s: a burst of one, the next token 2 s later (far above request times)
    async with running(make_app(api_key_rate_per_s=0.5)) as client:
        first = [
            (await client.get("/metrics", headers={"X-API-Key": KEY})).status_code
            for _ in range(3)
        ]
        other = await client.get("/metrics", headers={"X-API-Key": OTHER})
        probes = [(await client.get("/livez")).status_code for _ in range(5)]
        limited = await client.get("/metrics", headers={"X-API-Key": KEY})
        anonymous = await client.get("/metrics")
    assert first == [200, 429, 429]
    assert other.status_code == 200  # each key has its own bucket
    assert probes == [200] * 5  # probes are never limited
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) in (1, 2)
    assert "0.5 requests/s" in limited.json()["message"]
    assert anonymous.status_code == 401  # authentication first: no bucket for strangers


def test_keys_come_from_the_environment_and_a_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECONDPASS_SERVICE_API_KEYS", f"{KEY}, {OTHER}")
    key_file = tmp_path / "keys"
    key_file.write_text(f"# clients\nsearch-ui {'z' * 24}\n")
    settings = ServiceSettings(api_key_file=key_file)
    keys = create_app(settings, scorer=FakeScorer()).state.service.api_keys
    assert len(keys) == 3 and KEY not in repr(keys) and "search-ui" in repr(keys)
    assert keys.identify([(b"x-api-key", b"z" * 24)]) == "search-ui"
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())


def test_short_keys_and_unreadable_key_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="shorter than"):
        create_app(ServiceSettings(api_keys=[SecretStr("short")]), scorer=FakeScorer())
    with pytest.raises(ConfigurationError, match="cannot read the API key file"):
        create_app(ServiceSettings(api_key_file=tmp_path / "absent"), scorer=FakeScorer())


# ------------------------------------------------------------------- closed default


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "[::]", "fd00::1", "svc.lan"])
def test_reachable_hosts_need_keys_or_an_explicit_opt_in(host: str) -> None:
    settings = ServiceSettings(host=host)
    with pytest.raises(ConfigurationError) as caught:
        settings.check_exposure(keys_configured=False)
    message = str(caught.value)
    assert "SECONDPASS_SERVICE_API_KEYS" in message and "--allow-unauthenticated" in message
    settings.check_exposure(keys_configured=True)
    ServiceSettings(host=host, allow_unauthenticated=True).check_exposure(keys_configured=False)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_loopback_hosts_may_run_without_keys(host: str) -> None:
    ServiceSettings(host=host).check_exposure(keys_configured=False)


def test_serve_refuses_to_start_open_on_all_interfaces(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [k for k in os.environ if k.startswith("SECONDPASS_SERVICE_")]:
        monkeypatch.delenv(name)
    code = main(["serve", "--host", "0.0.0.0", "--port", "1", "--rerank-model", "x/y"])
    err = capsys.readouterr().err
    assert code == 2
    assert "refusing to serve 0.0.0.0 without authentication" in err
    assert "API_KEYS" in err and "--allow-unauthenticated" in err


def test_tls_needs_both_files() -> None:
    with pytest.raises(ValueError, match="ssl_certfile and ssl_keyfile"):
        ServiceSettings(ssl_certfile="cert.pem")


# ------------------------------------------------------------------- model names

UNIQUE = f"victim-{uuid.uuid4().hex[:8]}"


def _model_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The same model directory spelled every way an operator might configure it."""
    home = tmp_path / "home"
    target = home / UNIQUE / "reranker"
    target.mkdir(parents=True)
    link = tmp_path / f"{UNIQUE}-link"
    link.symlink_to(target)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    return {
        "absolute": str(target),
        "relative": f"{UNIQUE}/reranker",
        "dot-relative": f"./{UNIQUE}/reranker",
        "home": f"~/{UNIQUE}/reranker",
        "symlink": str(link),
        "windows": f"C:\\Users\\{UNIQUE}\\reranker",
        "unc": f"\\\\fileserver\\{UNIQUE}\\reranker",
    }


FORMS = ["absolute", "relative", "dot-relative", "home", "symlink", "windows", "unc"]


@pytest.mark.parametrize("form", FORMS)
async def test_no_answer_shows_where_the_model_lives(
    form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model_forms(tmp_path, monkeypatch)[form]
    assert looks_like_path(model)
    app = make_app(api_keys=[], rerank={"model": model})
    async with running(app) as client:
        answers = [
            await client.post("/v1/rerank", json={"query": "q", "documents": ["q d"]}),
            await client.post("/v2/rerank", json={"query": "q", "documents": ["q d"]}),
            await client.post(
                "/rerank", json={"query": "q", "texts": ["q d"], "return_text": True}
            ),
            await client.get("/readyz"),
            await client.get("/livez"),
            await client.get("/metrics"),
            await client.get("/openapi.json"),
        ]
    for r in answers:
        assert r.status_code == 200, r.text
        assert UNIQUE not in r.text and str(tmp_path) not in r.text
    assert answers[0].json()["meta"]["model"] == "local-model"


async def test_a_configured_display_name_is_what_clients_see(tmp_path: Path) -> None:
    app = make_app(api_keys=[], rerank={"model": str(tmp_path)}, model_name="acme-reranker-v3")
    async with running(app) as client:
        r = await client.post("/v1/rerank", json={"query": "q", "documents": ["d"]})
    assert r.json()["meta"]["model"] == "acme-reranker-v3"
    with pytest.raises(ValueError, match="must not be a path"):
        ServiceSettings(model_name="/srv/models/x")


def test_a_hugging_face_id_is_shown_as_it_is() -> None:
    assert ServiceSettings(rerank={"model": "BAAI/bge-reranker-base"}).public_model_name == (
        "BAAI/bge-reranker-base"
    )


def _broken_models(root: Path) -> dict[str, Path]:
    missing = root / UNIQUE / "missing"
    corrupt = root / UNIQUE / "corrupt"
    corrupt.mkdir(parents=True)
    (corrupt / "config.json").write_text('{"model_type": "bert", "architectures": ["Bert')
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    pickled = root / UNIQUE / "pickled"
    pickled.mkdir(parents=True)
    (pickled / "config.json").write_text('{"model_type": "bert"}')
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    return {"missing dir": missing, "corrupt weights": corrupt, "pickle refused": pickled}


@pytest.mark.parametrize("case", ["missing dir", "corrupt weights", "pickle refused"])
async def test_load_errors_reach_clients_without_the_path(
    case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = _broken_models(tmp_path)[case]
    settings = ServiceSettings(max_wait_ms=1, rerank={"model": str(model), "device": "cpu"})
    app = create_app(settings)  # the real loader, which quotes the path it failed on
    async with running(app) as client:
        assert app.state.service.load_failed, case
        answers = [
            await client.get("/readyz"),
            await client.get("/livez"),
            await client.post("/v1/rerank", json={"query": "q", "documents": ["d"]}),
            await client.post("/rerank", json={"query": "q", "texts": ["d"]}),
        ]
    for r in answers:
        assert r.status_code == 503, r.text
        assert UNIQUE not in r.text and str(tmp_path) not in r.text, r.text
        assert "model failed to load" in r.text
    assert str(model) in caplog.text  # the operator's log keeps the whole story


@pytest.mark.parametrize(
    "text",
    [
        "OSError: /home/ci/models/x/config.json not found",
        "can't load 'C:\\Users\\ci\\m\\model.bin'",
        "refused ~/models/m and ~ci/models/m",
        "see ./models/m or ../m",
        "share \\\\nas\\models\\m",
        "from file:/srv/m",
    ],
)
def test_redaction_removes_any_path(text: str) -> None:
    cleaned = redact_paths(text, "/elsewhere", "local-model")
    assert "<path>" in cleaned
    assert not re.search(r"models|Users|srv|nas", cleaned), cleaned


def test_redaction_keeps_model_ids() -> None:
    text = "BAAI/bge-reranker-base: 404 for url https://hf.co/BAAI/bge-reranker-base"
    model = "BAAI/bge-reranker-base"
    assert redact_paths(text, model, model) == text


# ------------------------------------------------------------------- readiness


class SlowEngine:
    """A retriever whose engine check waits for the test (counts the checks)."""

    def __init__(self) -> None:
        self.checks = 0
        self.release = asyncio.Event()
        self.answer = True

    async def asearch(self, query: str, **kwargs: Any) -> Any:
        raise AssertionError("readiness must not run a whole search")

    async def ping(self) -> bool:
        self.checks += 1
        await self.release.wait()
        return self.answer


async def test_concurrent_probes_share_one_engine_check_and_it_is_bounded() -> None:
    engine = SlowEngine()
    settings = ServiceSettings(
        search_index="docs", max_wait_ms=1, readiness_timeout_s=0.3, engine_check_interval_s=60
    )
    app = create_app(settings, scorer=FakeScorer(), retriever=engine)
    async with running(app) as client:
        started = time.monotonic()
        hung = await asyncio.gather(*(client.get("/readyz") for _ in range(50)))
        hung_s = time.monotonic() - started
        cached = await client.get("/readyz")
    assert engine.checks == 1  # 50 concurrent probes, one engine call
    assert {r.status_code for r in hung} == {503} and hung_s < 3.0
    assert hung[0].json()["checks"]["engine"] == "no answer within 0.3 s"
    assert cached.status_code == 503 and engine.checks == 1  # reused for the interval


async def test_an_engine_that_answers_no_is_not_ready() -> None:
    engine = SlowEngine()
    engine.release.set()
    engine.answer = False
    app = create_app(
        ServiceSettings(search_index="docs", max_wait_ms=1), scorer=FakeScorer(), retriever=engine
    )
    async with running(app) as client:
        r = await client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["engine"] == "unreachable"
