"""The rank-log PNG: where the reranked #1 came from, and top-10 overlap over time.

matplotlib runs on its Agg backend (no display needed, safe in a server or CI)
and is imported only here, so summarising a log never needs it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from secondpass.errors import ConfigurationError, MissingDependencyError
from secondpass.reporting.rank_summary import MAX_TOP1_POSITION, RankLogReport

TIME_BINS = 48
"""Overlap over time is shown as the mean of up to this many equal time bins per arm."""
_COLORS = {"live": "tab:blue", "shadow": "tab:orange"}


def plot_rank_log(report: RankLogReport, path: str | Path) -> Path:
    """Write the two-panel PNG of ``report`` to ``path`` and return the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise MissingDependencyError(package="matplotlib", extra="eval") from exc

    arms = [arm for arm in report.arms.values() if arm.searches]
    fig, (hist_ax, time_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    deepest = max((max(arm.top1_from, default=1) for arm in arms), default=1)
    positions = np.arange(1, min(deepest, MAX_TOP1_POSITION + 1) + 1)
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        known = sum(arm.top1_from.values())
        if not known:
            continue
        shares = [arm.top1_from.get(int(p), 0) / known for p in positions]
        hist_ax.bar(
            positions + (i - (len(arms) - 1) / 2) * width, shares, width=width,
            color=_COLORS[arm.arm], label=f"{arm.arm} (n={known})",
        )  # fmt: skip
    hist_ax.set_xlabel(
        "first-stage position of the reranked #1"
        + (f" ({MAX_TOP1_POSITION + 1} = deeper)" if deepest > MAX_TOP1_POSITION else "")
    )
    hist_ax.set_ylabel("share of searches")
    hist_ax.set_title("displacement: where the reranked #1 came from")
    hist_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    hist_ax.grid(alpha=0.3)

    for arm in arms:
        ts, overlap = arm.overlap_over_time()
        if not ts.size:
            continue
        times, means = _binned(ts, overlap)
        time_ax.plot(
            [dt.datetime.fromtimestamp(t, tz=dt.timezone.utc) for t in times], means,
            marker="o", markersize=3, color=_COLORS[arm.arm], label=arm.arm,
        )  # fmt: skip
    time_ax.set_ylim(-0.02, 1.02)
    time_ax.set_xlabel("time (UTC)")
    time_ax.set_ylabel(f"mean top-10 overlap (up to {TIME_BINS} time bins)")
    time_ax.set_title("top-10 overlap of first-stage and reranked orders")
    time_ax.grid(alpha=0.3)
    time_ax.tick_params(axis="x", labelrotation=30)
    for ax in (hist_ax, time_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"rank log {Path(report.path).name}: {report.records} searches", fontsize=9)
    fig.tight_layout()
    target = Path(path)
    try:
        fig.savefig(target, dpi=110, format="png")
    except OSError as exc:
        msg = f"cannot write the plot to {target}: {exc.strerror or exc}"
        raise ConfigurationError(msg) from exc
    finally:
        plt.close(fig)
    return target


def _binned(ts: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` in up to ``TIME_BINS`` equal time bins, at each bin's centre; empty bins dropped."""
    if ts[0] == ts[-1]:
        return ts[:1], np.array([values.mean()])
    edges = np.linspace(ts[0], ts[-1], TIME_BINS + 1)
    which = np.clip(np.searchsorted(edges, ts, side="right") - 1, 0, TIME_BINS - 1)
    sums = np.bincount(which, weights=values, minlength=TIME_BINS)
    counts = np.bincount(which, minlength=TIME_BINS)
    filled = counts > 0
    centres = (edges[:-1] + edges[1:]) / 2
    return centres[filled], sums[filled] / counts[filled]
