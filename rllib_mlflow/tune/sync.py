"""`rllib-mlflow sync`: register what a Tune experiment left unregistered.

Two sources: the journal's pending entries (checkpoints the callback queued but could not
finish, e.g. on Ctrl-C or a crash; their staged copies survive Tune's `num_to_keep`), and
the checkpoints on disk under each trial directory. Registration is idempotent (one
version per trial, training iteration and module), so running sync again is harmless.
`register_path` (`rllib-mlflow register`) backfills any folder of checkpoints the same way.

Neither stops at a checkpoint it cannot read or register: each is reported, with its path,
a one-line cause and the Ray release that wrote it, and the others are registered.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rllib_mlflow.errors import CheckpointError, RegistryError
from rllib_mlflow.export import validate_formats
from rllib_mlflow.mlflow.client import check_tracking_server, client
from rllib_mlflow.redaction import get_logger, mask_urls
from rllib_mlflow.register.registration import register_task
from rllib_mlflow.register.task import RegistrationTask
from rllib_mlflow.scratch import sweep_orphaned_exports
from rllib_mlflow.tune.archive import MAX_DEPTH, WHAT_IS_RECOGNISED, written_by
from rllib_mlflow.tune.journal import FAILED, REGISTERED, Journal
from rllib_mlflow.tune.processes import Outcome, attempt, registered_in_processes
from rllib_mlflow.tune.staging import remove_registered_copies
from rllib_mlflow.tune.trial_dirs import Failures, tasks_on_disk, tasks_under, trial_run
from rllib_mlflow.validation import validate_registered_model_name

logger = get_logger(__name__)

# Called with (done, total, what) before the first and after each checkpoint.
Progress = Callable[[int, int, str], None]

# A checkpoint written this recently may still be in Tune's hands.
_SETTLING_S = 30.0


@dataclass
class SyncReport:
    registered: list[str] = field(default_factory=list)  # "trial/iteration" keys
    failed: Failures = field(default_factory=dict)  # checkpoint path: one-line cause
    written_by: dict[str, str] = field(default_factory=dict)  # failed path: its Ray version
    freed_bytes: int = 0  # staged copies and orphaned exports removed

    def summary(self) -> str:
        done, failed = len(self.registered), len(self.failed)
        line = f"{done} checkpoint(s) registered or already there, {failed} failed"
        if self.freed_bytes:
            line += f"; {self.freed_bytes / 1e6:.1f} MB of staged copies and exports removed"
        return line


def sync_experiment(
    experiment_dir: str,
    registered_model_name: str | None = None,
    *,
    tracking_uri: str | None = None,
    verify: bool = True,
    video: bool = False,
    formats: tuple[str, ...] | None = None,
    on_progress: Progress | None = None,
) -> SyncReport:
    """Register every pending journal entry and every checkpoint on disk of an experiment;
    `formats`: those of each trial's journal (else all) when None."""
    _require_directory(experiment_dir, "an experiment directory (e.g. ~/ray_results/my-exp)")
    journal = Journal(experiment_dir)
    journal.check_writable()  # progress must be recorded, or the next sync redoes it all
    entries = journal.entries()
    name = registered_model_name or next(
        (
            e["registered_model_name"]
            for e in entries
            if isinstance(e.get("registered_model_name"), str)
        ),
        None,
    )
    if name is None:
        raise RegistryError(
            f"{experiment_dir} has no rllib-mlflow journal naming a registered model; pass "
            "--name NAME to register its checkpoints."
        )
    validate_registered_model_name(name)
    check_tracking_server(client(tracking_uri))
    settings = chosen_settings(name, verify=verify, video=video, formats=formats)
    tasks, failed = {}, {}
    for entry in journal.pending():  # a replay the callback was asked for is recorded too
        video_too = {"video": video or bool(entry.get("video"))}
        tasks[entry["key"]] = RegistrationTask.from_json(entry, **(settings | video_too))
    for task in tasks_on_disk(Path(experiment_dir), entries, tracking_uri, settings, failed):
        tasks.setdefault(task.key, task)
    tasks = _resolve_runs(tasks, Path(experiment_dir).name, tracking_uri)
    report = _register_all(tasks, tracking_uri, journal, on_progress, failed=failed)
    report.freed_bytes = (
        remove_registered_copies(Path(experiment_dir), journal.registered_checkpoints())
        + sweep_orphaned_exports()
    )
    return report


def _resolve_runs(
    tasks: dict[str, RegistrationTask], experiment_name: str, tracking_uri: str | None
) -> dict[str, RegistrationTask]:
    """Journal entries carry no run id (the callback resolves it when it submits the task):
    find the trial's run by its tag, or create one."""
    runs: dict[str | None, tuple[str, bool]] = {}
    resolved = {}
    for key, task in tasks.items():
        if not task.run_id:
            if task.trial_id not in runs:
                trial_dir = Path(task.trial_name or task.trial_id or experiment_name)
                runs[task.trial_id] = trial_run(
                    task.trial_id, trial_dir, experiment_name, tracking_uri
                )
            run_id, existed = runs[task.trial_id]
            task = task.replace(run_id=run_id, metrics_logged=existed and task.metrics_logged)
        resolved[key] = task
    return resolved


