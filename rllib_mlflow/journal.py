"""An append-only record of the checkpoints a run asked to register, and what became of them.

One JSON object per line in `<experiment dir>/rllib_mlflow_journal.jsonl`. Lines are
flushed and fsynced as they are written, so the record survives Ctrl-C, SIGKILL and
crashes; `rllib-mlflow sync` re-reads it and registers whatever is still pending.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

JOURNAL_FILE = "rllib_mlflow_journal.jsonl"
QUEUED, REGISTERED, FAILED = "queued", "registered", "failed"


class Journal:
    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / JOURNAL_FILE
        self._lock = threading.Lock()

    def record(self, event: str, task_key: str, **fields: Any) -> None:
        entry = {"event": event, "key": task_key, "time": time.time(), **fields}
        line = json.dumps(entry, default=str) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as stream:
                stream.write(line)
                stream.flush()
                os.fsync(stream.fileno())

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        entries = []
        for line in self.path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by SIGKILL: its task stays pending
        return entries

    def pending(self) -> list[dict[str, Any]]:
        """Queued tasks with no `registered` line (failed ones are retried too)."""
        latest: dict[str, dict[str, Any]] = {}
        queued: dict[str, dict[str, Any]] = {}
        for entry in self.entries():
            latest[entry["key"]] = entry
            if entry["event"] == QUEUED:
                queued[entry["key"]] = entry
        return [queued[k] for k, e in latest.items() if e["event"] != REGISTERED and k in queued]


def task_key(trial_id: str | None, training_iteration: int) -> str:
    return f"{trial_id or 'no-trial'}/{int(training_iteration)}"
