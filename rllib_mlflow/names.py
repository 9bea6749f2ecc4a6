"""The tag keys, aliases and artifact file names that rllib-mlflow searches and reads back.

The values are stored data: registries and runs written by earlier versions are searched
by them, so a value never changes; only a Python name may. The files an export holds
(policy.json, model.onnx, saved_model/) are named in `rllib_mlflow.policy`, which is copied
into every logged model and so imports nothing from here. Registration writes the version
tags as keyword arguments of `versions.version_tags` (the same strings).
"""

from __future__ import annotations

# -- model version tags (what `find_versions` filters on and `versions` lists) ------------
VERSION_TAG_ITERATION = "training_iteration"
VERSION_TAG_TRIAL_ID = "trial_id"
VERSION_TAG_TRIAL_NAME = "trial_name"
VERSION_TAG_MODULE_ID = "module_id"
VERSION_TAG_CHECKPOINT_URI = "checkpoint_uri"
VERSION_TAG_CHECKPOINT_ARTIFACT = "rllib_checkpoint_artifact"
VERSION_TAG_ALGORITHM = "algorithm"
VERSION_TAG_ENV_ID = "env_id"
# How to make the env again (policy.json's `env`): what `make_env` takes, and env_config as
# JSON (secrets masked). See `rllib_mlflow.envs`.
VERSION_TAG_ENV_MAKE = "env.make"
VERSION_TAG_ENV_CONFIG = "env.config"
VERSION_TAG_ENV_AGENT_TO_MODULE = "env.agent_to_module"  # JSON, where the mapping is data
VERSION_TAG_FORMATS = "formats"  # comma-separated, as in policy.json
VERSION_TAG_PARITY = "parity_max_abs_diff"
VERSION_TAG_INT8_AGREEMENT = "int8_agreement"  # tflite_int8's share of RLlib's actions
VERSION_TAG_BEST_METRIC = "best_metric"  # the name of the metric `best` follows
VERSION_TAG_BEST_MODE = "best_mode"  # "max" or "min"
VERSION_TAG_REPLAY = "replay"  # REPLAY_FILE, or "skipped: <why>"
VERSION_TAG_REPLAY_SEED = "replay.seed"
VERSION_TAG_EVAL_PREFIX = "eval."  # `rllib-mlflow evaluate` results: eval.<statistic>
VERSION_TAG_EVAL_RETURN_MEAN = "eval.episode_return_mean"
VERSION_TAG_EVAL_RETURN_STD = "eval.episode_return_std"
VERSION_TAG_EVAL_EPISODES = "eval.episodes"
VERSION_TAG_EVAL_ENV_ID = "eval.env_id"
VERSION_TAG_EVAL_SEED = "eval.seed"
VERSION_TAG_EVAL_ENV_CONFIG = "eval.env_config"  # when evaluate was given another config
# A multi-agent evaluation: the return of each agent the module played, eval.agent.<id>.
VERSION_TAG_EVAL_AGENT_PREFIX = "eval.agent."
# The family summary (JSON) counted through this version: see `mlflow.family`.
VERSION_TAG_FAMILY = "rllib_mlflow.family"


def metric_tag(metric: str) -> str:
    """The version tag holding a checkpoint's value of `metric` (what `best` compares)."""
    return f"metric.{metric}"


# -- run tags ---------------------------------------------------------------------------
# The trial's run is found again by this tag (Tune's trial id), e.g. by `sync`.
RUN_TAG_TRIAL_ID = "rllib_mlflow.trial_id"
RUN_TAG_TRIAL_NAME = "trial_name"

# -- experiment and registered model tags -------------------------------------------------
# Set by the permission probe: the rllib-mlflow version that last wrote there.
TAG_WRITER = "rllib_mlflow.version"
# One line on all the versions (count, trials, iterations, latest, best), kept current at
# every registration; the description (the family card) says more, less often.
MODEL_TAG_SUMMARY = "rllib_mlflow.summary"

# -- aliases ------------------------------------------------------------------------------
ALIAS_BEST = "best"
ALIAS_EVAL_BEST = "eval-best"
ITERATION_ALIAS_PREFIX = "iter-"


def iteration_alias(training_iteration: int) -> str:
    """`models:/NAME@iter-N`: the latest version registered for `training_iteration`
    (resolved through the version tags; registries of older releases hold it as an alias)."""
    return f"{ITERATION_ALIAS_PREFIX}{int(training_iteration)}"


# -- artifact files beside a logged model -------------------------------------------------
README_FILE = "README.md"  # the version card
REPLAY_FILE = "replay.gif"
