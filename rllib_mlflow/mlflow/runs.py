"""MLflow runs for Tune trials: one run per trial, its params, metrics, artifacts and status.

Used by the export worker process (see `rllib_mlflow.tune.worker`), never by the Tune driver,
which only sends it `TrialInfo`s and JSON-ready params and metrics.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from rllib_mlflow import names
from rllib_mlflow.locks import host_lock
from rllib_mlflow.mlflow.registry_client import RegistryClient
from rllib_mlflow.redaction import flat_params

if TYPE_CHECKING:
    from mlflow import MlflowClient

_PARAM_VALUE_LIMIT = 6000
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000


def redact_params(config: Mapping[str, Any]) -> dict[str, str]:
    """The flattened config as MLflow params, with every secret masked (see `redaction`)."""
    return {k[:250]: v[:_PARAM_VALUE_LIMIT] for k, v in flat_params(config).items()}


def driver_context_tags(source: str) -> dict[str, str]:
    """The tags MLflow's fluent `start_run` adds (user, source name and type, git commit),
    as seen from the driver's script `source` rather than from this worker. `mlflow.user` is
    the system user: MLflow would put MLFLOW_TRACKING_USERNAME there, a credential."""
    import getpass
    import sys

    from mlflow.tracking.context.registry import resolve_tags

    argv0, sys.argv[0] = sys.argv[0], source
    try:
        tags = resolve_tags()
    finally:
        sys.argv[0] = argv0
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (e.g. in a container)
        tags.pop("mlflow.user", None)
    return tags


def trial_run_lock(mlflow_client: RegistryClient, trial_id: str) -> AbstractContextManager[None]:
    """The host lock around finding or creating a trial's run (callback and `sync`)."""
    return host_lock(mlflow_client.tracking_uri, "trial run", trial_id)


@dataclass(frozen=True)
class TrialInfo:
    """What the runs need of a Tune trial (the trial itself keeps changing)."""

    trial_id: str
    name: str
    experiment_dir_name: str

    @classmethod
    def of(cls, trial: Any) -> TrialInfo:  # a ray.tune Trial
        return cls(trial.trial_id, str(trial), trial.experiment_dir_name)

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def experiment_id(mlflow_client: RegistryClient, name: str) -> str:
    """The id of experiment `name`, created if it does not exist yet."""
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name)
    except Exception:
        experiment = mlflow_client.get_experiment_by_name(name)  # created meanwhile?
        if experiment is None:
            raise  # no: the refusal itself is the error to report
        return experiment.experiment_id


def log_metrics(
    mlflow_client: MlflowClient,
    run_id: str,
    metrics: Mapping[str, float],
    step: int,
    timestamp_ms: int | None = None,
) -> None:
    """Log `metrics` at `step`, stamped `timestamp_ms` (default: now). MLflow stores a metric
    with the same key, value, step and time once, so logging a batch again adds nothing."""
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    log_metric_batches(
        mlflow_client, run_id, [Metric(k, v, stamp, step) for k, v in metrics.items()]
    )


def log_metric_batches(mlflow_client: MlflowClient, run_id: str, metrics: list) -> None:
    """Log MLflow `Metric`s in batches of `log_batch`'s limit."""
    for start in range(0, len(metrics), _METRICS_PER_BATCH):
        mlflow_client.log_batch(run_id, metrics=metrics[start : start + _METRICS_PER_BATCH])


class TrialRuns:
    """The MLflow run of each trial; continues a restored trial's run."""

    def __init__(
        self,
        mlflow_client: MlflowClient,
        experiment_name: str | None,
        tags: dict[str, Any],
        *,
        experiment_id: str | None = None,
        source: str = "",
    ):
        self.client = mlflow_client
        self.experiment_name = experiment_name
        self.experiment_id = experiment_id
        self.tags = tags
        self.source = source
        self._runs: dict[str, str] = {}
        self._open: set[str] = set()

    def start(self, trial: TrialInfo) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        experiment = self.experiment_id or experiment_id(
            self.client, self.experiment_name or trial.experiment_dir_name
        )
        with trial_run_lock(self.client, trial.trial_id):  # `sync` may be looking for it
            run_id = self._existing_run(experiment, trial.trial_id)
            if run_id is None:
                tags = {
                    **driver_context_tags(self.source),
                    **self.tags,
                    names.RUN_TAG_TRIAL_NAME: trial.name,
                    names.RUN_TAG_TRIAL_ID: trial.trial_id,
                }
                run = self.client.create_run(experiment, tags=tags, run_name=trial.name)
                run_id = run.info.run_id
            else:
                self.client.update_run(run_id, status="RUNNING")
        self._runs[trial.trial_id] = run_id
        self._open.add(trial.trial_id)
        return run_id

    def run_id(self, trial: TrialInfo) -> str:
        return self._runs.get(trial.trial_id) or self.start(trial)

    def log_params(self, trial: TrialInfo, params: Mapping[str, str]) -> None:
        """Log params not logged yet (a restored trial keeps its first ones)."""
        from mlflow.entities import Param

        run_id = self.run_id(trial)
        existing = self.client.get_run(run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for start in range(0, len(new), _PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=new[start : start + _PARAMS_PER_BATCH])

    def log_metrics(
        self,
        trial: TrialInfo,
        metrics: Mapping[str, float],
        step: int,
        timestamp_ms: int | None = None,
    ) -> None:
        log_metrics(self.client, self.run_id(trial), metrics, step, timestamp_ms)

    def log_artifacts(self, trial: TrialInfo, path: str) -> None:
        self.client.log_artifacts(self.run_id(trial), path)

    def end(self, trial: TrialInfo, status: str) -> None:
        if trial.trial_id in self._open:
            self.client.set_terminated(self._runs[trial.trial_id], status=status)
            self._open.discard(trial.trial_id)

    def _existing_run(self, experiment: str, trial_id: str) -> str | None:
        runs = self.client.search_runs(
            [experiment], f"tags.`{names.RUN_TAG_TRIAL_ID}` = '{trial_id}'", max_results=1
        )
        return runs[0].info.run_id if runs else None
