"""Pick the scorer a command line run uses, with an honest offline fallback.

The default cross-encoder (``BAAI/bge-reranker-v2-m3``) is a 2.3 GB download.
On a machine without the hub and without a cached copy the demo and ``eval``
should still run, so :func:`load_scorer` can fall back to the all-MiniLM-L6-v2
bi-encoder shipped by the ``offline-model`` extra. The fallback is announced in
one line and named in the returned description: a bi-encoder's scores are never
passed off as a cross-encoder's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from secondpass.config import RerankSettings
from secondpass.errors import ModelLoadError
from secondpass.pipeline.protocols import Scorer

logger = logging.getLogger(__name__)

FALLBACK_DESCRIPTION = "bi-encoder all-MiniLM-L6-v2 (fallback)"
"""How reports and the demo name the offline fallback scorer."""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def load_scorer(
    model: str | None,
    *,
    allow_fallback: bool,
    device: str | None = None,
    notify: Callable[[str], None] | None = None,
) -> tuple[Scorer, str]:
    """Load and warm a cross-encoder; optionally fall back to the packaged bi-encoder.

    ``model`` is a hub id or a local directory; ``None`` means the configured
    default (``SECONDPASS_RERANK_MODEL``, else ``BAAI/bge-reranker-v2-m3``).
    Returns the warmed scorer and a short description for output and reports,
    e.g. ``"cross-encoder BAAI/bge-reranker-v2-m3"``.

    When the cross-encoder cannot be loaded: with ``allow_fallback=False`` the
    :class:`~secondpass.errors.ModelLoadError` propagates; otherwise one line
    explaining the fallback goes to ``notify`` (default: a warning log record)
    and a :class:`~secondpass.pipeline.dense.BiEncoderScorer` on the packaged
    all-MiniLM-L6-v2 is returned with :data:`FALLBACK_DESCRIPTION`.

    Example:
        >>> scorer, description = load_scorer(None, allow_fallback=True)  # doctest: +SKIP
        >>> description  # doctest: +SKIP
        'bi-encoder all-MiniLM-L6-v2 (fallback)'
    """
    from secondpass.pipeline.scorer import CrossEncoderScorer

    name = RerankSettings().model if model is None else model
    scorer = CrossEncoderScorer(model=name, device=device)
    try:
        scorer.warm_up()
    except ModelLoadError as exc:
        if not allow_fallback:
            raise
        from secondpass.pipeline.dense import BiEncoderScorer, SentenceTransformerEncoder

        line = _one_line(
            f"cross-encoder {name!r} is not available ({exc}); "
            f"reranking with the packaged {FALLBACK_DESCRIPTION} instead"
        )
        if notify is None:
            logger.warning("%s", line)
        else:
            notify(line)
        fallback = BiEncoderScorer(SentenceTransformerEncoder(device=device))
        fallback.warm_up()
        return fallback, FALLBACK_DESCRIPTION
    return scorer, f"cross-encoder {name}"
