"""Train each of Ray's example RLModules briefly and save its checkpoint, for
docs/ray-example-modules.md: `rllib-mlflow export OUT/NAME -o ...` then shows what comes out.

    python scripts/train_ray_example_modules.py OUT [NAME ...]   # default: every NAME

Each configuration is adapted from the Ray example script that uses the module (named in
the docs' table), with one training iteration, tiny layers and small environments (the
test suite's TinyImage instead of Atari, Ray's RockPaperScissors instead of PettingZoo's).
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's tests.envs
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import gymnasium as gym  # noqa: E402
from ray.rllib.algorithms.ppo import PPOConfig  # noqa: E402
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig  # noqa: E402
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec  # noqa: E402
from ray.rllib.core.rl_module.rl_module import RLModuleSpec  # noqa: E402
from ray.tune.registry import register_env  # noqa: E402

from tests import envs  # noqa: E402


def common(cfg, env):
    return (
        cfg.environment(env)
        .framework("torch")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
        .learners(num_learners=0)
        .debugging(seed=0, log_level="ERROR")
        .reporting(min_time_s_per_iteration=0)
    )


def ppo(env, spec, **kw):
    t = dict(train_batch_size_per_learner=200, minibatch_size=100, num_epochs=1)
    t.update(kw)
    return common(PPOConfig(), env).training(**t).rl_module(rl_module_spec=spec)


def two_agent_vpg(specs, **training):
    """Ray's VPG on its two-agent CartPole, agent i acting with module p<i>."""
    from ray.rllib.examples.algorithms.classes.vpg import VPGConfig
    from ray.rllib.examples.envs.classes.multi_agent import MultiAgentCartPole

    register_env("ma_cartpole", lambda _: MultiAgentCartPole(config={"num_agents": 2}))
    return (
        common(VPGConfig(), "ma_cartpole")
        .training(num_episodes_per_train_batch=4, lr=0.01, **training)
        .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=lambda aid, ep, **kw: f"p{aid}")
        .rl_module(rl_module_spec=MultiRLModuleSpec(**specs))
    )


def tiny_cnn():
    from ray.rllib.examples.rl_modules.classes.tiny_atari_cnn_rlm import TinyAtariCNN

    return ppo(
        envs.TINY_IMAGE,
        RLModuleSpec(
            module_class=TinyAtariCNN,
            model_config={
                "conv_filters": [[4, 4, 2, "same"], [8, 4, 2, "same"], [16, 4, 1, "valid"]]
            },
        ),
    )


def lstm():
    from ray.rllib.examples.envs.classes.stateless_cartpole import StatelessCartPole
    from ray.rllib.examples.rl_modules.classes.lstm_containing_rlm import LSTMContainingRLModule

    register_env("stateless_cartpole", lambda cfg: StatelessCartPole())
    return ppo(
        "stateless_cartpole",
        RLModuleSpec(
            module_class=LSTMContainingRLModule,
            model_config={"lstm_cell_size": 16, "dense_layers": [16], "max_seq_len": 10},
        ),
    )


def autoregressive():
    from ray.rllib.examples.envs.classes.correlated_actions_env import CorrelatedActionsEnv
    from ray.rllib.examples.rl_modules.classes.autoregressive_actions_rlm import (
        AutoregressiveActionsRLM,
    )

    register_env("correlated", lambda cfg: CorrelatedActionsEnv(cfg))
    return ppo("correlated", RLModuleSpec(module_class=AutoregressiveActionsRLM))


def vpg():
    from ray.rllib.examples.algorithms.classes.vpg import VPGConfig

    return common(VPGConfig(), "CartPole-v1").training(num_episodes_per_train_batch=4, lr=0.0005)


def vpg_shared():
    """multi_agent/shared_encoder_cartpole.py."""
    from ray.rllib.examples.learners.classes.vpg_torch_learner_shared_optimizer import (
        VPGTorchLearnerSharedOptimizer,
    )
    from ray.rllib.examples.rl_modules.classes import vpg_using_shared_encoder_rlm as m

    env = gym.make("CartPole-v1")
    policy = {"embedding_dim": 8, "hidden_dim": 16}
    encoder = RLModuleSpec(
        module_class=m.SharedEncoder,
        model_config={"embedding_dim": 8},
        observation_space=env.observation_space,
        action_space=env.action_space,
    )
    specs = {
        p: RLModuleSpec(module_class=m.VPGPolicyAfterSharedEncoder, model_config=policy)
        for p in ("p0", "p1")
    }
    specs[m.SHARED_ENCODER_ID] = encoder
    return two_agent_vpg(
        {"multi_rl_module_class": m.VPGMultiRLModuleWithSharedEncoder, "rl_module_specs": specs},
        learner_class=VPGTorchLearnerSharedOptimizer,
    )


