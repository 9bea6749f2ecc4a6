"""The evaluation plot: what each version returned, beside what training reported."""

from __future__ import annotations

from typing import Any

import numpy as np


def plot_returns(
    evaluations: list,
    name: str,
    env_id: str,
    path: str,
    best_version: int | None = None,
) -> None:
    """Evaluation return (mean ± std) and training return against training iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=110)
    by_trial: dict[Any, list] = {}
    for evaluation in evaluations:
        by_trial.setdefault(evaluation.trial, []).append(evaluation)
    for trial, items in sorted(by_trial.items(), key=lambda kv: str(kv[0])):
        items = sorted(items, key=lambda e: e.training_iteration or 0)
        x = [e.training_iteration or 0 for e in items]
        label = f" ({trial})" if len(by_trial) > 1 else ""
        axes.errorbar(
            x,
            [e.mean for e in items],
            yerr=[np.std(e.returns) for e in items],
            marker="o",
            capsize=3,
            label=f"evaluation return{label}",
        )
        trained = [
            (xi, e.training_return) for xi, e in zip(x, items) if e.training_return is not None
        ]
        if trained:
            axes.plot(*zip(*trained), linestyle="--", marker=".", label=f"training return{label}")
    for evaluation in evaluations:
        if evaluation.version == best_version:
            axes.scatter(
                [evaluation.training_iteration or 0],
                [evaluation.mean],
                marker="*",
                s=300,
                color="gold",
                edgecolor="black",
                zorder=5,
                label=f"@best (v{best_version})",
            )
    axes.set_xlabel("training iteration")
    axes.set_ylabel("episode return")
    axes.set_title(f"{name} on {env_id}: {len(evaluations[0].returns)} episodes per version")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
