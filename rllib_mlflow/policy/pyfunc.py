"""MLflow's pyfunc entry point for an rllib-mlflow model: requests in, actions out.

Shipped inside every logged model with the rest of this package (as `rllib_mlflow_policy`),
so it imports only numpy, mlflow and its sibling modules.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .observations import served_observation_keys
from .serving import Policy


class _PyfuncPolicy:
    """What `mlflow.pyfunc.load_model` returns for an rllib-mlflow model.

    It takes the observations the env returns, in every form `Policy` does, and checks them
    itself: MLflow does not enforce its signature (`rllib_mlflow/mlflow/signature.py`), so
    a request MLflow's server passes on may be a list or dict straight from the JSON, and a
    wrong one gets a 400 that names the shape expected.

    A stateful policy takes its state as named tensors `state_<name>` (and `prev_rewards`
    when it reads past rewards) beside the observations, and returns `actions` with the
    next `state_<name>` tensors: send those back with the next observations."""

    def __init__(self, export_dir: str):
        self.policy = Policy(export_dir)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None):
        params = params or {}
        explore, seed = bool(params.get("explore", False)), params.get("seed")
        try:
            named = _named_inputs(model_input, self.policy)
            if self.policy.is_stateful:
                return self._step(named, explore, seed, bool(params.get("return_dist_inputs")))
            observations = _observations(named, self.policy)
            actions = self.policy.compute_actions(observations, explore=explore, seed=seed)
            if params.get("return_dist_inputs"):
                dist_inputs = self.policy.action_dist_inputs(observations)
                return {"actions": actions, "action_dist_inputs": dist_inputs}
            return actions
        except (TypeError, ValueError) as error:
            _raise_invalid_input(str(error))

    def _step(self, named: dict[str, Any], explore: bool, seed, return_dist_inputs: bool):
        state = {name: named.pop(f"state_{name}", None) for name in self.policy.state_names}
        missing = [f"state_{name}" for name, value in state.items() if value is None]
        if missing:
            raise ValueError(
                f"A stateful policy needs its state with every request: {missing} are missing "
                "(on an episode's first step the initial values policy.json gives under "
                "`state` and `history`, zeros unless it says otherwise; then the state_* of "
                "the last response)."
            )
        prev_rewards = named.pop("prev_rewards", None)
        observations = _observations(named, self.policy)
        actions, next_state, dist_inputs = self.policy.step(
            observations, state, prev_rewards, explore, seed, return_dist_inputs=True
        )
        response = {"actions": actions, **{f"state_{k}": v for k, v in next_state.items()}}
        if return_dist_inputs:
            response["action_dist_inputs"] = dist_inputs
        return response


def _named_inputs(model_input: Any, policy: Policy) -> dict[str, Any]:
    """MLflow's parsed request as {input name: batch}; an unnamed tensor is "observations"."""
    if hasattr(model_input, "to_numpy") and hasattr(model_input, "columns"):  # a DataFrame
        if not _has_named_inputs(policy.metadata):  # one row per flat observation
            return {"observations": model_input.to_numpy()}
        return {c: np.stack(model_input[c].to_numpy()) for c in model_input.columns}
    if isinstance(model_input, dict):
        return dict(model_input)
    return {"observations": model_input}


def _has_named_inputs(metadata: dict[str, Any]) -> bool:
    """Whether the served model takes named tensors (Dict keys, state) or one tensor."""
    return metadata.get("stateful", False) or served_observation_keys(metadata) is not None


def _observations(named: dict[str, Any], policy: Policy) -> Any:
    """The raw observations within a request: one input (a batch, a list of Dict or Tuple
    observations, flattened rows), or one input per key of a Dict observation."""
    space = policy.metadata["observation_space"]
    if space["type"] == "Dict" and list(named) != ["observations"]:
        keys = list(space["spaces"])
        missing = [k for k in keys if k not in named]
        if missing:
            raise ValueError(
                f"Observation input(s) {missing} are missing; send one input per key of the "
                f"Dict observation, {keys}, or a list of observation dicts."
            )
        return {k: named.pop(k) for k in keys}
    if len(named) != 1:
        raise ValueError(
            f"Send one input of observations (named 'observations', or unnamed); got inputs "
            f"{sorted(named)}."
        )
    return next(iter(named.values()))


def _raise_invalid_input(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _load_pyfunc(path: str) -> _PyfuncPolicy:
    """MLflow's pyfunc entry point: `path` is the model's data directory."""
    return _PyfuncPolicy(path)