def vpg_no_shared():
    """multi_agent/shared_encoder_cartpole.py --no-shared-encoder."""
    from ray.rllib.examples.rl_modules.classes import vpg_using_shared_encoder_rlm as m

    policy = {"embedding_dim": 8, "hidden_dim": 16}
    specs = {
        p: RLModuleSpec(module_class=m.VPGPolicyNoSharedEncoder, model_config=policy)
        for p in ("p0", "p1")
    }
    return two_agent_vpg({"rl_module_specs": specs})


def random_opponent(opponent=None, **opponent_config):
    from ray.rllib.examples.envs.classes.multi_agent import MultiAgentCartPole
    from ray.rllib.examples.rl_modules.classes.random_rlm import RandomRLModule

    register_env("ma_cartpole", lambda _: MultiAgentCartPole(config={"num_agents": 2}))
    specs = MultiRLModuleSpec(
        rl_module_specs={
            "learnable_policy": RLModuleSpec(model_config=DefaultModelConfig(fcnet_hiddens=[16])),
            "random": RLModuleSpec(
                module_class=opponent or RandomRLModule, model_config=opponent_config or None
            ),
        }
    )
    return ppo("ma_cartpole", specs).multi_agent(
        policies={"learnable_policy", "random"},
        policy_mapping_fn=lambda aid, *a, **k: ["learnable_policy", "random"][aid % 2],
        policies_to_train=["learnable_policy"],
    )


def stateful_random_opponent():
    """random_opponent with RandomRLModule's stateful subclass (random_rlm.py)."""
    from ray.rllib.examples.rl_modules.classes.random_rlm import StatefulRandomRLModule

    # RLlib's learner connector asks every stateful module for max_seq_len, trained or not.
    return random_opponent(StatefulRandomRLModule, max_seq_len=10)


def deterministic():
    """Ray's TorchDeterministic as a module's inference distribution (no Ray example uses
    it): PPO's default module acting with the Gaussian's mean on Pendulum."""
    from tests.custom_modules import DeterministicPPOTorchRLModule

    config = {"fcnet_hiddens": [16], "head_fcnet_hiddens": []}
    spec = RLModuleSpec(module_class=DeterministicPPOTorchRLModule, model_config=config)
    return ppo("Pendulum-v1", spec)


def mobilenet():
    """mobilenet_rlm.py's own config (PPO on 3x224x224 RandomEnv images): importing the file
    builds and trains it (module-level code), with torchvision and its ImageNet weights."""
    from ray.rllib.examples.rl_modules.classes import mobilenet_rlm

    return mobilenet_rlm.config


def rps():
    from ray.rllib.connectors.env_to_module import FlattenObservations
    from ray.rllib.examples.envs.classes.multi_agent.rock_paper_scissors import RockPaperScissors
    from ray.rllib.examples.rl_modules.classes import AlwaysSameHeuristicRLM, BeatLastHeuristicRLM

    register_env("rps", lambda cfg: RockPaperScissors(cfg))
    d3 = gym.spaces.Discrete(3)
    specs = MultiRLModuleSpec(
        rl_module_specs={
            "always_same": RLModuleSpec(
                module_class=AlwaysSameHeuristicRLM, observation_space=d3, action_space=d3
            ),
            "beat_last": RLModuleSpec(
                module_class=BeatLastHeuristicRLM, observation_space=d3, action_space=d3
            ),
            "learned": RLModuleSpec(
                model_config=DefaultModelConfig(fcnet_hiddens=[16], vf_share_layers=True)
            ),
        }
    )
    return (
        ppo("rps", specs)
        .env_runners(
            env_to_module_connector=lambda env, spaces, device: (
                FlattenObservations(multi_agent=True, agent_ids={"player1"}),
            )
        )
        .multi_agent(
            policies={"always_same", "beat_last", "learned"},
            policy_mapping_fn=lambda aid, episode, **kw: (
                "learned" if aid == "player1" else random.choice(["always_same", "beat_last"])
            ),
            policies_to_train=["learned"],
        )
    )


