"""RLlib's old-stack LSTM (`model={"use_lstm": True}`) as a `Network` with recurrent state.

The catalog wraps the fcnet in `LSTMWrapper` (TF2 and torch alike): the fcnet's hidden
layers, one LSTM layer of `lstm_cell_size` units, then a linear logits layer. Its state is
`[h, c]`, one vector of `lstm_cell_size` each, zeros at an episode's start. The snapshot names
them "h" and "c", so the exports expose the same `state_in_h`/`state_in_c` ->
`state_out_*` steps as the new stack's LSTM, and `load_policy` the same `initial_state`/`step`.
With `lstm_use_prev_action` / `lstm_use_prev_reward` the LSTM also reads the previous action
(one-hot) and reward, concatenated to the fcnet's output: graph inputs `prev_n_actions` /
`prev_n_rewards`, windows of one step that `step` keeps (`prev_rewards=` as on the new stack).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from rllib_mlflow.errors import UnsupportedModuleError
from rllib_mlflow.rllib.keras_layers import keras_dense
from rllib_mlflow.rllib.snapshot import LSTMLayer, Network, PrevActionsRewards, StateTensor

WRAPPED_FCNET = "ray.rllib.models.catalog.FullyConnectedNetwork_as_LSTMWrapper"
STATE_NAMES = ("h", "c")  # RLlib's state_in_0, state_in_1


def refuse_unsupported_lstm(config: dict) -> None:
    """Refuse, from the model config alone, the LSTM options no export reproduces yet."""
    for option in ("free_log_std", "_time_major", "_disable_action_flattening"):
        if config.get(option):
            raise UnsupportedModuleError(
                f"Old-stack LSTM policies with {option}=True are not exported yet "
                "(use_lstm=True is, with lstm_use_prev_action and lstm_use_prev_reward)."
            )


def lstm_prev_actions_rewards(config: dict, action_space: gym.Space) -> PrevActionsRewards | None:
    """What LSTMWrapper appends to the fcnet's output before its LSTM: the previous action
    (one-hot) with lstm_use_prev_action, the previous reward with lstm_use_prev_reward. Both
    are graph inputs then, as the new stack's PrevActionsPrevRewards windows of one step."""
    use_action = bool(config.get("lstm_use_prev_action"))
    use_reward = bool(config.get("lstm_use_prev_reward"))
    if not (use_action or use_reward):
        return None
    discrete = isinstance(action_space, gym.spaces.Discrete)
    if use_action and not discrete:
        # RLlib feeds back the policy's action before unsquashing/clipping, which the exports
        # do not return.
        raise UnsupportedModuleError(
            f"Old-stack LSTM policies with lstm_use_prev_action=True and {action_space} "
            "actions are not exported yet (with Discrete actions they are; "
            "lstm_use_prev_reward=True is with any actions)."
        )
    return PrevActionsRewards(
        n_prev_actions=int(use_action),
        n_prev_rewards=int(use_reward),
        num_actions=int(action_space.n) if discrete else 0,
        joins="lstm",
        # RLlib's sampler pads the first step's previous action with 0 (one-hot: [1, 0, ..]).
        initial_action=0 if use_action else None,
    )


def lstm_network(model: Any, config: dict) -> Network:  # model: RLlib's ModelV2
    """The Network of an old-stack `FullyConnectedNetwork_as_LSTMWrapper` (TF2 or torch)."""
    refuse_unsupported_lstm(config)
    cls = f"{type(model).__module__}.{type(model).__name__}"
    if cls != WRAPPED_FCNET:
        raise UnsupportedModuleError(
            f"use_lstm=True around {cls} is not exported; around RLlib's fcnet it is."
        )
    return _torch_network(model) if hasattr(model, "_logits_branch") else _tf_network(model)


def lstm_state(model: Any) -> tuple[StateTensor, ...]:
    """The LSTM's state tensors as the graphs carry them, with RLlib's initial values."""
    initial = [np.asarray(_numpy(s), np.float32).ravel() for s in model.get_initial_state()]
    if len(initial) != len(STATE_NAMES):
        raise UnsupportedModuleError(f"Expected an LSTM state [h, c], got {len(initial)} tensors.")
    return tuple(
        StateTensor(name, (value.size,), value) for name, value in zip(STATE_NAMES, initial)
    )


def _torch_network(model) -> Network:
    """torch: `_hidden_layers` (the fcnet without logits), `lstm`, `_logits_branch`."""
    from rllib_mlflow.rllib.networks import _layers, _lstm

    if model._logits is not None:
        raise UnsupportedModuleError("The LSTM's fcnet has an output layer of its own.")
    return Network(
        tuple(_layers(model._hidden_layers)),
        tuple(_layers(model._logits_branch)),
        lstm=_lstm(model),
    )


def _tf_network(model) -> Network:
    """TF2: the fcnet's Dense fc_1..fc_n, the Keras LSTM "lstm", the Dense "logits"."""
    base = model.base_model
    names = [layer.name for layer in base.layers]
    if "fc_out" in names:
        raise UnsupportedModuleError("The LSTM's fcnet has an output layer of its own.")
    hidden = sorted(
        (base.get_layer(n) for n in names if n.startswith("fc_") and n[3:].isdigit()),
        key=lambda layer: int(layer.name[3:]),
    )
    lstm = model._rnn_model.get_layer("lstm")
    settings = lstm.get_config()
    if (settings["activation"], settings["recurrent_activation"]) != ("tanh", "sigmoid"):
        raise UnsupportedModuleError(f"An LSTM with {settings['activation']} is not exported.")
    kernel, recurrent, bias = (np.asarray(w, np.float32) for w in lstm.get_weights())
    return Network(
        tuple(step for dense in hidden for step in keras_dense(dense)),
        tuple(keras_dense(model._rnn_model.get_layer("logits"))),
        lstm=(LSTMLayer(int(settings["units"]), (kernel, recurrent, bias)),),
    )


def _numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
