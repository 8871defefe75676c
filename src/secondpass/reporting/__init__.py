"""Offline reports on what reranking changed, read from logs a rollout writes.

``secondpass report`` summarises a rank log (:mod:`.rank_summary`) and
``secondpass eval --clicks`` joins logged clicks with it (:mod:`.clicks`). Both
stream their input with bounded memory, skip and count malformed lines instead
of failing on them, and keep rendering (:mod:`.render`, :mod:`.plot`) apart from
the figures, so the figures are testable without a terminal or matplotlib.
"""

from __future__ import annotations

from secondpass.reporting.clicks import ClickReport, evaluate_clicks
from secondpass.reporting.rank_summary import RankLogReport, summarise_rank_log

__all__ = ["ClickReport", "RankLogReport", "evaluate_clicks", "summarise_rank_log"]