def icm():
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.examples.learners.classes.intrinsic_curiosity_learners import (
        ICM_MODULE_ID,
        PPOTorchLearnerWithCuriosity,
    )
    from ray.rllib.examples.rl_modules.classes.intrinsic_curiosity_model_rlm import (
        IntrinsicCuriosityModel,
    )

    specs = MultiRLModuleSpec(
        rl_module_specs={
            DEFAULT_MODULE_ID: RLModuleSpec(model_config=DefaultModelConfig(fcnet_hiddens=[16])),
            ICM_MODULE_ID: RLModuleSpec(
                module_class=IntrinsicCuriosityModel,
                learner_only=True,
                model_config={"feature_dim": 8}
                | {f"{net}_net_hiddens": (16,) for net in ("feature", "inverse", "forward")}
                | {f"{net}_net_activation": "relu" for net in ("feature", "inverse", "forward")},
            ),
        }
    )
    return ppo(
        "CartPole-v1",
        specs,
        learner_class=PPOTorchLearnerWithCuriosity,
        learner_config_dict={"intrinsic_reward_coeff": 0.05, "forward_loss_weight": 0.2},
    )


def modelv2():
    from ray.rllib.core import DEFAULT_POLICY_ID
    from ray.rllib.examples.rl_modules.classes.modelv2_to_rlm import ModelV2ToRLModule

    old = (
        PPOConfig()
        .api_stack(enable_env_runner_and_connector_v2=False, enable_rl_module_and_learner=False)
        .environment("CartPole-v1")
        .training(
            lr=0.0003,
            num_epochs=1,
            vf_loss_coeff=0.01,
            model={"fcnet_hiddens": [16], "fcnet_activation": "linear", "use_lstm": True}
            | {"lstm_cell_size": 16, "vf_share_layers": True},
        )
    )
    new = old.copy(copy_frozen=False).api_stack(
        enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True
    )
    new = (
        new.env_runners(num_env_runners=0)
        .learners(num_learners=0)
        .training(train_batch_size_per_learner=200, minibatch_size=100)
        .debugging(seed=0)
        .reporting(min_time_s_per_iteration=0)
    )
    return new.rl_module(
        rl_module_spec=RLModuleSpec(
            module_class=ModelV2ToRLModule,
            model_config={
                "policy_id": DEFAULT_POLICY_ID,
                "old_api_stack_algo_config": old,
                "max_seq_len": 20,
            },
        )
    )


def custom_dist():
    from ray.rllib.examples.rl_modules.classes.custom_action_distribution_rlm import (
        CustomActionDistributionRLModule,
    )

    return ppo(
        "CartPole-v1",
        RLModuleSpec(
            module_class=CustomActionDistributionRLModule,
            model_config={"action_dist_temperature": 5.0, "hidden_dim": 16},
        ),
    )


def action_masking():
    from ray.rllib.examples.rl_modules.classes.action_masking_rlm import ActionMaskingTorchRLModule

    return ppo(
        envs.ACTION_MASK,
        RLModuleSpec(
            module_class=ActionMaskingTorchRLModule,
            model_config={"fcnet_hiddens": [16], "head_fcnet_hiddens": []},
        ),
    )


def lstm_appo():
    from ray.rllib.algorithms.appo import APPOConfig
    from ray.rllib.examples.envs.classes.stateless_cartpole import StatelessCartPole
    from ray.rllib.examples.rl_modules.classes.lstm_containing_rlm import (
        LSTMContainingRLModuleWithTargetNetwork,
    )

    register_env("stateless_cartpole", lambda cfg: StatelessCartPole())
    spec = RLModuleSpec(
        module_class=LSTMContainingRLModuleWithTargetNetwork,
        model_config={"lstm_cell_size": 16, "dense_layers": [16], "max_seq_len": 10},
    )
    return (
        common(APPOConfig(), "stateless_cartpole")
        .env_runners(rollout_fragment_length=50)
        .training(train_batch_size_per_learner=100)
        .reporting(min_sample_timesteps_per_iteration=200)
        .rl_module(rl_module_spec=spec)
    )


CASES = {
    f.__name__: f
    for f in [
        tiny_cnn,
        lstm,
        autoregressive,
        vpg,
        vpg_shared,
        vpg_no_shared,
        random_opponent,
        stateful_random_opponent,
        rps,
        icm,
        modelv2,
        custom_dist,
        action_masking,
        lstm_appo,
        deterministic,
        mobilenet,
    ]
}


def main(out: str, names: list[str]) -> None:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    for name in names or list(CASES):
        try:
            config = CASES[name]()
        except ImportError as error:  # mobilenet without torchvision: the others still train
            print(name, "not trained:", f"{type(error).__name__}: {error}", flush=True)
            continue
        algo = config.build_algo()
        try:
            algo.train()
            print(name, algo.save(str(Path(out) / name)).checkpoint.path, flush=True)
        finally:
            algo.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
