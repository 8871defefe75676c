"""Generated hostile requests against every HTTP endpoint: no 5xx, no crash, answers match the schema.

Three runs, counted together (at least 10,000 requests in total):

* schemathesis, in-process over ASGI: every operation of the OpenAPI document,
  valid requests (``positive``) and requests that break the schema on purpose
  (``negative``), each answer checked for 5xx, documented status codes,
  content types, headers and conformance to the response schema;
* hypothesis, in-process: raw bodies the schema cannot describe (arbitrary
  JSON trees, wrong types, NUL and lone surrogates, broken JSON, huge numbers,
  wrong content types) to every endpoint;
* schemathesis again, smaller, against the real ``secondpass serve`` process,
  which must still be alive and ready afterwards with no unhandled error logged.

The app is the real one with the tiny real cross-encoder and ``/v1/search`` on
the session's real OpenSearch. Limits are set small so the generated inputs
cross them often. ``SECONDPASS_FUZZ_SCALE`` (default 1.0) scales every count.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.testclient import TestClient

from secondpass.service.app import create_app
from secondpass.service.settings import ServiceSettings
from tests.fixtures.service import ServiceProcess
from tests.reliability._common import corpus, temp_index

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

SCALE = float(os.environ.get("SECONDPASS_FUZZ_SCALE", "1.0"))
IN_PROCESS_PER_MODE = int(550 * SCALE)  # per POST operation and generation mode
RAW_EXAMPLES = int(1300 * SCALE)  # per endpoint, hypothesis raw bodies
REAL_PROCESS_PER_OPERATION = int(240 * SCALE)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
LIMITS = {
    "max_documents": 20,
    "max_top_n": 20,
    "max_document_chars": 2000,
    "max_query_chars": 500,
    "max_body_bytes": 64 * 1024,
    "max_wait_ms": 1,
}
POSTS = ("/v1/rerank", "/v2/rerank", "/rerank", "/v1/search")
_COUNTS: Counter[str] = Counter()


def _settings(index: str, opensearch_url: str) -> ServiceSettings:
    return ServiceSettings(
        **LIMITS,
        search_index=index,
        search_fields=["title", "body"],
        search_window=20,
        cache={"backend": "memory", "max_entries": 2000},
        engine={"engine": "opensearch", "hosts": [opensearch_url], "deadline_s": 10.0},
    )


@pytest.fixture(scope="module")
def index(opensearch_url: str) -> Iterator[str]:
    with temp_index(opensearch_url, corpus(40)) as name:
        yield name


def _run_operation(operation: Any, mode: GenerationMode, examples: int, call: Callable[[Any], Any]) -> int:
    ran = 0

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        nonlocal ran
        ran += 1
        response = call(case)
        case.validate_response(response, checks=CHECKS)

    run()
    return ran


def test_schemathesis_in_process_every_operation(
    index: str, opensearch_url: str, tiny_scorer: Any, figures: Any
) -> None:
    app = create_app(_settings(index, opensearch_url), scorer=tiny_scorer)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {op.path for op in operations}
    assert set(POSTS) | {"/livez", "/readyz", "/metrics"} <= paths, paths
    for operation in operations:
        is_post = operation.method.upper() == "POST"
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if not is_post and mode is GenerationMode.NEGATIVE:
                continue  # nothing to break in a request without parameters or body
            ran = _run_operation(operation, mode, IN_PROCESS_PER_MODE if is_post else 5, lambda case: case.call())
            _COUNTS[f"in-process {operation.method.upper()} {operation.path}"] += ran
    state = app.state.service
    assert state.model_ok and state.batcher is not None
    total = sum(v for k, v in _COUNTS.items() if k.startswith("in-process"))
    figures.add("hostile HTTP: schemathesis in-process", "generated requests (0 failures)", total, "requests")


# ----------------------------------------------------------------- raw bodies

_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40) | st.sampled_from(
    ["\x00", "\ud800", "a\udfffb", "\u202e", "field:*", "((((", "\\", '"', "NaN", "1e999"]
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False, allow_infinity=False) | _TEXT,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_TEXT, children, max_size=5),
    max_leaves=30,
)
_FIELDS = {
    "/v1/rerank": ["query", "documents", "top_n", "rank_fields", "return_documents", "max_chunks_per_doc"],
    "/v2/rerank": ["query", "documents", "top_n", "max_tokens_per_doc"],
    "/rerank": ["query", "texts", "truncate", "truncation_direction", "raw_scores", "return_text"],
    "/v1/search": ["query", "k", "offset", "filters", "body", "hybrid", "deadline_ms"],
}


def _raw_body(endpoint: str) -> st.SearchStrategy[tuple[bytes, str]]:
    """Bodies that look almost right, are arbitrary JSON, or are not JSON at all."""
    near = st.fixed_dictionaries({}, optional={name: _JSON for name in _FIELDS[endpoint]}).map(
        lambda d: json.dumps(d, allow_nan=True).encode()
    )
    shaped = st.fixed_dictionaries(
        {
            "query": _TEXT,
            ("texts" if endpoint == "/rerank" else "documents"): st.lists(_TEXT | _JSON, max_size=8),
        }
    ).map(lambda d: json.dumps(d).encode("utf-8", "surrogatepass"))
    anything = _JSON.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass"))
    garbage = st.binary(max_size=200) | st.sampled_from(
        [b"", b"{", b'{"query": NaN}', b'{"query": "a", "documents": [1e99999]}', b"\xff\xfe", b"[" * 5000, b'{"k": 1e400}']
    )
    body = near | shaped | anything | garbage
    ctype = st.sampled_from(["application/json", "application/json", "text/plain", "application/x-www-form-urlencoded", ""])
    return st.tuples(body, ctype)


def _fuzz_raw(client: TestClient, endpoint: str, statuses: Counter[int]) -> None:
    @settings(
        max_examples=RAW_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(payload=_raw_body(endpoint))
    def run(payload: tuple[bytes, str]) -> None:
        body, ctype = payload
        headers = {"content-type": ctype} if ctype else {}
        response = client.post(endpoint, content=body, headers=headers)
        statuses[response.status_code] += 1
        _COUNTS[f"raw {endpoint}"] += 1
        assert response.status_code < 500, (response.status_code, response.text[:300])
        data = response.json()
        if response.status_code >= 400:
            assert set(data) >= {"error", "message", "error_type"}, data
            assert "Traceback" not in response.text
        else:
            assert isinstance(data, (dict, list))

    run()


def test_raw_hostile_bodies_never_cause_5xx(index: str, opensearch_url: str, tiny_scorer: Any, figures: Any) -> None:
    app = create_app(_settings(index, opensearch_url), scorer=tiny_scorer)
    statuses: Counter[int] = Counter()
    with TestClient(app, raise_server_exceptions=False) as client:
        for endpoint in POSTS:
            _fuzz_raw(client, endpoint, statuses)
        assert client.get("/readyz").status_code == 200
        ok = client.post("/v1/rerank", json={"query": "cat", "documents": ["a cat", "a dog"]})
        assert ok.status_code == 200
    total = sum(v for k, v in _COUNTS.items() if k.startswith("raw"))
    figures.add("hostile HTTP: hypothesis raw bodies", "generated requests (0 x 5xx)", total, "requests")


def _server_errors(svc: ServiceProcess) -> dict[str, float]:
    """5xx answers by endpoint from the process's own metrics (``/readyz`` is 503 until loaded)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{svc.url}/metrics", timeout=10).text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "secondpass_http_requests_total" and labels.get("status", "").startswith("5"):
                if labels.get("endpoint") != "/readyz" and sample.value:
                    found[f"{labels['endpoint']} {labels['status']}"] = sample.value
    return found


