"""A framework-neutral description of one trained policy's inference path.

`reader.py` reads an RLlib checkpoint into a `PolicySnapshot`; the exporters turn
it into Keras, TensorFlow and ONNX models. Nothing here imports Ray, torch or TF.

The inference path is always the same three stages, mirroring RLlib's connectors:

    raw observation --preprocess--> module input --network--> action_dist_inputs
                    --action rule--> action the environment receives
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rllib_mlflow.policy.flatten import RULE as FLATTEN_RULE


@dataclass(frozen=True)
class Layer:
    """One layer of a sequential stack; weights are in Keras layout.

    kind: "dense" (kernel [in, out], bias), "conv2d" (kernel [h, w, in, out], bias,
    NHWC), "pad2d" (config: top, bottom, left, right), "flatten", "activation"
    (config: name), "layer_norm" (gamma, beta; config: epsilon).
    """

    kind: str
    config: dict[str, Any] = field(default_factory=dict)
    weights: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class LSTMLayer:
    """One torch `nn.LSTM` layer in Keras layout: kernel [in, 4u], recurrent kernel [u, 4u]
    and bias [4u] (torch's b_ih + b_hh). Both order the gates i, f, g, o."""

    units: int
    weights: tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Network:
    """The module's deterministic inference network: encoder, then head(s).

    `value_head` is set only for dueling Q-networks, whose action_dist_inputs are
    Q = V + A - mean(A) with A = head(encoder(x)) and V = value_head(encoder(x)).
    `log_std_clip` is set for Gaussian heads: RLlib clips the second half of the head's
    output (the log standard deviations) to [-log_std_clip, log_std_clip].
    `free_log_std` is set for `free_log_std=True` heads: the head outputs only the means,
    and RLlib appends these log standard deviations (a trained parameter, already clipped)
    to every row.
    """

    encoder: tuple[Layer, ...]
    head: tuple[Layer, ...]
    value_head: tuple[Layer, ...] | None = None
    log_std_clip: float | None = None
    free_log_std: np.ndarray | None = None
    # RLlib's default LSTM encoder: the encoder layers above are its tokenizer, these run
    # after them with the recurrent state, and the head reads the last layer's output.
    lstm: tuple[LSTMLayer, ...] = ()


@dataclass(frozen=True)
class StateTensor:
    """One recurrent state tensor of a stateful module, e.g. an LSTM's "h" or "c".

    The graph takes it as `state_in_<name>` and returns it as `state_out_<name>`, flattened
    to `size` values per batch row (RLlib keeps `shape`, e.g. [layers, cell])."""

    name: str
    shape: tuple[int, ...]
    initial: np.ndarray  # RLlib's get_initial_state() for one batch row, flattened

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rllib_shape": list(self.shape),
            "shape": [None, self.size],
            "input": f"state_in_{self.name}",
            "output": f"state_out_{self.name}",
            "initial": self.initial.tolist(),
        }


