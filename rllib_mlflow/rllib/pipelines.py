"""RLlib's own EnvRunner connector pipelines for one module, as the parity reference uses them.

The env-to-module and module-to-env pipelines are rebuilt from the checkpoint's
`env_runner/` (the connector classes and settings RLlib recorded, their states restored) and
driven the way `SingleAgentEnvRunner._sample` drives them with explore=False. So the
reference's module inputs (flattening, filters, previous actions and rewards, frame stacks)
and its actions (sampling, unsquashing, clipping) are RLlib's code, never a copy of the
rules the exports follow: a rule of ours that differs from RLlib's cannot pass parity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rllib_mlflow.rllib import pickles
from rllib_mlflow.rllib.modules import CLASS_FILE
from rllib_mlflow.rllib.snapshot import PolicySnapshot

# A multi-agent pipeline routes agents to modules; one module's episodes need no routing.
_ROUTING = {"AgentToModuleMapping", "ModuleToAgentUnmapping"}


def restore_pipelines(snapshot: PolicySnapshot) -> tuple[Any, Any]:
    """(env-to-module, module-to-env) pipelines of the EnvRunner that trained the snapshot,
    for its module alone. A module checkpoint without an EnvRunner gets RLlib's defaults."""
    from rllib_mlflow.policy.spaces import space_from_json

    spaces = space_from_json(snapshot.observation_space), space_from_json(snapshot.action_space)
    runner = Path(snapshot.env_runner_dir) if snapshot.env_runner_dir else None
    if runner is None or not (runner / f"env_to_module_connector/{CLASS_FILE}").exists():
        return _default_pipelines(*spaces)
    return (
        _restore(runner / "env_to_module_connector", spaces),
        _restore(runner / "module_to_env_connector", spaces),
    )


def _restore(directory: Path, spaces: tuple) -> Any:
    path = directory / CLASS_FILE
    recorded = pickles.load(path)
    _, kwargs = recorded["ctor_args_and_kwargs"]
    connectors = []
    for cls, args, settings in kwargs["connectors"]:
        cls = pickles.real_class(cls, what="connector", path=path)
        if cls.__name__ not in _ROUTING:
            connectors.append(cls(*args, **_single_module(cls.__name__, settings)))
    pipeline_cls = pickles.real_class(recorded["class"], what="connector pipeline", path=path)
    pipeline = pipeline_cls(*spaces, connectors=connectors)
    # Each connector with state keeps it in a sub-directory named after its class.
    pipeline.set_state(
        {
            sub.name: pickles.load(sub / "state.pkl")
            for sub in directory.iterdir()
            if (sub / "state.pkl").exists()
        }
    )
    return pipeline


