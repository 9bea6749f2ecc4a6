"""What a Tune experiment, or any folder of checkpoints, left on disk, as registration
tasks: one per checkpoint of each trial directory (or other folder of checkpoints), with its
metrics from result.json, its trial id (from result.json, else the journal, else the
directory's name) and its trial's MLflow run (found, or made): one run per folder.

A checkpoint that cannot be read here is not a task: it goes into `failed` (its path: a
one-line cause), so that one bad checkpoint never stops the others.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rllib_mlflow import names
from rllib_mlflow.console import one_line
from rllib_mlflow.mlflow.client import client
from rllib_mlflow.redaction import get_logger
from rllib_mlflow.register.metrics import result_metrics
from rllib_mlflow.register.task import RegistrationTask
from rllib_mlflow.tune.archive import find_checkpoints
from rllib_mlflow.tune.journal import Journal, TrialIds

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = get_logger(__name__)

# Checkpoints that could not become tasks: {resolved path: one-line cause}.
Failures = dict[str, str]

# The settings a journal entry of the callback carries over to the trial's other checkpoints.
_TRIAL_SETTINGS = ("formats", "best_metric", "best_mode", "log_rllib_checkpoint")


class JournaledTrials:
    """What a journal says of each trial: its run, once one was made, and the callback's
    settings. Those are one for the whole experiment (one callback), so a trial whose
    entries lack them (none of its checkpoints was queued yet) takes its siblings'."""

    def __init__(self, entries: list[dict[str, Any]]):
        self.trials: dict[str, dict[str, Any]] = {}
        self.settings: dict[str, Any] = {}
        for entry in entries:
            if not entry.get("trial_id"):
                continue
            said = {k: v for k, v in entry.items() if v is not None}
            self.trials.setdefault(entry["trial_id"], {}).update(said)
            self.settings.update({k: said[k] for k in _TRIAL_SETTINGS if k in said})

    def of(self, trial_id: str) -> dict[str, Any]:
        return self.settings | self.trials.get(trial_id, {})


def tasks_on_disk(
    experiment: Path,
    entries: list[dict[str, Any]],
    tracking_uri: str | None,
    settings: dict[str, Any],
    failed: Failures,
) -> list[RegistrationTask]:
    """A task per checkpoint of each trial directory of `experiment`."""
    journaled = JournaledTrials(entries)
    trial_ids = TrialIds(entries)
    tasks = []
    # Not only trial directories with a result.json: Tune copies it there later than the
    # checkpoints, which a crash may leave without one.
    for trial_dir in sorted({c.parent for c in experiment.glob("*/checkpoint_*")}):
        trial_id = trial_ids.of(trial_dir.name)
        tasks += _trial_tasks(
            trial_dir, experiment.name, journaled, tracking_uri, settings, failed, trial_id=trial_id
        )
    return tasks


def tasks_under(
    root: Path, tracking_uri: str | None, settings: dict[str, Any], failed: Failures
) -> list[RegistrationTask]:
    """A task per checkpoint `archive.find_checkpoints` finds under `root` (or `root` itself),
    one run per folder holding checkpoints: a Tune trial's as `tasks_on_disk` gives it (with
    its experiment's journal), any other folder's found by a trial id made from its name.
    Two checkpoints of one trial at the same iteration give one task (the first)."""
    folders: dict[Path, list[Path]] = {}
    for checkpoint in find_checkpoints(root):
        folders.setdefault(checkpoint.parent, []).append(checkpoint)
    names_seen = Counter(folder.name for folder in folders)
    journals: dict[Path, tuple[JournaledTrials, TrialIds]] = {}
    tasks: dict[str, RegistrationTask] = {}
    for folder, checkpoints in sorted(folders.items()):
        journaled, trial_ids = _journal_of(folder.parent, journals)
        trial_id = trial_ids.of(folder.name)
        if trial_id is None and names_seen[folder.name] > 1:  # e.g. ppo/seed_0, sac/seed_0
            trial_id = _directory_trial_id(folder, relative_to=root)
        found = _trial_tasks(
            folder, _experiment_name(folder, root), journaled, tracking_uri, settings, failed,
            checkpoints, trial_id,
        )  # fmt: skip
        for task in found:
            if task.key in tasks:
                logger.warning(
                    "%s: same trial and training iteration as %s (one version per trial and "
                    "iteration); not registered again.", task.checkpoint, tasks[task.key].checkpoint
                )  # fmt: skip
            tasks.setdefault(task.key, task)
    return list(tasks.values())


def _journal_of(
    experiment: Path, read: dict[Path, tuple[JournaledTrials, TrialIds]]
) -> tuple[JournaledTrials, TrialIds]:
    """What a folder's journal says of its trials, and their ids (nothing for a folder
    without one), read once per folder: a sweep's journal is long, with a folder per trial."""
    if experiment not in read:
        entries = Journal(experiment).entries()
        read[experiment] = JournaledTrials(entries), TrialIds(entries)
    return read[experiment]


def _experiment_name(folder: Path, root: Path) -> str:
    """Where a new run of `folder` goes: the experiment named after the folder above it (a
    Tune trial's experiment, an archive's), or after `root` when `root` is an archive
    holding checkpoints directly."""
    is_archive_itself = folder == root and not (folder / "result.json").exists()
    return (folder if is_archive_itself else folder.parent).resolve().name


