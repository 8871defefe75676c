"""Request and response bodies of the HTTP API.

The wire formats follow Cohere's ``/v1/rerank`` and ``/v2/rerank`` and Hugging Face
text-embeddings-inference's ``/rerank`` so their existing clients work unchanged.
Size limits are deployment settings, so they are checked in the handlers (with
errors that name the field and the limit) and written into the OpenAPI document
by :func:`secondpass.service.app.create_app`, not hard-coded here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_JSON_TYPE = {bool: "boolean", int: "number", float: "number", list: "array"}

MAX_CHUNKS_PER_DOC = 100
"""Largest Cohere v1 ``max_chunks_per_doc``: each window is one more forward pass."""
MAX_TOKENS_PER_DOC = 2**31 - 1
"""Largest Cohere v2 ``max_tokens_per_doc`` (an int32, as Cohere's clients type it)."""


def _count(limit: int, description: str) -> Any:
    """An optional per-request count in 1..``limit``: strict, so ``true`` or ``4.5`` is a 422."""
    return Field(default=None, ge=1, le=limit, strict=True, description=description)


def _instruction() -> Any:
    """An LLM reranker's per-request task instruction: optional, bounded (422 naming the field)."""
    from secondpass.pipeline.truncation import MAX_INSTRUCTION_CHARS

    return Field(
        default=None,
        min_length=1,
        max_length=MAX_INSTRUCTION_CHARS,
        description="LLM rerankers (e.g. Qwen3-Reranker): the task instruction for this request; "
        "null: the model's default. A model that takes no instruction answers 422",
    )


def clean_text(text: str) -> str:
    """Replace lone UTF-16 surrogates (legal in JSON, fatal to tokenizers and encoders) with U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # utf-16 with surrogatepass re-pairs valid halves; "replace" turns lone ones into U+FFFD.
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _clean_tree(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [_clean_tree(v) for v in value]
    if isinstance(value, dict):
        return {
            clean_text(k) if isinstance(k, str) else k: _clean_tree(v) for k, v in value.items()
        }
    return value


class _Request(BaseModel):
    # Clients of the upstream APIs send fields we do not use; rejecting them
    # would break drop-in compatibility, so unknown fields are ignored.
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _clean_strings(cls, data: Any) -> Any:
        """Every string is made encodable once, so no later stage can fail on it."""
        return _clean_tree(data)


class _CohereRequest(_Request):
    """The fields both Cohere versions define the same way."""

    query: str = Field(description="the search query")
    top_n: int | None = Field(
        default=None, ge=1, description="how many results to return (default: all documents)"
    )
    model: str | None = Field(
        default=None, description="accepted for compatibility; this service serves one model"
    )
    instruction: str | None = _instruction()


class CohereRerankRequest(_CohereRequest):
    """Body of ``POST /v1/rerank`` (Cohere v1)."""

    documents: list[str | dict[str, Any]] = Field(
        description="strings, or objects whose `rank_fields` (default `text`) are scored"
    )
    rank_fields: list[str] | None = Field(
        default=None,
        min_length=1,
        description="object keys scored, in order; several are joined as `key: value` lines",
    )
    return_documents: bool = Field(
        default=False, description="echo each document in its result (Cohere's default: false)"
    )
    max_chunks_per_doc: int | None = _count(
        MAX_CHUNKS_PER_DOC,
        "score a long document in at most this many windows of the model's length; "
        "the best window's score counts (null: the service's long-document policy)",
    )

    @field_validator("documents", mode="before")
    @classmethod
    def _strings_or_objects(cls, value: Any) -> Any:
        """Name the first document that is neither a string nor an object (422).

        Without this, pydantic reports one error per union branch with internal
        names (``documents[0].str``), which tells a client little.
        """
        if isinstance(value, list):
            for i, doc in enumerate(value):
                if not isinstance(doc, (str, dict)):
                    kind = "null" if doc is None else _JSON_TYPE.get(type(doc), type(doc).__name__)
                    msg = f"documents[{i}] must be a string or an object, not {kind}"
                    raise ValueError(msg)
        return value


class CohereV2RerankRequest(_CohereRequest):
    """Body of ``POST /v2/rerank`` (Cohere v2: string documents)."""

    documents: list[str] = Field(description="the texts scored against the query")
    max_tokens_per_doc: int | None = _count(
        MAX_TOKENS_PER_DOC,
        "keep each document's first N tokens (of the model's tokenizer) before scoring; "
        "above the model's window only the service's own long-document policy applies",
    )
    return_documents: bool = Field(
        default=False, description="echo each document as `{text}` in its result"
    )
    priority: int | None = Field(
        default=None,
        description="accepted for compatibility; every request shares one fair batch queue",
    )


class CohereDocument(BaseModel):
    """The echoed document: ``text`` for string documents, the object's own fields otherwise."""

    model_config = ConfigDict(extra="allow")

    # A number is a valid text (it is scored as written), so it is echoed as sent.
    text: str | bool | int | float | None = None


class CohereResult(BaseModel):
    """One ranked document; ``index`` points into the request's ``documents``."""

    index: int
    relevance_score: float = Field(description="sigmoid of the model's logit, in [0, 1]")
    document: CohereDocument | None = None


class CohereMeta(BaseModel):
    """Cohere's ``meta`` block, plus what SecondPass adds (model, cache hits)."""

    model_config = ConfigDict(extra="allow")

    api_version: dict[str, str]
    billed_units: dict[str, int]
    model: str | None = Field(default=None, description="fingerprint of the model that scored")
    cache_hits: int | None = Field(
        default=None, description="documents served from the score cache"
    )


class CohereRerankResponse(BaseModel):
    """Results by descending relevance (ties: lower index first)."""

    id: str
    results: list[CohereResult]
    meta: CohereMeta


class TeiRerankRequest(_Request):
    """Body of ``POST /rerank`` (text-embeddings-inference)."""

    query: str
    texts: list[str]
    truncate: bool | None = Field(
        default=None,
        description="cut inputs longer than the model's window; false: 413 instead; "
        "null: the service's `auto_truncate` setting",
    )
    truncation_direction: Literal["Right", "Left", "right", "left"] = Field(
        default="Right",
        description="which end of a too-long text is cut: Right keeps its start, Left its end",
    )
    raw_scores: bool = Field(default=False, description="return logits instead of sigmoid scores")
    return_text: bool = Field(default=False, description="echo each text in its result")
    instruction: str | None = _instruction()


class TeiRank(BaseModel):
    """One ranked text; ``index`` points into the request's ``texts``."""

    index: int
    score: float
    text: str | None = None


class TeiModelType(BaseModel):
    """TEI's ``model_type``: this service serves one reranker."""

    reranker: dict[str, dict[str, Any]]


class TeiInfo(BaseModel):
    """``GET /info`` in text-embeddings-inference's shape: what a TEI client reads."""

    model_id: str = Field(description="the model's public name (never a filesystem path)")
    model_sha: str | None = Field(default=None, description="the pinned revision, if any")
    model_dtype: str = Field(description="the precision of the forward pass")
    model_type: TeiModelType
    max_concurrent_requests: int = Field(description="queued pairs the service admits")
    max_input_length: int = Field(description="the model's window in tokens")
    max_batch_tokens: int = Field(description="most (estimated) tokens in one forward pass")
    max_batch_requests: int | None = Field(description="most pairs in one forward pass")
    max_client_batch_size: int = Field(description="most texts in one request")
    auto_truncate: bool = Field(description="whether texts are cut when truncate is unset")
    tokenization_workers: int = Field(description="threads tokenizing (the model's own thread)")
    version: str = Field(description="SecondPass version")
    sha: str | None = None
    docker_label: str | None = None


class SearchRequestBody(_Request):
    """Body of ``POST /v1/search``: first stage on the configured index, then rerank."""

    query: str = Field(description="the user's text; only ever a match value, never query syntax")
    k: int = Field(default=10, ge=1, description="hits returned")
    offset: int = Field(default=0, ge=0, description="hits skipped (pages concatenate exactly)")
    filters: list[dict[str, Any]] = Field(
        default_factory=list, description="engine filter clauses, ANDed with the query"
    )
    body: dict[str, Any] | None = Field(
        default=None,
        description="your own query DSL (the `query` part); `query` is then only reranked",
    )
    hybrid: bool | None = Field(
        default=None,
        description="fuse lexical and kNN first stages (RRF or linear, as configured); "
        "null: hybrid when the service has a vector field configured",
    )
    deadline_ms: float | None = Field(
        default=None, gt=0, description="answer within this many ms; reranking degrades to fit"
    )
    instruction: str | None = _instruction()
    shadow: bool = Field(
        default=False,
        description="answer in first-stage order and rerank in the background, recording "
        "the comparison (docs/rollout.md); rerank_status is then skipped, reason shadow",
    )


class SearchHitOut(BaseModel):
    """One hit in the final order; ``score`` is null when it was not reranked."""

    index: str
    id: str
    rank: int
    score: float | None
    first_stage_rank: int
    first_stage_score: float | None
    fields: dict[str, str]
    source: dict[str, Any]


class SearchResponse(BaseModel):
    """Hits plus what a caller needs to trust them (see ``rerank_status``)."""

    hits: list[SearchHitOut]
    rerank_status: Literal["ok", "partial", "skipped", "failed"]
    reason: str | None
    timings_ms: dict[str, float]
    cache_hits: int
    cache_misses: int
    window: int
    reranked: int


class ErrorBody(BaseModel):
    """Every error response (``error`` and ``message`` carry the same text)."""

    error: str
    message: str
    error_type: str
    field: str | None = None
    limit: float | None = None


class Readiness(BaseModel):
    """``/readyz`` answer: ``ready`` plus the state of each check."""

    ready: bool
    status: str
    checks: dict[str, str]