def _single_module(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """A connector's recorded settings, for one module's episodes on the CPU, with the
    statistics frozen at the checkpoint (as the exports carry them)."""
    settings = dict(settings)
    if "multi_agent" in settings:
        settings["multi_agent"] = False
    if "device" in settings:
        settings["device"] = None  # the recorded torch.device is not rebuilt from a pickle
    if name == "MeanStdFilter":
        settings["update_stats"] = False
    return settings


def _default_pipelines(observation_space, action_space) -> tuple[Any, Any]:
    """RLlib's default pipelines, for a module saved without the EnvRunner that ran it: no
    record of normalize_actions or clip_actions, so actions are the module's own."""
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.env import INPUT_ENV_SINGLE_SPACES, INPUT_ENV_SPACES

    config = AlgorithmConfig().environment(normalize_actions=False, clip_actions=False)
    spaces = {
        key: (observation_space, action_space)
        for key in (INPUT_ENV_SPACES, INPUT_ENV_SINGLE_SPACES, DEFAULT_MODULE_ID)
    }
    return (
        config.build_env_to_module_connector(spaces=spaces),
        config.build_module_to_env_connector(spaces=spaces),
    )


class EnvRunnerReplay:
    """Episodes that receive given observations and rewards, acted on by the module through
    RLlib's pipelines as `SingleAgentEnvRunner._sample` does with explore=False."""

    def __init__(self, snapshot: PolicySnapshot, module: Any):
        from rllib_mlflow.policy.spaces import space_from_json

        self.module = module
        self.env_to_module, self.module_to_env = restore_pipelines(snapshot)
        self.spaces = (
            space_from_json(snapshot.observation_space),
            space_from_json(snapshot.action_space),
        )
        self.shared_data: dict[str, Any] = {}
        self.episodes: list[Any] = []
        self.to_module: dict[str, Any] = {}
        self._taken: tuple[list, dict[str, Any]] = ([], {})

    def reset(self, observations: list) -> dict[str, Any]:
        """New episodes, one per observation; returns the module's input batch."""
        from ray.rllib.core.columns import Columns
        from ray.rllib.env.single_agent_episode import SingleAgentEpisode

        obs_space, act_space = self.spaces
        self.episodes = [
            SingleAgentEpisode(observation_space=obs_space, action_space=act_space)
            for _ in observations
        ]
        for episode, observation in zip(self.episodes, observations, strict=True):
            episode.add_env_reset(observation=observation, infos={})
        self.to_module = self._run_env_to_module(**{Columns.OBS: observations})
        return self.to_module

    def act(self) -> tuple[np.ndarray, np.ndarray]:
        """(the actions RLlib sends the env, the module's action_dist_inputs)."""
        import torch
        from ray.rllib.core.columns import Columns

        with torch.no_grad():
            to_env = self.module.forward_inference(self.to_module)
            dist_inputs = self._dist_inputs(to_env)
            to_env = self.module_to_env(
                rl_module=self.module,
                batch=to_env,
                episodes=self.episodes,
                explore=False,
                shared_data=self.shared_data,
            )
        actions = to_env.pop(Columns.ACTIONS)
        actions_for_env = to_env.pop(Columns.ACTIONS_FOR_ENV, actions)
        self._taken = (actions, to_env)
        return np.stack([np.asarray(a) for a in actions_for_env]), dist_inputs

    def step(self, observations: list, rewards: np.ndarray) -> dict[str, Any]:
        """Each episode takes the action `act` chose and receives its next observation and
        the reward for that action; returns the module's next input batch."""
        from ray.rllib.core.columns import Columns

        actions, to_env = self._taken
        for i, episode in enumerate(self.episodes):
            episode.add_env_step(
                observation=observations[i],
                action=actions[i],
                reward=float(rewards[i]),
                infos={},
                terminated=False,
                truncated=False,
                extra_model_outputs={key: value[i] for key, value in to_env.items()},
            )
        self.to_module = self._run_env_to_module(
            batch={}, **{Columns.OBS: observations, Columns.ACTIONS: actions}
        )
        return self.to_module

    def _run_env_to_module(self, **data: Any) -> dict[str, Any]:
        return self.env_to_module(
            rl_module=self.module,
            episodes=self.episodes,
            explore=False,
            shared_data=self.shared_data,
            **data,
        )

    def _dist_inputs(self, to_env: dict[str, Any]) -> np.ndarray:
        """The module's action_dist_inputs (DQN's Q-values: its inference output holds only
        the greedy actions), without the time axis a recurrent module adds."""
        from ray.rllib.core.columns import Columns

        if hasattr(self.module, "uses_dueling"):
            inputs = self.module.compute_q_values(self.to_module)["qf_preds"]
        else:
            inputs = to_env[Columns.ACTION_DIST_INPUTS]
        inputs = inputs.detach().clone()
        return (inputs[:, 0] if self.module.is_stateful() else inputs).numpy()


def unbatched(observations: Any) -> list:
    """One raw observation per row, from a list of them, a batched array, or a dict (or
    tuple) of batched arrays, as RLlib's episodes take them."""
    if isinstance(observations, list):
        return observations
    from ray.rllib.utils.spaces.space_utils import unbatch

    if isinstance(observations, np.ndarray):
        return list(observations)
    return unbatch(observations)