def _trial_tasks(
    trial_dir: Path,
    experiment_name: str,
    journaled: JournaledTrials,
    tracking_uri: str | None,
    settings: dict[str, Any],
    failed: Failures,
    checkpoints: Iterable[Path] | None = None,
    trial_id: str | None = None,
) -> list[RegistrationTask]:
    """A task per checkpoint of one Tune trial directory, with metrics from result.json;
    the trial's id from there, else `trial_id` (the journal's: result.json lags behind
    while the run is live), else one made from the directory's name."""
    results = (
        _read_results(trial_dir / "result.json") if (trial_dir / "result.json").exists() else {}
    )
    trial_id = (
        next((str(r["trial_id"]) for r in results.values() if r.get("trial_id")), None)
        or trial_id
        or _directory_trial_id(trial_dir)
    )
    checkpoints = sorted(trial_dir.glob("checkpoint_*")) if checkpoints is None else checkpoints
    iterations = _iterations(checkpoints, failed)
    if not iterations:
        return []
    known = journaled.of(trial_id)
    run_id, run_existed = known.get("run_id"), True
    if run_id is None:
        run_id, run_existed = trial_run(trial_id, trial_dir, experiment_name, tracking_uri)
    tasks = []
    for checkpoint, iteration in iterations.items():
        facts = {
            "checkpoint": str(checkpoint),
            "checkpoint_uri": str(checkpoint.resolve()),
            "training_iteration": iteration,
            "metrics": result_metrics(results.get(iteration, {})),
            "run_id": run_id,
            "trial_id": trial_id,
            "trial_name": known.get("trial_name") or _trial_name(trial_dir.name, trial_id),
            "metrics_logged": run_existed,  # the logger put them in the run
        }
        trial_settings = {k: known[k] for k in _TRIAL_SETTINGS if k in known}
        tasks.append(RegistrationTask.from_json(facts | trial_settings | settings))
    return tasks


def _iterations(checkpoints: Iterable[Path], failed: Failures) -> dict[Path, int]:
    """The training iteration each checkpoint recorded; those that cannot say go to
    `failed`, so that the others are still registered."""
    from rllib_mlflow.rllib.layout import read_training_iteration

    iterations = {}
    for checkpoint in checkpoints:
        try:
            iteration = read_training_iteration(str(checkpoint))
        except Exception as error:  # a truncated pickle, a missing file, code moved away
            failed[str(checkpoint.resolve())] = one_line(error)
            continue
        if iteration is None:  # a Policy or RLModule checkpoint, or one cut short
            failed[str(checkpoint.resolve())] = (
                "records no training iteration (no algorithm_state.pkl); register it with "
                "rllib_mlflow.log_checkpoint(path, NAME, training_iteration=N)."
            )
            continue
        iterations[checkpoint] = iteration
    return iterations


def _directory_trial_id(trial_dir: Path, relative_to: Path | None = None) -> str:
    """A stable id for a trial directory whose result.json names none, so that two such
    trials never share journal keys or versions: from its name (the same wherever the
    archive is, and whether it is registered as a whole or a checkpoint at a time), or its
    path under `relative_to` where two folders of the archive share a name."""
    name = trial_dir.name if relative_to is None else trial_dir.relative_to(relative_to).as_posix()
    return "dir-" + hashlib.sha256(name.encode()).hexdigest()[:8]


def _trial_name(directory_name: str, trial_id: str | None) -> str:
    # Tune names trial dirs "<trainable>_<env>_<trial id>_<index>_<params>_<date>"; the
    # callback records str(trial), the part up to the trial id.
    if trial_id and trial_id in directory_name:
        return directory_name[: directory_name.index(trial_id) + len(trial_id)]
    return directory_name


def _read_results(result_file: Path) -> dict[int, dict[str, Any]]:
    results = {}
    for line in result_file.read_text().splitlines():
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "training_iteration" in result:
            results[int(result["training_iteration"])] = result
    return results


def trial_run(
    trial_id: str | None, trial_dir: Path, experiment_name: str, tracking_uri: str | None
) -> tuple[str, bool]:
    """The trial's run from an earlier session (True), else a new run (False)."""
    from rllib_mlflow.mlflow.runs import trial_run_lock

    mlflow_client = client(tracking_uri)
    with trial_run_lock(mlflow_client, trial_id or trial_dir.name):
        return _find_or_create_run(mlflow_client, trial_id, trial_dir, experiment_name)


def _find_or_create_run(
    mlflow_client: MlflowClient, trial_id: str | None, trial_dir: Path, experiment_name: str
) -> tuple[str, bool]:
    from rllib_mlflow.mlflow.runs import experiment_id

    experiment_ids = [e.experiment_id for e in mlflow_client.search_experiments()]
    if trial_id:
        runs = mlflow_client.search_runs(
            experiment_ids, f"tags.`{names.RUN_TAG_TRIAL_ID}` = '{trial_id}'", max_results=1
        )
        if runs:
            return runs[0].info.run_id, True
    tags = {names.RUN_TAG_TRIAL_ID: trial_id or "", names.RUN_TAG_TRIAL_NAME: trial_dir.name}
    run = mlflow_client.create_run(
        experiment_id(mlflow_client, experiment_name), tags=tags, run_name=trial_dir.name
    )
    mlflow_client.set_terminated(run.info.run_id)
    return run.info.run_id, False
