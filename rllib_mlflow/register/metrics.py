"""Tune/RLlib results as MLflow metrics: flattened, named as MLflow accepts, as Ray logs them."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from rllib_mlflow.redaction import mask_urls

DEFAULT_BEST_METRIC = "episode_return_mean"
# Metric names as Tune flattens RLlib results, and the short names version tags use.
TAGGED_METRICS = {
    "env_runners/episode_return_mean": "episode_return_mean",
    "env_runners/num_env_steps_sampled_lifetime": "num_env_steps_sampled_lifetime",
    "num_env_steps_sampled_lifetime": "num_env_steps_sampled_lifetime",
    "episode_return_mean": "episode_return_mean",
    "evaluation/env_runners/episode_return_mean": "evaluation_episode_return_mean",
}


def flatten_metrics(
    results: Mapping[str, Any], prefix: str = "", *, finite_only: bool = True
) -> dict[str, float]:
    """Numeric leaves of a (nested) result dict, keyed 'a/b/c' as Tune flattens them.

    With `finite_only=False`, every leaf `float()` accepts, as Ray's MLflow callback logs
    them: booleans as 0/1, NaN and infinities, numeric strings."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, f"{name}/", finite_only=finite_only))
            continue
        if finite_only and (isinstance(value, bool | str) or not hasattr(value, "__float__")):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number) or not finite_only:
            flat[name] = number
    return flat


def metric_key(key: str) -> str:
    """A result key as an MLflow metric name: unsupported characters become '_'."""
    return re.sub(r"[^\w\-. /]", "_", mask_urls(key))[:250]


def result_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of a Tune/RLlib result as Ray's MLflow callback logs them, flattened and
    named for MLflow; the config goes to params only."""
    metrics = {k: v for k, v in result.items() if k not in ("config", "hist_stats")}
    return {metric_key(k): v for k, v in flatten_metrics(metrics, finite_only=False).items()}


def find_metric(metrics: Mapping[str, float], name: str) -> float | None:
    """A metric by full name ('env_runners/episode_return_mean') or by its last part."""
    if name in metrics:
        return metrics[name]
    matches = [v for k, v in metrics.items() if k.rsplit("/", 1)[-1] == name]
    return matches[0] if len(matches) == 1 else None
