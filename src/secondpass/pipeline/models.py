"""Pick the scorer a command line run uses, with an honest offline fallback.

The default cross-encoder (``BAAI/bge-reranker-v2-m3``) is a 2.3 GB download.
On a machine without the hub and without a cached copy the demo and ``eval``
should still run, so :func:`load_scorer` can fall back to the all-MiniLM-L6-v2
bi-encoder shipped by the ``offline-model`` extra. The fallback is announced in
one line and named in the returned description: a bi-encoder's scores are never
passed off as a cross-encoder's. It ranks by RRF of its own order and the first
stage's (:data:`FALLBACK_FUSION`), because alone it made good first stages worse.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from secondpass.config import RerankSettings
from secondpass.errors import ModelLoadError
from secondpass.pipeline.fusion import FirstStageFusion
from secondpass.pipeline.protocols import Scorer

logger = logging.getLogger(__name__)

FALLBACK_DESCRIPTION = "bi-encoder all-MiniLM-L6-v2 fused with first-stage rank (fallback)"
"""How reports and the demo name the offline fallback scorer."""

FALLBACK_FUSION = FirstStageFusion(k=1, first_stage_weight=1.0, scorer_weight=0.5)
"""How the fallback's order is fused with the first stage's: RRF, k=1, the first stage weighted double.

Reranking SciFact's hybrid top 20 with the bi-encoder alone lowered nDCG@10
from 0.689 to 0.647. ``k`` and the weights were chosen on SciFact's *train*
queries, not on the test queries that docs/evaluation.md reports: the setting
with the largest worst-case gain over the hybrid first stage across windows of
20 and 100 (train: hybrid 0.690, this fusion 0.694 and 0.698, plain RRF with
k=60 and equal weights 0.690 and 0.688). With k=1, a hit the first stage put
first ends at worst second, whatever the bi-encoder says of it.
"""


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
        'bi-encoder all-MiniLM-L6-v2 fused with first-stage rank (fallback)'
    """
    from secondpass.pipeline.remote.references import public_reference, remote_scorer_or_none
    from secondpass.pipeline.scorer import CrossEncoderScorer

    name = RerankSettings().model if model is None else model
    remote = remote_scorer_or_none(name)  # "cohere:rerank-v3.5", "tei:http://host:8080", ...
    if remote is not None:  # no fallback: a configuration error should be seen, not masked
        return remote, f"remote reranker {public_reference(name)}"
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
        fallback = BiEncoderScorer(
            SentenceTransformerEncoder(device=device), first_stage_fusion=FALLBACK_FUSION
        )
        fallback.warm_up()
        return fallback, FALLBACK_DESCRIPTION
    return scorer, f"cross-encoder {name}"