def register_path(
    path: str,
    registered_model_name: str,
    *,
    tracking_uri: str | None = None,
    verify: bool = True,
    video: bool = False,
    formats: tuple[str, ...] | None = None,
    workers: int = 1,
    on_progress: Progress | None = None,
) -> SyncReport:
    """Backfill: register the checkpoints under `path` (see `archive`: an archive of
    `algo.save()` directories, Tune experiments or trials, or one checkpoint), `workers` at
    a time, each in its own process when more than one.

    Iterations and metrics come from each trial's result.json, else from the checkpoint;
    runs are the trials' runs when the callback logged them, else one new run per folder of
    checkpoints, in an experiment named after the folder above. Idempotent with what the
    callback registers. `formats`: those of each trial's journal (else all) when None.
    """
    validate_registered_model_name(registered_model_name)
    _require_directory(path, "an archive of checkpoints, a Tune experiment or trial directory")
    if workers < 1:
        raise ValueError(f"workers must be 1 or more, not {workers!r}.")
    check_tracking_server(client(tracking_uri))
    settings = chosen_settings(registered_model_name, verify=verify, video=video, formats=formats)
    failed: Failures = {}
    tasks = tasks_under(Path(path), tracking_uri, settings, failed)
    if not tasks and not failed:
        raise RegistryError(
            f"No RLlib checkpoints found under {path} (up to {MAX_DEPTH} levels down: "
            f"{WHAT_IS_RECOGNISED})."
        )
    tasks_by_key = {t.key: t for t in tasks}
    return _register_all(
        tasks_by_key, tracking_uri, on_progress=on_progress, failed=failed, workers=workers
    )


def chosen_settings(
    registered_model_name: str,
    *,
    verify: bool,
    video: bool,
    formats: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The `RegistrationSettings` fields (documented there) that a `sync` or `register`
    call chooses, over those its journal recorded for each trial."""
    chosen = {"registered_model_name": registered_model_name, "verify": verify, "video": video}
    return chosen if formats is None else chosen | {"formats": validate_formats(formats)}


def _require_directory(path: str, what: str) -> None:
    if not Path(path).is_dir():
        problem = "does not exist" if not Path(path).exists() else "is not a directory"
        raise RegistryError(f"{path} {problem}: pass {what}.")


def _register_all(
    tasks: dict[str, RegistrationTask],
    tracking_uri: str | None,
    journal: Journal | None = None,
    on_progress: Progress | None = None,
    *,
    failed: Failures | None = None,
    workers: int = 1,
) -> SyncReport:
    """Register every task, past any that fails; `failed`: the checkpoints that could not
    become tasks, reported with the others."""
    report = SyncReport(failed=dict(failed or {}))
    report.written_by = {path: ray for path in report.failed if (ray := written_by(path))}
    progress = on_progress or (lambda done, total, key: None)
    # Trial by trial, in the order of their iterations (not "1, 10, 2").
    ordered = sorted(tasks.values(), key=lambda t: (t.trial_id or "", t.training_iteration or 0))
    progress(0, len(ordered), "")
    for done, (task, outcome) in enumerate(_outcomes(ordered, tracking_uri, workers), start=1):
        if isinstance(outcome, str):
            path = mask_urls(task.checkpoint_uri)
            report.failed[path] = outcome
            if ray := written_by(task.checkpoint):
                report.written_by[path] = ray
            if journal is not None:
                journal.record(FAILED, task.key, error=outcome)
        else:
            if journal is not None:
                journal.record(REGISTERED, task.key, versions=outcome)
            report.registered.append(task.key)
        progress(done, len(ordered), task.key)
    return report


def _outcomes(
    tasks: list[RegistrationTask], tracking_uri: str | None, workers: int
) -> Iterator[tuple[RegistrationTask, Outcome]]:
    """Each task with its versions or why it failed, as they finish: one after another in
    this process, or `workers` at a time in their own processes."""
    if workers > 1:
        yield from registered_in_processes(tasks, _register_settled, tracking_uri, workers)
        return
    for number, task in enumerate(tasks, start=1):
        logger.info("[%d/%d] registering %s", number, len(tasks), task.key)
        yield task, attempt(_register_settled, task, tracking_uri)


def _register_settled(task: RegistrationTask, tracking_uri: str | None) -> list[dict[str, str]]:
    """`register_task`, with a second chance for a checkpoint read while it changed: a staged
    copy the callback deleted once it registered it (then the original is read), or one
    Tune is still writing (a sync while training runs)."""
    try:
        return register_task(task, tracking_uri)
    except Exception as error:
        staged_copy_gone = task.checkpoint_uri != task.checkpoint and (
            isinstance(error, CheckpointError) or not Path(task.checkpoint).exists()
        )  # the callback deletes it once registered, also while sync reads it
        if staged_copy_gone:
            return register_task(task.replace(checkpoint=task.checkpoint_uri), tracking_uri)
        if not isinstance(error, CheckpointError):
            raise
        if time.time() - _last_write(task.checkpoint) > _SETTLING_S:
            raise
        logger.info("%s looks incomplete and was just written; retrying", task.checkpoint)
        time.sleep(_SETTLING_S / 10)
        return register_task(task, tracking_uri)


def _last_write(checkpoint: str) -> float:
    """When any file of a local checkpoint directory last changed (0 for remote ones)."""
    if not os.path.isdir(checkpoint):
        return 0.0
    times = [os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(checkpoint) for f in fs]
    return max(times, default=os.path.getmtime(checkpoint))