def test_schemathesis_against_the_real_process(
    service_factory: Callable[..., ServiceProcess], index: str, opensearch_url: str, figures: Any
) -> None:
    settings_env = {
        **LIMITS,
        "search_index": index,
        "search_fields": ["title", "body"],
        "search_window": 20,
        "engine": {"engine": "opensearch", "hosts": [opensearch_url]},
    }
    svc = service_factory(settings=settings_env, args=["--log-level", "info"])
    schema = schemathesis.openapi.from_url(f"{svc.url}/openapi.json")
    ran = 0
    with httpx.Client(timeout=60):
        for result in schema.get_all_operations():
            operation = result.ok()
            is_post = operation.method.upper() == "POST"
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if not is_post and mode is GenerationMode.NEGATIVE:
                    continue
                n = _run_operation(
                    operation,
                    mode,
                    REAL_PROCESS_PER_OPERATION // 2 if is_post else 3,
                    lambda case: case.call(base_url=svc.url, timeout=60),
                )
                ran += n
                _COUNTS[f"real {operation.method.upper()} {operation.path}"] += n
    assert svc.alive(), "the service process died"
    assert httpx.get(f"{svc.url}/readyz", timeout=10).status_code == 200
    log = svc.log()
    assert "unhandled" not in log and "Traceback" not in log, log[-3000:]
    assert _server_errors(svc) == {}, "5xx answers (besides /readyz while the model loaded)"
    figures.add("hostile HTTP: schemathesis vs real process", "generated requests (0 failures)", ran, "requests")
    total = sum(_COUNTS.values())
    figures.add("hostile HTTP: all runs", "generated requests in total", total, "requests")
    if not math.isclose(SCALE, 1.0) or total < 10_000:
        assert SCALE < 1.0 or total >= 10_000, f"only {total} generated requests"
