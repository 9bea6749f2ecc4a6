"""An append-only record of the checkpoints a run asked to register, and what became of them.

One JSON object per line in `<experiment dir>/rllib_mlflow_journal.jsonl`. Lines are
flushed and fsynced as they are written, so the record survives Ctrl-C, SIGKILL and
crashes; `rllib-mlflow sync` re-reads it and registers whatever is still pending. A line
that is not an entry (cut short by SIGKILL, or edited by hand) is reported with its line
number and skipped; its checkpoint is still found on disk by `sync`.

A `trial` line, written when a trial starts, names the trial's directory and id: while a
run is live Tune copies result.json to the experiment folder only every `sync_period`
(5 minutes by default), so a `sync` meanwhile finds checkpoints whose result.json names no
trial yet, and must still give them the ids the callback gives them.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rllib_mlflow.errors import RLlibMLflowError
from rllib_mlflow.redaction import get_logger, redact

logger = get_logger(__name__)

JOURNAL_FILE = "rllib_mlflow_journal.jsonl"
QUEUED, REGISTERED, FAILED, TRIAL = "queued", "registered", "failed", "trial"
# What a queued entry must hold for `sync` to register it, and of which type.
_QUEUED_FIELDS = {"checkpoint": str, "checkpoint_uri": str, "training_iteration": int}


class JournalError(RLlibMLflowError):
    """The journal cannot be written, so progress could not be recorded."""


class Journal:
    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / JOURNAL_FILE
        self._lock = threading.Lock()
        self.skipped: list[tuple[int, str]] = []  # (line number, why) of the last read

    def record(self, event: str, task_key: str, **fields: Any) -> None:
        entry = {"event": event, "key": task_key, "time": time.time(), **redact(fields)}
        line = json.dumps(entry, default=str) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as stream:
                stream.write(line)
                stream.flush()
                os.fsync(stream.fileno())

    def check_writable(self) -> None:
        """Refuse, before any work, a journal whose progress could not be recorded."""
        try:  # a real attempt: root passes os.access() checks on read-only mounts too
            if self.path.exists():
                open(self.path, "a").close()
            else:
                tempfile.TemporaryFile(dir=self.path.parent).close()
        except OSError as error:
            raise JournalError(
                f"Cannot write the journal {self.path} ({error.strerror}). Make it and its "
                "folder writable (e.g. chmod u+w, or a read-write mount), or run as the user "
                "who owns the experiment, so that what gets registered is recorded. Nothing "
                "was registered."
            ) from error

    def entries(self) -> list[dict[str, Any]]:
        """The valid entries; the others are reported and listed in `skipped`."""
        self.skipped = []
        if not self.path.exists():
            return []
        entries = []
        with open(self.path, errors="replace") as stream:
            for number, line in enumerate(stream, start=1):
                entry, problem = _parse(line)
                if problem:
                    self.skipped.append((number, problem))
                    logger.warning(
                        "rllib-mlflow: %s line %d skipped: %s", self.path, number, problem
                    )
                else:
                    entries.append(entry)
        return entries

    def record_trial(self, trial_id: str, trial_name: str, directory_name: str) -> None:
        """That the trial `trial_id` keeps its checkpoints in `directory_name`."""
        self.record(TRIAL, trial_id, trial_name=trial_name, directory=directory_name)

    def registered_checkpoints(self) -> list[str]:
        """The checkpoint paths (staged copies, where staged) of the tasks registered."""
        latest: dict[str, str] = {}
        queued: dict[str, str] = {}
        for entry in self.entries():
            if entry["event"] != TRIAL:
                latest[entry["key"]] = entry["event"]
            if entry["event"] == QUEUED:
                queued[entry["key"]] = entry["checkpoint"]
        return [queued[k] for k, event in latest.items() if event == REGISTERED and k in queued]

    def pending(self) -> list[dict[str, Any]]:
        """Queued tasks with no `registered` line (failed ones are retried too)."""
        latest: dict[str, dict[str, Any]] = {}
        queued: dict[str, dict[str, Any]] = {}
        for entry in self.entries():
            if entry["event"] == TRIAL:
                continue
            latest[entry["key"]] = entry
            if entry["event"] == QUEUED:
                queued[entry["key"]] = entry
        return [queued[k] for k, e in latest.items() if e["event"] != REGISTERED and k in queued]


def _parse(line: str) -> tuple[dict[str, Any] | None, str | None]:
    """(entry, None) for a valid journal line, else (None, why not)."""
    if not line.strip():
        return None, "empty line"
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return None, "not JSON (cut short by a crash?)"
    if not isinstance(entry, dict):
        return None, f"a JSON {type(entry).__name__}, not an entry"
    if entry.get("event") not in (QUEUED, REGISTERED, FAILED, TRIAL):
        return None, f"unknown event {entry.get('event')!r}"
    if not isinstance(entry.get("key"), str) or not entry["key"]:
        return None, "no task key"
    if entry["event"] == QUEUED:
        for name, kind in _QUEUED_FIELDS.items():
            if not isinstance(entry.get(name), kind) or isinstance(entry.get(name), bool):
                return None, f"a queued entry without a valid {name!r}"
    if entry["event"] == TRIAL and not isinstance(entry.get("directory"), str):
        return None, "a trial entry without its directory"
    return entry, None


class TrialIds:
    """The trial id of each trial directory a journal names, looked up in constant time (a
    sync of a large sweep asks for thousands of directories of a journal of many lines)."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self._by_directory: dict[str, str] = {}
        # For a journal written before there were trial entries: its queued entries hold each
        # trial's name, and Tune names a trial's directory "<trial name>_<tag>_<date>".
        self._by_name: dict[str, str] = {}
        for entry in entries:
            if entry["event"] == TRIAL:
                self._by_directory.setdefault(entry["directory"], entry["key"])
            name, trial_id = entry.get("trial_name"), entry.get("trial_id")
            if isinstance(name, str) and name and isinstance(trial_id, str) and trial_id:
                self._by_name.setdefault(name, trial_id)

    def of(self, directory_name: str) -> str | None:
        """The id of the trial whose directory is `directory_name`, or None."""
        if directory_name in self._by_directory:
            return self._by_directory[directory_name]
        parts = directory_name.split("_")
        for end in range(len(parts) - 1, 0, -1):  # the longest trial name first
            trial_id = self._by_name.get("_".join(parts[:end]))
            if trial_id is not None:
                return trial_id
        return None