@dataclass(frozen=True)
class History:
    """A window of the last steps' data that a connector adds to the module's input: one
    graph input of `width` values per batch row, oldest first, zeros before the episode's
    start. Each step, `push` enters `item` values and drops the oldest: "reward" (before the
    step: the reward the previous action earned), "action_one_hot" (after it: the action
    taken) or "observation" (after it: the step's observation, flattened)."""

    name: str
    width: int
    push: str
    item: int
    # The window at an episode's start, when not zeros: RLlib's old stack fills the previous
    # action of the first step with action 0, which its LSTM sees one-hot.
    initial: tuple[float, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        data = {"name": self.name, "width": self.width, "push": self.push, "item": self.item}
        if self.initial is not None:
            data["initial"] = list(self.initial)
        return data


@dataclass(frozen=True)
class PrevActionsRewards:
    """RLlib's PrevActionsPrevRewards connector (followed by FlattenObservations): the module
    sees [observation, the last n actions one-hot, the last n rewards], zeros before the
    episode's start."""

    n_prev_actions: int
    n_prev_rewards: int
    num_actions: int  # Discrete(n) actions enter one-hot
    # Where they join: "observations" (the new stack's connector, before the encoder) or
    # "lstm" (the old stack's LSTMWrapper: after the fcnet, before the LSTM).
    joins: str = "observations"
    # The action before an episode's first step: None (zeros) on the new stack; the old
    # stack's sampler pads it with action 0.
    initial_action: int | None = None

    def windows(self) -> list[History]:
        """The graph inputs: one window of past actions (one-hot), one of past rewards. The
        old stack's LSTM reads only those it is configured for (a zero-width one is left
        out); the new stack's connector always has both."""
        initial = None
        if self.initial_action is not None:
            one_hot = np.eye(self.num_actions)[self.initial_action]
            initial = tuple(float(v) for v in np.tile(one_hot, self.n_prev_actions))
        width = self.n_prev_actions * self.num_actions
        actions = History("prev_n_actions", width, "action_one_hot", self.num_actions, initial)
        rewards = History("prev_n_rewards", self.n_prev_rewards, "reward", 1)
        if self.joins == "observations":
            return [actions, rewards]
        return [w for w in (actions, rewards) if w.width]

    def to_json(self) -> dict[str, Any]:
        inputs = {w.name: [None, w.width] for w in self.windows()}
        if self.joins == "observations":
            formula = "concat([observations, prev_n_actions, prev_n_rewards], axis=-1)"
        else:
            formula = f"LSTM(concat([fcnet(observations), {', '.join(inputs)}], axis=-1))"
        start = "zeros" if self.initial_action is None else f"action {self.initial_action}"
        return {
            "type": "prev_actions_prev_rewards",
            "n_prev_actions": self.n_prev_actions,
            "n_prev_rewards": self.n_prev_rewards,
            "num_actions": self.num_actions,
            "joins": self.joins,
            "inputs": inputs,
            "formula": formula,
            "window": f"oldest first; each action one-hot; {start} before the episode's start",
        }


@dataclass(frozen=True)
class MeanStdFilter:
    """RLlib's MeanStdFilter connector, frozen at its checkpointed running statistics."""

    mean: np.ndarray
    std: np.ndarray
    demean: bool
    destd: bool
    clip: float | None
    epsilon: float = 1e-8  # RLlib's SMALL_NUMBER, added to std before dividing
    rllib_state: dict[str, Any] | None = None  # RLlib's RunningStat state, for parity checks

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "mean_std_filter",
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "demean": self.demean,
            "destd": self.destd,
            "clip": self.clip,
            "epsilon": self.epsilon,
            "formula": "clip((x - mean) / (std + epsilon), -clip, clip)",
            # RLlib keeps updating its running statistics while an EnvRunner acts (even with
            # explore=False); the exports use them as they were at the checkpoint.
            "frozen_at_checkpoint": True,
        }


@dataclass(frozen=True)
class ActionRule:
    """How RLlib turns action_dist_inputs into the action the environment receives.

    distribution: "categorical" (argmax), "multi_categorical" (argmax per slice of
    `input_lens`), "diag_gaussian" (mean = first half), "squashed_gaussian"
    (deterministic: the pre-tanh mean, as RLlib 2.60's new stack; sampled: tanh of a
    sample), "tanh_squashed_gaussian" (the old stack's SquashedGaussian, SAC's: tanh of the
    mean, in [-1, 1]; sampled: tanh of a sample), "deterministic" (TorchDeterministic: the
    inputs themselves, sampled too).
    Then, for Box actions, RLlib's NormalizeAndClipActions connector: `normalize_actions`
    unsquashes from [-1, 1] to [low, high] (and clips to them), else `clip_actions` clips
    to [low, high].
    """

    distribution: str
    input_lens: tuple[int, ...]
    normalize_actions: bool = False
    clip_actions: bool = False
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    action_shape: tuple[int, ...] = ()

    @property
    def is_discrete(self) -> bool:
        return self.distribution in ("categorical", "multi_categorical")

    def to_json(self) -> dict[str, Any]:
        return {
            "distribution": self.distribution,
            "input_lens": list(self.input_lens),
            "normalize_actions": self.normalize_actions,
            "clip_actions": self.clip_actions,
            "low": None if self.low is None else self.low.tolist(),
            "high": None if self.high is None else self.high.tolist(),
            "action_shape": list(self.action_shape),
            "deterministic": _DETERMINISTIC_RULES[self.distribution],
        }


_DETERMINISTIC_RULES = {
    "categorical": "argmax(action_dist_inputs)",
    "multi_categorical": "argmax of each slice of action_dist_inputs sized input_lens",
    "diag_gaussian": "mean = first half of action_dist_inputs (second half is log std)",
    # RLlib 2.60's TorchSquashedGaussian.to_deterministic() returns the pre-tanh mean;
    # the exports do the same, because they must act exactly like RLlib.
    "squashed_gaussian": "mean = first half of action_dist_inputs (pre-tanh, as RLlib)",
    # The old stack's SquashedGaussian.deterministic_sample() squashes its mean into
    # [low, high] = [-1, 1] (SAC's), which normalize_actions then unsquashes to the bounds.
    "tanh_squashed_gaussian": "tanh(mean), mean = first half of action_dist_inputs",
    "deterministic": "action_dist_inputs themselves (TorchDeterministic)",
}


