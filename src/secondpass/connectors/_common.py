"""What the Elasticsearch and OpenSearch connectors share.

The two engines accept the same search, bulk, mget and index APIs for
everything SecondPass does; they differ in the client class, how a per-request
timeout is passed, which exceptions the client raises and the vector mapping.
Those differences are the small hooks an engine module fills in
(``_new_client``, ``_api``, ``_bulk``, ``_translate``); everything else — body
building, retries, hit parsing, admin primitives — lives here once.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import ValidationError

from secondpass.config import ConnectionSettings
from secondpass.connectors._query import (
    Engine,
    check_fields,
    hits_from_response,
    index_body,
    search_body,
    split_boost,
)
from secondpass.connectors._retry import RetryPolicy
from secondpass.connectors._validate import validate_index_name, validate_indices
from secondpass.errors import ConfigurationError, ConnectorError, MissingDependencyError, QueryError
from secondpass.types import Hit, SearchRequest

T = TypeVar("T")
ClientT = TypeVar("ClientT")

MGET_CHUNK = 1000
"""Ids per ``mget`` request in :meth:`existing_ids`."""

MAX_REPORTED_ERRORS = 10
"""How many per-document bulk errors :class:`BulkCounts` keeps as examples."""


@dataclass(frozen=True, slots=True)
class BulkCounts:
    """What a :meth:`bulk_index` call did; ``errors`` holds the first few item failures."""

    indexed: int = 0
    failed: int = 0
    errors: tuple[str, ...] = ()


def build_settings(
    settings: ConnectionSettings | None, overrides: Mapping[str, Any]
) -> ConnectionSettings:
    """Merge keyword overrides into settings (or into env-derived defaults).

    Validation errors become :class:`ConfigurationError` naming the fields and
    problems only; the values are never echoed since they may be secrets.
    """
    try:
        if settings is None:
            return ConnectionSettings(**overrides)
        if not overrides:
            return settings
        merged = {name: getattr(settings, name) for name in type(settings).model_fields}
        merged.update(overrides)
        return ConnectionSettings(**merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)
        )
        msg = f"invalid connection settings: {problems}"
        raise ConfigurationError(msg) from None


def redact(text: str, settings: ConnectionSettings) -> str:
    """Remove configured secrets from a text we did not write (a client's message)."""
    for secret in (settings.password, settings.api_key):
        if secret is not None and secret.get_secret_value():
            text = text.replace(secret.get_secret_value(), "***")
    return text


def uses_tls(settings: ConnectionSettings) -> bool:
    """True when any host is https, so TLS options are meaningful."""
    return any(url.startswith("https://") for url in settings.hosts)


def require(module: str, *, package: str, extra: str) -> Any:
    """Import an engine client on demand; name the pip extra when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(package, extra) from exc


def client_options(
    settings: ConnectionSettings, *, timeout_key: str, basic_auth_key: str
) -> dict[str, Any]:
    """Client constructor arguments both engines share, under each client's own names.

    The clients' retries are switched off here: :mod:`._retry` is the only layer.
    """
    options: dict[str, Any] = {
        "hosts": list(settings.hosts),
        timeout_key: settings.request_timeout_s,
        "max_retries": 0,
        "retry_on_timeout": False,
        "retry_on_status": (),
    }
    if settings.username is not None and settings.password is not None:
        options[basic_auth_key] = (settings.username, settings.password.get_secret_value())
    if uses_tls(settings):
        options["verify_certs"] = settings.verify_certs
        if settings.ca_certs is not None:
            options["ca_certs"] = settings.ca_certs
    return options


def _plain(response: Any) -> Any:
    """The response body as plain data (Elasticsearch wraps it in an ApiResponse)."""
    return getattr(response, "body", response)


def _method(name: str, **kwargs: Any) -> Callable[[Any], Any]:
    """A call of API ``name`` with fixed arguments, for use inside a loop (no late binding)."""
    return lambda api: getattr(api, name)(**kwargs)


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def bulk_actions(
    docs: Iterable[Mapping[str, Any]], *, index: str, id_field: str
) -> Iterator[dict[str, Any]]:
    """Turn documents into bulk ``index`` actions with explicit ids where present.

    With ``id_field="_id"`` the id is removed from the source (engines refuse a
    ``_id`` field inside a document); any other id field stays in the source.
    Explicit ids make a retried chunk idempotent: it overwrites, never duplicates.
    """
    for doc in docs:
        source = dict(doc)
        doc_id = source.pop("_id", None) if id_field == "_id" else source.get(id_field)
        action: dict[str, Any] = {"_index": index, "_source": source}
        if doc_id is not None:
            action["_id"] = str(doc_id)
        yield action


def describe_bulk_error(item: Mapping[str, Any]) -> str:
    """One line for a failed bulk item: id, status, engine reason."""
    info: Any = next(iter(item.values()), {}) if item else {}
    error = info.get("error") if isinstance(info, Mapping) else None
    if isinstance(error, Mapping):
        reason = f"{error.get('type')}: {error.get('reason')}"
    else:
        reason = str(error)
    doc_id = info.get("_id") if isinstance(info, Mapping) else None
    status = info.get("status") if isinstance(info, Mapping) else None
    return f"id={doc_id} status={status} {reason}"


class _ConnectorCore(Generic[ClientT]):
    """Configuration and pure logic shared by the sync and async connectors.

    Args:
        index: one index name or a sequence of names; checked before any request.
        fields: ``multi_match`` fields, boosts allowed (``"title^2"``).
        text_fields: fields handed to the reranker as ``Hit.fields``; defaults to
            the names in ``fields``. Dotted paths read nested ``_source`` values.
        source_includes: extra ``_source`` fields to return besides
            ``text_fields``; ``None`` returns the whole ``_source``.
        allow_index_patterns: accept wildcards, comma lists, ``_all`` and
            remote-cluster names (off: such names raise ``InvalidIndexNameError``).
        settings: a ``ConnectionSettings``; ``connection`` keywords override its
            fields. Without it, fields not given come from the environment.
    """

    engine: ClassVar[Engine]

    def __init__(
        self,
        *,
        index: str | Sequence[str],
        fields: Sequence[str],
        text_fields: Sequence[str] | None = None,
        source_includes: Sequence[str] | None = None,
        allow_index_patterns: bool = False,
        settings: ConnectionSettings | None = None,
        **connection: Any,
    ) -> None:
        self.indices = validate_indices(index, allow_patterns=allow_index_patterns)
        self.allow_index_patterns = allow_index_patterns
        self.fields = check_fields(fields)
        self.text_fields = (
            tuple(dict.fromkeys(split_boost(f) for f in self.fields))
            if text_fields is None
            else tuple(text_fields)
        )
        self.source_includes = None if source_includes is None else tuple(source_includes)
        self.settings = build_settings(settings, connection)
        self._check_settings(self.settings)
        s = self.settings
        self.retry = RetryPolicy(
            max_attempts=s.max_attempts,
            deadline_s=s.deadline_s,
            request_timeout_s=s.request_timeout_s,
            initial_backoff_s=s.initial_backoff_s,
            max_backoff_s=s.max_backoff_s,
        )
        self._client: ClientT | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(index={','.join(self.indices)!r}, "
            f"hosts={self.settings.hosts!r}, auth={self.settings.auth_kind!r})"
        )

    # -- hooks an engine module fills in ------------------------------------------------

    def _check_settings(self, settings: ConnectionSettings) -> None:
        """Refuse settings the engine cannot honour (default: accept all)."""

    def _new_client(self) -> ClientT:
        raise NotImplementedError

    def _api(self, client: ClientT, timeout_s: float) -> Any:
        """The client to call APIs on with a per-request timeout of ``timeout_s``.

        It also sends the current span's ``traceparent`` (see
        :func:`secondpass.observability.tracing.trace_headers`) when tracing is on.
        """
        raise NotImplementedError

    @staticmethod
    def _translate(exc: BaseException, what: str) -> ConnectorError | None:
        """Map a client exception to ours, or ``None`` if it is not a client error."""
        raise NotImplementedError

    # -- shared logic ------------------------------------------------------------------

    def _client_now(self) -> ClientT:
        # Created on first use so that building a connector never touches the network.
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._new_client()
                except (ValueError, TypeError, OSError) as exc:
                    msg = f"could not create the {self.engine} client: " + redact(
                        str(exc), self.settings
                    )
                    raise ConfigurationError(msg) from exc
            return self._client

    @property
    def _index_param(self) -> str:
        return ",".join(self.indices)

    def _what(self, operation: str) -> str:
        return f"{self.engine} {operation} on {self._index_param!r}"

    def _search_body(self, request: SearchRequest, attempt_timeout_s: float) -> dict[str, Any]:
        """The search body; with a caller deadline, the engine's ``timeout`` is the time left.

        ``attempt_timeout_s`` is this attempt's client timeout (already capped by
        the deadline), so the engine stops collecting hits when the client stops
        waiting for them instead of working on for nobody.
        """
        server_s = (
            self.settings.request_timeout_s
            if self.settings.server_timeout_s is None
            else self.settings.server_timeout_s
        )
        if request.deadline is not None:
            server_s = min(server_s, attempt_timeout_s)
        return search_body(
            request,
            engine=self.engine,
            fields=self.fields,
            text_fields=self.text_fields,
            source_includes=self.source_includes,
            timeout_s=server_s,
        )

    def _search_attempt(self, request: SearchRequest) -> Callable[[float], Any]:
        """One search attempt given its timeout: what the sync and async ``search`` retry.

        The client is taken once, so every attempt of one search uses the same one.
        """
        client = self._client_now()
        return lambda timeout_s: self._api(client, timeout_s).search(
            index=self._index_param, body=self._search_body(request, timeout_s)
        )

    def _hits(self, response: Any) -> list[Hit]:
        return hits_from_response(_plain(response), self.text_fields)

    def _single_index(self, operation: str) -> str:
        if len(self.indices) != 1:
            msg = f"{operation} needs exactly one index, this connector has {len(self.indices)}"
            raise ConfigurationError(msg)
        return validate_index_name(self.indices[0], allow_patterns=False)


class SyncConnector(_ConnectorCore[ClientT]):
    """A blocking connector with the admin primitives indexing and evaluation need."""

    _bulk_helpers: ClassVar[str]
    """Module of the client's bulk helpers (``elasticsearch.helpers``, ...)."""

    def _bulk_target(self, client: ClientT, timeout_s: float) -> tuple[Any, dict[str, Any]]:
        """The client to hand the bulk helper, and extra per-request arguments."""
        raise NotImplementedError

    def _bulk(
        self, client: ClientT, timeout_s: float, *, actions: list[dict[str, Any]]
    ) -> tuple[int, list[Any]]:
        """Send one chunk of bulk actions; return (succeeded, failed items).

        The helper only formats the chunk and collects per-item errors: its own
        retries are off and a transport failure propagates to our retry layer.
        """
        helpers = importlib.import_module(self._bulk_helpers)
        target, options = self._bulk_target(client, timeout_s)
        ok, errors = helpers.bulk(
            target,
            actions,
            chunk_size=len(actions),
            max_retries=0,
            raise_on_error=False,
            raise_on_exception=True,
            stats_only=False,
            **options,
        )
        return int(ok), list(errors)

    def _call(self, operation: str, fn: Callable[[Any], T]) -> T:
        client = self._client_now()
        return self.retry.call(
            lambda timeout_s: fn(self._api(client, timeout_s)),
            what=self._what(operation),
            translate=self._translate,
        )

    def search(self, request: SearchRequest) -> list[Hit]:
        """Return the top ``request.size`` hits in the engine's order (ranks 1..n).

        With ``request.deadline`` set, the call ends by it: each attempt's client
        timeout and the engine's search ``timeout`` are the time left, and
        :class:`~secondpass.errors.SearchDeadlineError` is raised when it runs out.
        """
        response = self.retry.call(
            self._search_attempt(request),
            what=self._what("search"),
            translate=self._translate,
            deadline=request.deadline,
        )
        return self._hits(response)

    def ping(self) -> bool:
        """Whether the engine answers for our index right now: one attempt, no retries.

        Uses ``HEAD /<index>`` rather than ``GET /``: it needs no cluster
        privilege, and minimal distributions lack the root endpoint. Never raises.
        """
        try:
            self._api(self._client_now(), self.settings.request_timeout_s).indices.exists(
                index=self._index_param
            )
        except Exception:
            return False
        return True

    def ensure_index(
        self,
        *,
        text_fields: Sequence[str],
        vector_field: str | None = None,
        dims: int | None = None,
        similarity: str = "cosine",
        keyword_fields: Sequence[str] = (),
    ) -> bool:
        """Create the index with text (and optionally vector) mappings unless it exists.

        Returns ``True`` when this call created it. An existing index is left
        untouched, so indexing can be resumed.
        """
        index = self._single_index("ensure_index")
        body = index_body(
            engine=self.engine,
            text_fields=text_fields,
            keyword_fields=keyword_fields,
            vector_field=vector_field,
            dims=dims,
            similarity=similarity,
        )
        if bool(self._call("indices.exists", lambda api: api.indices.exists(index=index))):
            return False
        try:
            self._call("indices.create", lambda api: api.indices.create(index=index, body=body))
        except QueryError as exc:
            if "resource_already_exists_exception" in (exc.reason or ""):
                return False  # created concurrently by someone else
            raise
        return True

    def bulk_index(
        self,
        docs: Iterable[Mapping[str, Any]],
        *,
        id_field: str = "_id",
        chunk_size: int = 500,
    ) -> BulkCounts:
        """Index documents in chunks; each chunk is retried as a whole on transient failures.

        Per-document failures (mapping errors, rejections) are counted, not
        raised; ``BulkCounts.errors`` shows the first few.
        """
        if chunk_size < 1:
            msg = f"chunk_size must be at least 1, got {chunk_size}"
            raise ConfigurationError(msg)
        index = self._single_index("bulk_index")
        client = self._client_now()
        indexed = failed = 0
        errors: list[str] = []
        for chunk in _chunks(bulk_actions(docs, index=index, id_field=id_field), chunk_size):
            ok, bad = self.retry.call(
                functools.partial(self._bulk, client, actions=chunk),
                what=self._what("bulk"),
                translate=self._translate,
            )
            indexed += ok
            failed += len(bad)
            errors.extend(describe_bulk_error(b) for b in bad[: MAX_REPORTED_ERRORS - len(errors)])
        return BulkCounts(indexed=indexed, failed=failed, errors=tuple(errors))

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` are already in the index (for resumable indexing).

        A missing index holds no ids, so this returns an empty set for it.
        """
        index = self._single_index("existing_ids")
        found: set[str] = set()
        for chunk in _chunks((str(i) for i in ids), MGET_CHUNK):
            body = {"docs": [{"_id": i, "_source": False} for i in chunk]}
            try:
                response = self._call("mget", _method("mget", index=index, body=body))
            except QueryError as exc:
                if exc.status == 404:
                    return set()
                raise
            found.update(d["_id"] for d in _plain(response).get("docs", []) if d.get("found"))
        return found

    def refresh(self) -> None:
        """Make everything indexed so far visible to search."""
        self._call("indices.refresh", lambda api: api.indices.refresh(index=self._index_param))

    def count(self) -> int:
        """Number of documents visible to search."""
        response = self._call("count", lambda api: api.count(index=self._index_param))
        return int(_plain(response)["count"])

    def delete_index(self) -> bool:
        """Delete the index; ``False`` when it did not exist."""
        index = self._single_index("delete_index")
        try:
            self._call("indices.delete", lambda api: api.indices.delete(index=index))
        except QueryError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def close(self) -> None:
        """Release the HTTP connections; the connector may be used again afterwards."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()  # type: ignore[attr-defined]

    def __enter__(self) -> SyncConnector[ClientT]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncConnector(_ConnectorCore[ClientT]):
    """The asyncio connector: search without blocking the event loop."""

    async def search(self, request: SearchRequest) -> list[Hit]:
        """Return the top ``request.size`` hits in the engine's order (ranks 1..n).

        Bounded by ``request.deadline`` as the sync ``search`` is. Cancelling the
        awaiting task cancels the HTTP request in flight: the aiohttp-based
        clients close that connection rather than return it to the pool, so a
        paused engine is not left holding connections for callers that left.
        """
        response = await self.retry.acall(
            self._search_attempt(request),
            what=self._what("search"),
            translate=self._translate,
            deadline=request.deadline,
        )
        return self._hits(response)

    async def ping(self) -> bool:
        """Whether the engine answers for our index right now (see the sync ``ping``)."""
        try:
            await self._api(self._client_now(), self.settings.request_timeout_s).indices.exists(
                index=self._index_param
            )
        except Exception:
            return False
        return True

    async def close(self) -> None:
        """Release the HTTP connections; the connector may be used again afterwards."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await client.close()  # type: ignore[attr-defined]

    async def __aenter__(self) -> AsyncConnector[ClientT]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
