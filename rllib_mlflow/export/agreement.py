"""How often a quantized export acts like RLlib: the measure that replaces exact parity for
`tflite_int8`, whose int8 arithmetic cannot reproduce float32 actions bit for bit.

Discrete actions agree when identical (every component, for MultiDiscrete). A continuous
action agrees when every dimension is within `CONTINUOUS_AGREEMENT` of the action range
(high - low) of RLlib's; the report also gives the largest and the 99th percentile error,
relative to that range.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rllib_mlflow.rllib.snapshot import ActionRule, PolicySnapshot

DEFAULT_MIN_AGREEMENT = 0.99
CONTINUOUS_AGREEMENT = 0.01  # of the action range
AGREEMENT_OBSERVATIONS = 1000


def action_agreement(want: np.ndarray, got: np.ndarray, rule: ActionRule) -> dict[str, Any]:
    """Compare actions `got` with RLlib's `want` (one row per observation)."""
    want = np.asarray(want)
    got = np.asarray(got).reshape(want.shape)
    rows = want.reshape(len(want), -1).astype(np.float64)
    actual = got.reshape(len(got), -1).astype(np.float64)
    if rule.is_discrete:
        agree = np.all(rows == actual, axis=1)
        return {"agreement": float(np.mean(agree)), "disagreements": int(np.sum(~agree))}
    error = np.abs(rows - actual) / _action_range(rule, rows.shape[1])
    worst = error.max(axis=1)
    agree = worst <= CONTINUOUS_AGREEMENT
    return {
        "agreement": float(np.mean(agree)),
        "disagreements": int(np.sum(~agree)),
        "max_relative_error": float(worst.max(initial=0.0)),
        "p99_relative_error": float(np.percentile(worst, 99)) if worst.size else 0.0,
        "relative_to": "the action range (high - low); 1 where a bound is infinite",
        "agrees_within": CONTINUOUS_AGREEMENT,
    }


def _action_range(rule: ActionRule, width: int) -> np.ndarray:
    if rule.low is None or rule.high is None:
        return np.ones(width)
    span = (np.asarray(rule.high, np.float64) - np.asarray(rule.low, np.float64)).reshape(-1)
    return np.where(np.isfinite(span) & (span > 0), span, 1.0)


def describe(report: dict[str, Any]) -> str:
    """One line for logs, refusals and the model card."""
    share = f"{100 * report['agreement']:.1f}% of {report['observations']} observations"
    line = f"acts like RLlib on {share} ({report['source']})"
    if "p99_relative_error" in report:
        line += (
            f"; error p99 {100 * report['p99_relative_error']:.2f}%, max "
            f"{100 * report['max_relative_error']:.2f}% of the action range"
        )
    return line


def measure_int8_agreement(
    snapshot: PolicySnapshot, export_dir: str, min_agreement: float, act: Any, seed: int = 1000
) -> dict[str, Any]:
    """`tflite_int8`'s actions against RLlib's on observations it was not calibrated on
    (episodes `act`, the float export, plays in the env from reset seed `seed`, else samples
    of the observation space)."""
    from rllib_mlflow.export.litert import met_observations
    from rllib_mlflow.export.parity import format_runner, raw_observations
    from rllib_mlflow.rllib.reference import rllib_reference

    observations, source = met_observations(snapshot, act, AGREEMENT_OBSERVATIONS, seed)
    raw = observations  # a Box observation is played in the env as the graph takes it
    if snapshot.flatten_observations or snapshot.observation_inputs is not None:
        raw = raw_observations(snapshot, AGREEMENT_OBSERVATIONS, seed)  # what was sampled
    want, _ = rllib_reference(snapshot)(raw)
    feeds = observations if isinstance(observations, dict) else {"observations": observations}
    got = format_runner("tflite_int8", export_dir, snapshot)(feeds)["actions"]
    report = {
        "observations": AGREEMENT_OBSERVATIONS,
        "source": source,
        "reference": "RLlib's own policy, explore=False",
        **action_agreement(want, got, snapshot.action_rule),
        "min_agreement": min_agreement,
    }
    report["passed"] = report["agreement"] >= min_agreement
    return report
