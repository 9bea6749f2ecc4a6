"""The files of an RLlib checkpoint: where its modules are, and what its pickles record.

Layouts understood (Ray 2.60, new API stack):
    <algo>/learner_group/learner/rl_module/<module_id>/   an Algorithm checkpoint
    <rl_module>/<module_id>/                              a MultiRLModule checkpoint
    <module>/module_state.pkl                             a single RLModule checkpoint
and RLlib's old API stack (read by `old_stack`):
    <algo>/policies/<policy_id>/policy_state.pkl          an old-stack Algorithm checkpoint
    <policy>/policy_state.pkl                             a Policy checkpoint
Ray 1.x/2.0's pickled `checkpoint-N` files are recognised and refused.

Unreadable, truncated or missing files become `CheckpointError`s that say what to do.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rllib_mlflow.errors import CheckpointError
from rllib_mlflow.rllib import pickles
from rllib_mlflow.rllib.env_record import env_record
from rllib_mlflow.rllib.modules import CLASS_FILE as _CLASS_FILE
from rllib_mlflow.rllib.modules import module_state_file

_MODULES_SUBDIR = Path("learner_group", "learner", "rl_module")
_POLICY_STATE = "policy_state.pkl"


def _tensorflow_before_rllib() -> None:
    """Import TensorFlow before this process's first RLlib import (see `_tensorflow_first`).

    Called by the functions through which RLlib gets imported (by name or by unpickling),
    rather than at module import, so that the Tune driver, which only queues work, never
    loads TensorFlow."""
    from rllib_mlflow import _tensorflow_first  # noqa: F401


def prepare_for_old_stack() -> None:
    """Make TensorFlow, when it is imported later, use Keras 2 (tf_keras), as RLlib's
    old-stack TF policies need. The new stack's Keras 3 exports (`import keras`) are not
    affected. Too late once anything imported TensorFlow (any RLlib import does): the
    reader then says what to set."""
    if "tensorflow" not in sys.modules and importlib.util.find_spec("tf_keras") is not None:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def list_module_ids(checkpoint_dir: str) -> list[str]:
    """The module (or old-stack policy) ids a local checkpoint directory holds, sorted."""
    root = Path(checkpoint_dir)
    old_policies = old_stack_policy_dirs(root)
    if old_policies is not None:
        return sorted(old_policies)
    _tensorflow_before_rllib()
    return sorted(_module_dirs(root))


def old_stack_policy_dirs(root: Path) -> dict[str, Path] | None:
    """{policy_id: directory} of an old-API-stack checkpoint, None for any other layout.

    Decided from file names alone (no unpickling), so that the caller can prepare the
    process (TF_USE_LEGACY_KERAS) before anything imports TensorFlow."""
    _refuse_pickled_checkpoint(root)
    if (root / _POLICY_STATE).is_file():
        policy_id = root.name if root.parent.name == "policies" else "default_policy"
        return {policy_id: root}
    meta = _checkpoint_meta(root)
    if meta.get("type") == "Policy":
        _incomplete(root, _POLICY_STATE)
    # The new stack's algorithm_state.pkl sits beside class_and_ctor_args.pkl, the old
    # stack's beside policies/ (and its rllib_checkpoint.json lists them).
    has_state = (root / "algorithm_state.pkl").is_file() and not (root / _CLASS_FILE).exists()
    if "policy_ids" not in meta and not (has_state and not (root / "learner_group").exists()):
        return None
    if meta.get("format") == "msgpack":
        raise CheckpointError(
            f"Checkpoint {root} is an old-API-stack checkpoint in RLlib's msgpack format, "
            "which rllib-mlflow does not read. Restore it with `Algorithm.from_checkpoint` "
            "and save it again with `algo.save()` (the cloudpickle format)."
        )
    policies = root / "policies"
    found = {
        child.name: child
        for child in (policies.iterdir() if policies.is_dir() else ())
        if (child / _POLICY_STATE).is_file()
    }
    expected = meta.get("policy_ids") or []
    missing = [pid for pid in expected if pid not in found]
    if missing or not found:
        _incomplete(root, f"policies/{(missing or ['<policy_id>'])[0]}/{_POLICY_STATE}")
    return found


def written_by(checkpoint: Path) -> str | None:
    """The Ray release that wrote a checkpoint, where its rllib_checkpoint.json (or that of
    the Algorithm checkpoint holding this policy) says."""
    for root in (checkpoint, checkpoint.parent.parent):
        version = _checkpoint_meta(root).get("ray_version")
        if version:
            return str(version)
    return None


def _checkpoint_meta(root: Path) -> dict[str, Any]:
    try:
        meta = json.loads((root / "rllib_checkpoint.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _incomplete(root: Path, missing: str):
    raise CheckpointError(
        f"Checkpoint {root} is an RLlib old-API-stack checkpoint but is incomplete: "
        f"{missing} is missing. It may have been truncated while copying; use another "
        "checkpoint of the run."
    )


def _refuse_pickled_checkpoint(root: Path) -> None:
    """Ray 1.x and 2.0 saved an Algorithm as one pickled `checkpoint-N` file (plus
    `checkpoint-N.tune_metadata`), which Ray 2.60 cannot read."""
    is_pickle = root.is_file() and root.name.startswith("checkpoint-")
    if root.is_dir():
        is_pickle = any(
            f.name.startswith("checkpoint-") and f.suffix != ".tune_metadata"
            for f in root.iterdir()
            if f.is_file()
        )
    if is_pickle:
        raise CheckpointError(
            f"Checkpoint {root} is in the pickled `checkpoint-N` format of Ray 1.x and 2.0, "
            "which neither Ray 2.10+ nor rllib-mlflow reads, and Ray 2.3 to 2.9's "
            "`algo.restore()` cannot either (the file names Ray 1.x's classes and gym's "
            "spaces). Convert it once with Ray 2.3 to 2.9, as the section 'Ray 1.x and 2.0 "
            "checkpoints' of the archives guide (docs/guides/archives.md) shows (checked on a "
            "Ray 1.13 checkpoint): load its weights and "
            "filters as data into `config.build()`, then `algo.save()`; rllib-mlflow reads "
            "the directory that writes."
        )


def read_training_iteration(checkpoint_dir: str) -> int | None:
    """The training iteration an Algorithm checkpoint recorded, if any: in its state, or
    (Ray 2.3 to 2.9) in the `.tune_metadata` that Ray's Trainable wrote beside it."""
    root = Path(checkpoint_dir)
    old_stack_policy_dirs(root)  # refuses Ray 1.x's pickled checkpoints by name
    state = root / "algorithm_state.pkl"
    iteration = pickles.load(state).get("training_iteration") if state.exists() else None
    if iteration is None and (root / ".tune_metadata").is_file():
        iteration = pickles.load(root / ".tune_metadata").get("iteration")
    return None if iteration is None else int(iteration)


