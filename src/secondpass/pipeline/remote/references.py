"""How a user names a remote reranker, and the settings every remote scorer shares.

A model reference with a known provider prefix picks a rerank API instead of a
local cross-encoder, wherever a model name is accepted (``--model``,
``--rerank-model``, ``SECONDPASS_RERANK_MODEL``, ``SECONDPASS_SERVICE_RERANK__MODEL``):

==================================================  ===========================================
``cohere:rerank-v3.5``                               Cohere ``/v2/rerank`` (through the SDK)
``jina:jina-reranker-v2-base-multilingual``          Jina ``/v1/rerank``
``voyage:rerank-2.5``                                Voyage ``/v1/rerank``
``mixedbread:mixedbread-ai/mxbai-rerank-large-v2``   Mixedbread ``/v1/reranking``
``tei:http://host:8080``                             text-embeddings-inference ``/rerank``
``infinity:http://host:7997/BAAI/bge-reranker-v2-m3``  Infinity ``/rerank``
``vllm:http://host:8000/BAAI/bge-reranker-v2-m3``    vLLM ``/rerank``
``vllm-score:http://host:8000/BAAI/bge-reranker-v2-m3``  vLLM ``/score``
==================================================  ===========================================

In the URL form the path is the model name (``tei`` takes none: its path, if
any, is a prefix its routes live under). ``provider:MODEL@URL`` names both
explicitly, for a server under a path prefix or a hosted API behind a gateway.
The API key is never part of a reference (a command line ends up in ``ps`` and
in logs): it comes from ``SECONDPASS_REMOTE_API_KEY`` or the provider's own
variable (``COHERE_API_KEY``, ``JINA_API_KEY``, ``VOYAGE_API_KEY``,
``MXBAI_API_KEY``). This module imports no HTTP client, so checking whether a
name is remote costs nothing.

Example:
    >>> parse_remote_reference("vllm:http://gpu:8000/BAAI/bge-reranker-v2-m3")
    RemoteReference(provider='vllm', model='BAAI/bge-reranker-v2-m3', base_url='http://gpu:8000')
    >>> parse_remote_reference("BAAI/bge-reranker-v2-m3") is None
    True
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from secondpass.errors import ConfigurationError, MissingDependencyError

if TYPE_CHECKING:
    from secondpass.pipeline.remote.base import RemoteScorer

HOSTED = {
    "cohere": "https://api.cohere.com",
    "jina": "https://api.jina.ai",
    "voyage": "https://api.voyageai.com",
    "mixedbread": "https://api.mixedbread.com",
}
"""Hosted providers and their documented API base URLs."""

SELF_HOSTED = ("tei", "infinity", "vllm", "vllm-score")
"""Servers the operator runs; a URL is required, a key optional."""

PROVIDERS = (*HOSTED, *SELF_HOSTED)

KEY_VARIABLES = {
    "cohere": ("COHERE_API_KEY", "CO_API_KEY"),
    "jina": ("JINA_API_KEY",),
    "voyage": ("VOYAGE_API_KEY",),
    "mixedbread": ("MXBAI_API_KEY", "MIXEDBREAD_API_KEY"),
}
"""The providers' own key variables, read after ``SECONDPASS_REMOTE_API_KEY``."""

_REFERENCE = re.compile(r"^(?P<provider>[a-z][a-z-]*):(?P<rest>.*)$", re.DOTALL)
_EXPLICIT = re.compile(r"^(?P<model>.+?)@(?P<url>https?://.+)$", re.DOTALL)


class RemoteSettings(BaseSettings):
    """Limits and key shared by every remote scorer (env prefix ``SECONDPASS_REMOTE_``).

    ``max_documents`` overrides the provider's documented per-call limit (say,
    a TEI started with a larger ``--max-client-batch-size``); ``max_concurrency``
    bounds calls in flight per scorer; ``timeout_s`` bounds one attempt,
    ``deadline_s`` a whole call with its retries, ``max_attempts`` the tries;
    ``max_response_bytes`` the body read from the API.

    Example:
        >>> RemoteSettings(max_concurrency=2).max_concurrency
        2
    """

    model_config = SettingsConfigDict(env_prefix="SECONDPASS_REMOTE_", extra="forbid")

    api_key: SecretStr | None = None
    max_documents: int | None = Field(default=None, ge=1, le=10_000)
    max_concurrency: int = Field(default=4, ge=1, le=64)
    timeout_s: float = Field(default=10.0, gt=0, le=600)
    deadline_s: float = Field(default=30.0, gt=0, le=3600)
    max_attempts: int = Field(default=3, ge=1, le=10)
    max_response_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)


@dataclass(frozen=True, slots=True)
class RemoteReference:
    """A parsed remote model reference: which protocol, which model, where."""

    provider: str
    model: str | None
    base_url: str


