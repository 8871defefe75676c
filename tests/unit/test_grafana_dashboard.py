"""deploy/grafana/secondpass.json names only series that serve and proxy really export.

A dashboard whose query names a renamed or removed series shows "No data" and
nobody notices; this parses every PromQL expression of the dashboard (panels
and template variables), takes out the metric names, and looks each up in a real
scrape of the service's ``/metrics`` and the proxy's ``/_secondpass/metrics``
after some traffic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from tests.unit.test_observability import scrape_serve_and_proxy

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "secondpass.json"

_FUNCTIONS_AND_KEYWORDS = frozenset(
    {
        "sum", "min", "max", "avg", "count", "rate", "irate", "increase", "histogram_quantile",
        "clamp_min", "clamp_max", "label_values", "by", "without", "on", "ignoring",
        "group_left", "group_right", "and", "or", "unless", "bool", "offset", "le",
    }
)  # fmt: skip


def expressions(node: Any) -> Iterator[str]:
    """Every PromQL expression in the dashboard: panel targets and variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, dict) and isinstance(value.get("query"), str):
                yield value["query"]
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def metric_names(expr: str) -> set[str]:
    """Metric names in ``expr``: identifiers outside label matchers, ranges and grouping."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (legend-free, but to be sure)
    text = re.sub(r"label_values\(([^,)]+),[^)]*\)", r"\1", text)  # Grafana's: a label 2nd
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    names = set()
    for match in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)\s*(\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name in _FUNCTIONS_AND_KEYWORDS:
            continue
        names.add(name)
    return names


def exported(text: str) -> set[str]:
    """Every sample name a scrape can carry, whether or not a labelled series has a sample yet."""
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
            "summary": ("_count", "_sum", ""),
            "info": ("_info",),
        }.get(family.type, ("",))
        names |= {family.name + s for s in suffixes}
        names |= {sample.name for sample in family.samples}
    return names


def test_metric_names_are_taken_out_of_promql() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, stage) (rate(secondpass_stage_duration_seconds_bucket"
        '{instance=~"$instance"}[$__rate_interval]))) / clamp_min(sum(up), 1e-9)'
    )
    assert metric_names(expr) == {"secondpass_stage_duration_seconds_bucket", "up"}
    assert metric_names("label_values(secondpass_build_info, instance)") == {
        "secondpass_build_info"
    }


async def test_every_series_the_dashboard_queries_is_exported_by_serve_or_proxy() -> None:
    serve, proxy_text = await scrape_serve_and_proxy()
    available = exported(serve) | exported(proxy_text)
    dashboard = json.loads(DASHBOARD.read_text())
    queried = set().union(*(metric_names(e) for e in expressions(dashboard)))
    assert len(queried) >= 20, queried  # the parser found the dashboard's queries
    assert sorted(queried - available) == []
    # what the issue asks the dashboard to show
    for needed in (
        "secondpass_http_requests_total",
        "secondpass_stage_duration_seconds_bucket",
        "secondpass_proxy_searches_total",
        "secondpass_batch_pairs_bucket",
        "secondpass_queue_depth_pairs",
        "secondpass_cache_hits_total",
    ):
        assert needed in queried, needed


def test_every_panel_has_a_datasource_variable_and_unique_ids() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