def _module_dirs(root: Path) -> dict[str, Path]:
    if not root.is_dir():
        raise CheckpointError(
            f"{root} is not a directory. Pass the directory that `algo.save()` or Tune "
            "wrote (e.g. .../checkpoint_000003), or a module directory inside it."
        )
    if (root / _CLASS_FILE).exists() and _is_single_module(root):
        return {_single_module_id(root): root}
    _refuse_tune_folder(root)
    candidates = root / _MODULES_SUBDIR if (root / _MODULES_SUBDIR).is_dir() else root
    modules = {
        child.name: child
        for child in candidates.iterdir()
        if child.is_dir() and (child / _CLASS_FILE).exists()
    }
    if not modules:
        if (root / "learner_group").exists() or (root / _CLASS_FILE).exists():
            raise CheckpointError(
                f"Checkpoint {root} is incomplete: no module under {_MODULES_SUBDIR}. It may "
                "have been truncated while copying; use another checkpoint of the run."
            )
        raise CheckpointError(
            f"{root} is not an RLlib checkpoint (no rllib_checkpoint.json, no "
            f"{_MODULES_SUBDIR}, no module_state.pkl). Pass the directory that `algo.save()` "
            "or Tune wrote (e.g. .../checkpoint_000003)."
        )
    return modules


def _refuse_tune_folder(root: Path) -> None:
    """A Tune trial folder (checkpoint_000000, ... inside) or experiment folder (trial
    folders inside) is not a checkpoint: say which checkpoint to pass instead. Without
    this, the checkpoint folders inside would be taken for module folders."""
    if (root / _CLASS_FILE).exists() or (root / _MODULES_SUBDIR).is_dir():
        return
    checkpoints = _checkpoints_in(root)
    if checkpoints:
        raise CheckpointError(
            f"{root} is a Tune trial folder, not a checkpoint: it holds "
            f"{', '.join(c.name for c in checkpoints)}. Pass one of them, e.g. "
            f"{checkpoints[-1]} (the latest), or register them all with "
            f"`rllib-mlflow register {root} --name NAME`."
        )
    trials = [
        child for child in sorted(root.iterdir()) if child.is_dir() and _checkpoints_in(child)
    ]
    if trials:
        latest = _checkpoints_in(trials[0])[-1]
        raise CheckpointError(
            f"{root} is a Tune experiment folder, not a checkpoint: it holds the trial "
            f"folders {', '.join(t.name for t in trials)}. Pass one of their checkpoints, "
            f"e.g. {latest}, or register them all with `rllib-mlflow register {root} --name "
            "NAME`."
        )


