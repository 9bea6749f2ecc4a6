"""The journal's trial entries: how `sync` names a trial whose result.json names none yet."""

from __future__ import annotations

import json

from rllib_mlflow.tune.journal import QUEUED, Journal, TrialIds
from rllib_mlflow.tune.trial_dirs import JournaledTrials

TRIAL_DIR = "PPO_CartPole-v1_64b1c_00001_1_lr=0.0003_2026-12-03_16-01-41"


def _queued(trial_id: str, trial_name: str, iteration: int = 1) -> dict:
    return {
        "checkpoint": f"/exp/{trial_name}/checkpoint_00000{iteration}",
        "checkpoint_uri": f"/exp/{trial_name}/checkpoint_00000{iteration}",
        "training_iteration": iteration,
        "trial_id": trial_id,
        "trial_name": trial_name,
    }


def test_a_trial_entry_names_its_directory(tmp_path):
    journal = Journal(tmp_path)
    journal.record_trial("64b1c_00000", "PPO_CartPole-v1_64b1c_00000", "custom-dir-0")
    journal.record_trial("64b1c_00001", "PPO_CartPole-v1_64b1c_00001", TRIAL_DIR)
    trial_ids = TrialIds(journal.entries())
    assert trial_ids.of(TRIAL_DIR) == "64b1c_00001"
    assert trial_ids.of("custom-dir-0") == "64b1c_00000"
    assert trial_ids.of("another-dir") is None


def test_an_older_journal_names_trials_by_their_queued_entries(tmp_path):
    journal = Journal(tmp_path)
    journal.record(QUEUED, "64b1c_00010/1", **_queued("64b1c_00010", "PPO_CartPole-v1_64b1c_00010"))
    journal.record(QUEUED, "64b1c_00001/1", **_queued("64b1c_00001", "PPO_CartPole-v1_64b1c_00001"))
    trial_ids = TrialIds(journal.entries())
    assert trial_ids.of(TRIAL_DIR) == "64b1c_00001"  # not trial 10's
    assert trial_ids.of(TRIAL_DIR.replace("00001", "00002")) is None


def test_trial_entries_are_not_pending_work_and_bad_ones_are_skipped(tmp_path):
    journal = Journal(tmp_path)
    journal.record_trial("64b1c_00001", "PPO_CartPole-v1_64b1c_00001", TRIAL_DIR)
    journal.record(QUEUED, "64b1c_00001/1", **_queued("64b1c_00001", TRIAL_DIR))
    with open(journal.path, "a") as stream:
        stream.write(json.dumps({"event": "trial", "key": "64b1c_00002"}) + "\n")
    assert [e["key"] for e in journal.pending()] == ["64b1c_00001/1"]
    assert journal.skipped == [(3, "a trial entry without its directory")]


def test_the_callbacks_settings_reach_every_trial_a_sync_finds(tmp_path):
    """A trial none of whose checkpoints was queued before Ctrl-C still gets the callback's
    best_metric (one callback, one setting), not sync's default, which would move @best."""
    journal = Journal(tmp_path)
    journal.record_trial("64b1c_00000", "PPO_CartPole-v1_64b1c_00000", "dir-0")
    journal.record_trial("64b1c_00001", "PPO_CartPole-v1_64b1c_00001", TRIAL_DIR)
    settings = {"best_metric": "my_score", "best_mode": "min", "formats": ["onnx"]}
    queued = _queued("64b1c_00000", "PPO_CartPole-v1_64b1c_00000") | settings | {"run_id": None}
    journal.record(QUEUED, "64b1c_00000/1", **queued)
    journal.record(QUEUED, "64b1c_00000/2", **(queued | {"run_id": "run-0"}))
    trials = JournaledTrials(journal.entries())
    for trial_id in ("64b1c_00000", "64b1c_00001", "never-journaled"):
        assert {k: trials.of(trial_id)[k] for k in settings} == settings, trial_id
    assert trials.of("64b1c_00000")["run_id"] == "run-0"
    assert "run_id" not in trials.of("64b1c_00001")  # a run is made for it