@dataclass
class PolicySnapshot:
    """Everything needed to rebuild one module's inference path outside RLlib."""

    module_id: str
    observation_space: dict[str, Any]  # see spaces.space_to_json
    action_space: dict[str, Any]
    input_shape: tuple[int, ...]  # one raw observation, as the exported models take it
    flatten_observations: bool  # Dict/Tuple/Discrete observations: RLlib's flatten rule
    mean_std_filter: MeanStdFilter | None
    network: Network | None  # None when the module cannot be rebuilt in Keras
    unsupported_reason: str | None  # why `network` is None, naming the class
    action_rule: ActionRule
    module_dir: str  # local directory of the RLlib module checkpoint (for ONNX/parity)
    module_class: str
    # The checkpoint's `env_runner/`: RLlib's connector pipelines, the parity reference's.
    env_runner_dir: str | None = None
    algorithm: str | None = None
    env_id: str | None = None
    source_checkpoint: str | None = None
    training_iteration: int | None = None
    env: dict[str, Any] | None = None  # how to make the env again: `rllib.env_record`
    metrics: dict[str, float] = field(default_factory=dict)
    model_config: dict[str, Any] = field(default_factory=dict)
    # A Dict observation that reaches the module as a dict: one graph input per key.
    observation_inputs: dict[str, tuple[int, ...]] | None = None
    state: tuple[StateTensor, ...] = ()  # recurrent state, empty for stateless modules
    prev_actions_rewards: PrevActionsRewards | None = None
    frame_stack: int = 0  # RLlib's FrameStacking: the module sees the last n frames
    # A non-standard inference distribution (e.g. Ray's TorchCategoricalWithTemp): the
    # exports trace its deterministic sample instead of applying `action_rule`'s.
    custom_distribution: str | None = None
    # "new": a torch RLModule in `module_dir`; "old": an old-API-stack Policy checkpoint
    # there (TF2 or torch `framework`), whose reference and ONNX path differ.
    api_stack: str = "new"
    framework: str = "torch"
    written_by_ray: str | None = None  # the Ray release that wrote the checkpoint, if known

    @property
    def is_stateful(self) -> bool:
        return bool(self.state) or bool(self.history())

    def history(self) -> list[History]:
        """The windows of past data the graphs take beside the observation and state."""
        prev = self.prev_actions_rewards
        windows = prev.windows() if prev is not None else []
        if self.frame_stack > 1:
            frame = int(np.prod(self.input_shape))
            windows.append(
                History("prev_frames", (self.frame_stack - 1) * frame, "observation", frame)
            )
        return windows

    def graph_inputs(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape of one batch row) of every input of the exported graphs, in order."""
        if self.observation_inputs is not None:
            inputs = list(self.observation_inputs.items())
        else:
            inputs = [("observations", self.input_shape)]
        inputs += [(f"state_in_{s.name}", (s.size,)) for s in self.state]
        return inputs + [(h.name, (h.width,)) for h in self.history()]

    def graph_outputs(self) -> list[str]:
        return ["actions", "action_dist_inputs"] + [f"state_out_{s.name}" for s in self.state]

    def preprocessing_json(self) -> list[dict[str, Any]]:
        steps: list[dict[str, Any]] = []
        if self.flatten_observations:
            steps.append({"type": "flatten", "how": FLATTEN_RULE})
        if self.mean_std_filter is not None:
            steps.append(self.mean_std_filter.to_json())
        if self.prev_actions_rewards is not None:
            steps.append(self.prev_actions_rewards.to_json())
        if self.frame_stack > 1:
            steps.append(
                {
                    "type": "frame_stacking",
                    "num_frames": self.frame_stack,
                    "inputs": {"prev_frames": [None, self.history()[-1].width]},
                    "formula": "concat([prev_frames as [n-1, *shape[:-1]] moved to the last "
                    "axis, observations], axis=-1)",
                    "window": "the previous n-1 observations, oldest first, each flattened; "
                    "zeros before the episode's start",
                }
            )
        return steps
