"""How fast Ray's autoscaler sees load: the metrics knobs of ``RayServeOptions``."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from secondpass.deploy.ray import RayServeOptions, app_builder
from secondpass.errors import ConfigurationError


def test_metrics_knobs_reach_ray_only_when_given() -> None:
    tuned = RayServeOptions(
        max_replicas=2, upscale_delay_s=3, metrics_interval_s=0.5, look_back_period_s=2
    ).autoscaling_config()
    assert tuned is not None
    assert (tuned["metrics_interval_s"], tuned["look_back_period_s"]) == (0.5, 2.0)
    # unset, Ray's own defaults (10 s / 30 s) apply and Ray's deprecation warning stays quiet
    plain = RayServeOptions(max_replicas=2).autoscaling_config()
    assert plain is not None
    assert "metrics_interval_s" not in plain and "look_back_period_s" not in plain


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"num_replicas": 2, "metrics_interval_s": 1}, "tune autoscaling"),
        ({"max_replicas": 2, "metrics_interval_s": 0}, "metrics_interval_s"),
        ({"max_replicas": 2, "metrics_interval_s": 2, "look_back_period_s": 2}, "must exceed"),
        ({"max_replicas": 2, "look_back_period_s": 5}, "metrics_interval_s=10 (Ray's default)"),
    ],
)
def test_metrics_knobs_are_validated(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError) as info:
        RayServeOptions(**kwargs)
    assert named in str(info.value)


def test_serve_run_accepts_the_metrics_knobs_as_arguments() -> None:
    with pytest.raises(ConfigurationError, match="look_back_period_s=1 must exceed"):
        app_builder({"max_replicas": "2", "metrics_interval_s": "1", "look_back_period_s": "1"})