def _checkpoints_in(folder: Path) -> list[Path]:
    """The checkpoint_NNNNNN folders Tune wrote in a trial folder, oldest first."""
    found = [
        child
        for child in folder.iterdir()
        if child.is_dir()
        and child.name.startswith("checkpoint_")
        and ((child / "rllib_checkpoint.json").exists() or (child / _CLASS_FILE).exists())
    ]
    return sorted(found, key=lambda child: child.name)


def _is_single_module(root: Path) -> bool:
    """A module's own directory (its weights beside its class file), not a MultiRLModule's
    (a directory of modules, which `save_to_path` also gives weights and a class file) nor
    an Algorithm's."""
    modules = (c for c in root.iterdir() if c.is_dir() and (c / _CLASS_FILE).exists())
    return module_state_file(root).is_file() and next(modules, None) is None


def _single_module_id(root: Path) -> str:
    meta = root / "metadata.json"
    return (
        root.name if not meta.exists() else json.loads(meta.read_text()).get("module_id", root.name)
    )


def _read_algorithm_info(root: Path) -> dict[str, Any]:
    """Algorithm name, env id, iteration, metrics and connectors, where recorded."""
    info: dict[str, Any] = {
        "env_to_module": [],
        "env_to_module_state": {},
        "module_to_env": [],
    }
    if (root / "rllib_checkpoint.json").exists() and (root / _CLASS_FILE).exists():
        algo = pickles.load(root / _CLASS_FILE)
        info["algorithm"] = pickles.class_name(algo["class"])
        config = algo["ctor_args_and_kwargs"][0][0] if algo["ctor_args_and_kwargs"][0] else {}
        env = config.get("env") if isinstance(config, dict) else None
        info["env_id"] = env if isinstance(env, str) else getattr(env, "__name__", None)
        info["env"] = env_record(config) if isinstance(config, dict) else None
        state_path = root / "algorithm_state.pkl"
        if state_path.exists():
            state = pickles.load(state_path)
            info["training_iteration"] = state.get("training_iteration")
            info["metrics"] = _metrics_from_logger_state(state.get("metrics_logger", {}))
    runner = root / "env_runner"
    if (runner / "env_to_module_connector" / _CLASS_FILE).exists():
        info["env_runner_dir"] = str(runner.resolve())
    for name in ("env_to_module", "module_to_env"):
        pipeline = runner / f"{name}_connector"
        if (pipeline / _CLASS_FILE).exists():
            args, kwargs = pickles.load(pipeline / _CLASS_FILE)["ctor_args_and_kwargs"]
            info[name] = [(cls.__name__, kw) for cls, _, kw in kwargs["connectors"]]
            if name == "env_to_module" and args:
                info["env_observation_space"] = args[0]
            if name == "env_to_module":
                # Each connector with state keeps it in a sub-directory named after it.
                info["env_to_module_state"] = {
                    sub.name: pickles.load(sub / "state.pkl")
                    for sub in pipeline.iterdir()
                    if (sub / "state.pkl").exists()
                }
    return info


def _metrics_from_logger_state(logger_state: dict[str, Any]) -> dict[str, float]:
    wanted = {
        "env_runners--episode_return_mean": "episode_return_mean",
        "env_runners--episode_len_mean": "episode_len_mean",
        "env_runners--num_env_steps_sampled_lifetime": "num_env_steps_sampled_lifetime",
    }
    metrics = {}
    for name, stat in logger_state.get("stats", {}).items():
        key = "--".join(name) if isinstance(name, tuple) else name  # tuples up to Ray 2.40
        # A lifetime counter's "latest_merged" is the last iteration's increment; its
        # total (what Tune's result reports) is "lifetime_sum".
        latest = stat.get("lifetime_sum") if key.endswith("_lifetime") else None
        latest = stat.get("latest_merged") if latest is None else latest
        if key in wanted and latest is not None and np.size(latest):
            value = float(np.asarray(latest, dtype=np.float64).ravel()[-1])
            if np.isfinite(value):
                metrics[wanted[key]] = value
    return metrics
