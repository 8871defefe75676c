"""Who gets reranked: shadow mode, the rollout share, and the settings that steer them.

Why one module: the proxy and the service's ``/v1/search`` must decide a search's
arm the same way, from the same settings (``--shadow``, ``--shadow-sample-rate``,
``--rerank-share``, ``--rerank-share-key``, ``--rerank-share-rest``), so a share
rolled out through one front-end means the same thing through the other.

Arms:
    ``live``   rerank and answer in reranked order (the usual path);
    ``shadow`` answer in first-stage order, rerank in the background and record
               the comparison;
    ``pass``   answer in first-stage order, record nothing.

The share is deterministic: a search is in the reranked share when the first 8
bytes of sha256(key) read as an integer, divided by 2**64, fall below the share.
The key is the value of the ``rerank_share_key`` header when the caller sent it
(e.g. a session id, so one user always sees the same arm), otherwise the query
text (so at least one query always gets the same arm).
"""

from __future__ import annotations

import hashlib
import random
from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["Arm", "RolloutSettings", "choose_arm", "in_share"]

Arm = Literal["live", "shadow", "pass"]


class RolloutSettings(BaseModel):
    """Shadow and rollout-share knobs shared by ``secondpass serve`` and ``secondpass proxy``."""

    shadow: bool = Field(
        default=False,
        description="shadow every reranked search: answer in first-stage order, rerank in the "
        "background and record the comparison (docs/rollout.md)",
    )
    shadow_sample_rate: float = Field(
        default=1.0, ge=0.0, le=1.0, description="share of shadow-eligible searches actually shadowed"
    )
    shadow_queue: int = Field(
        default=64, ge=1, le=100_000, description="most shadow reranks waiting or running; more are dropped"
    )
    shadow_workers: int = Field(
        default=2, ge=1, le=1024, description="most shadow reranks running at once"
    )
    rerank_share: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="rerank only this deterministic share of searches (None: all of them)",
    )
    rerank_share_key: str = Field(
        default="X-Session-Id",
        max_length=256,
        description="request header whose value picks the share arm (absent: the query text)",
    )
    rerank_share_rest: Literal["shadow", "pass"] = Field(
        default="shadow", description="what searches outside the rerank share get"
    )
    rank_log: str | None = Field(default=None, description="append rank-change records (JSONL) to this file")
    rank_log_sample_rate: float = Field(
        default=1.0, ge=0.0, le=1.0, description="share of compared searches written to the rank log"
    )
    rank_log_text: bool = Field(
        default=False, description="write the query text to the rank log (off: only its sha256 id)"
    )
    rank_log_max_bytes: int = Field(
        default=100 * 1024 * 1024, ge=1024, description="rank log size at which it rotates to FILE.1"
    )


def in_share(key: str, share: float) -> bool:
    """Whether ``key`` falls in the reranked ``share`` (same key, same answer, every process)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def choose_arm(
    settings: RolloutSettings,
    *,
    share_key: str | None,
    query: str,
    shadow_requested: bool,
    rng: random.Random | None = None,
) -> Arm:
    """The arm of one rerankable search.

    Order: a search outside the rerank share gets ``rerank_share_rest``; otherwise
    it is shadowed when the operator (``shadow``) or the caller (a per-request
    opt-in) asked and the sample rate lets it through; else it is reranked live.
    A shadow candidate that the sample rate leaves out is answered live when the
    caller asked for shadow only per request, and passed when ``shadow`` is on for
    all traffic (the operator asked that nobody be reranked live).
    """
    if settings.rerank_share is not None:
        key = share_key if share_key else query
        if not in_share(key, settings.rerank_share):
            if settings.rerank_share_rest == "pass":
                return "pass"
            return "shadow" if _sampled(settings.shadow_sample_rate, rng) else "pass"
    if settings.shadow or shadow_requested:
        if _sampled(settings.shadow_sample_rate, rng):
            return "shadow"
        return "pass" if settings.shadow else "live"
    return "live"


def _sampled(rate: float, rng: random.Random | None) -> bool:
    if rate >= 1.0:
        return True
    return (rng or random).random() < rate  # noqa: S311 - sampling, not security