def _check_url(url: str, reference: str) -> str:
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or 0 < parts.port
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        msg = f"remote model reference {_shown(reference)!r}: {_shown(url)!r} is not an http(s) URL"
        raise ConfigurationError(msg)
    if parts.query or parts.fragment:
        msg = f"remote model reference {_shown(reference)!r}: the URL may not carry ?query or #fragment"
        raise ConfigurationError(msg)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _shown(reference: str) -> str:
    """The reference without any ``user:password@`` a URL might carry."""
    return re.sub(r"//[^/@\s]*@", "//", reference)


def parse_remote_reference(reference: str) -> RemoteReference | None:
    """The remote reference ``reference`` names, or ``None`` for a hub id or local path.

    Only the prefixes in :data:`PROVIDERS` are remote, so ``C:/models/x`` and
    ``BAAI/bge-reranker-v2-m3`` stay local. A known prefix with a malformed rest
    raises :class:`~secondpass.errors.ConfigurationError` naming the forms.
    """
    match = _REFERENCE.match(reference.strip())
    if match is None or match["provider"] not in PROVIDERS:
        return None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in reference.strip()):
        # A newline in a model name would forge log lines and break the fingerprint.
        msg = f"remote model reference {_shown(reference)!r} contains a control character"
        raise ConfigurationError(msg)
    if not match["rest"].strip():  # "tei:" must not fall through to a local model named "tei:"
        msg = f"remote model reference {_shown(reference)!r} names no model or URL"
        raise ConfigurationError(msg)
    try:
        return _parse(match["provider"], match["rest"].strip(), reference)
    except ConfigurationError:  # a ValueError too: keep its own message
        raise
    except ValueError:  # urlsplit's own complaints (a bad [IPv6] host): not ConfigurationError
        msg = f"remote model reference {_shown(reference)!r}: the URL cannot be parsed"
        raise ConfigurationError(msg) from None


def _parse(provider: str, rest: str, reference: str) -> RemoteReference:
    explicit = _EXPLICIT.match(rest)
    if explicit is not None:
        return RemoteReference(provider, explicit["model"], _check_url(explicit["url"], reference))
    if re.match(r"^https?://", rest):
        parts = urlsplit(rest)
        if provider == "tei":
            return RemoteReference(provider, None, _check_url(rest, reference))
        model = parts.path.strip("/") or None
        base = urlunsplit((parts.scheme, parts.netloc, "", parts.query, parts.fragment))
        return RemoteReference(provider, model, _check_url(base, reference))
    if provider in HOSTED:
        return RemoteReference(provider, rest, HOSTED[provider])
    msg = (
        f"remote model reference {_shown(reference)!r}: {provider} needs the server's URL, "
        f"e.g. {provider}:http://host:8000/MODEL or {provider}:MODEL@http://host:8000"
    )
    raise ConfigurationError(msg)


def public_reference(reference: str) -> str:
    """``reference`` as it may be shown in output and logs (no URL credentials)."""
    return _shown(reference)


def remote_scorer_or_none(reference: str | None) -> RemoteScorer | None:
    """The remote scorer ``reference`` names, or ``None`` when it names a local model.

    The one check the loaders (CLI, service, proxy) make before loading a
    cross-encoder, so that every entry point accepts the same references.
    """
    if reference is None or parse_remote_reference(reference) is None:
        return None
    return build_remote_scorer(reference)


def is_remote_reference(reference: str | None) -> bool:
    """Whether ``reference`` names a rerank API (see the module docstring)."""
    return reference is not None and parse_remote_reference(reference) is not None


def api_key_for(provider: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The key for ``provider``: ``SECONDPASS_REMOTE_API_KEY``, else the provider's variable."""
    env = os.environ if environ is None else environ
    for name in ("SECONDPASS_REMOTE_API_KEY", *KEY_VARIABLES.get(provider, ())):
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def build_remote_scorer(
    reference: str | RemoteReference,
    *,
    settings: RemoteSettings | None = None,
    environ: Mapping[str, str] | None = None,
) -> RemoteScorer:
    """The scorer a remote reference names, configured from ``settings`` and the environment.

    Construction does no I/O: the first call to the API is the first score.
    A hosted provider without a key is a configuration error raised here,
    before any request. The key is registered with the log redactor.
    """
    parsed = parse_remote_reference(reference) if isinstance(reference, str) else reference
    if parsed is None:
        msg = f"{_shown(str(reference))!r} is not a remote model reference ({', '.join(PROVIDERS)})"
        raise ConfigurationError(msg)
    resolved = RemoteSettings() if settings is None else settings
    key = resolved.api_key.get_secret_value() if resolved.api_key is not None else None
    key = key or api_key_for(parsed.provider, environ)
    if parsed.provider in HOSTED and not key:
        names = " or ".join(("SECONDPASS_REMOTE_API_KEY", *KEY_VARIABLES[parsed.provider]))
        msg = f"{parsed.provider} needs an API key: set {names}"
        raise ConfigurationError(msg)
    try:
        import httpx  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(package="httpx", extra="remote") from exc
    from secondpass.pipeline.remote.base import scorer_class

    return scorer_class(parsed.provider)(
        model=parsed.model, base_url=parsed.base_url, api_key=key, settings=resolved
    )
