"""RLModules as users write them around what Ray ships, for the tests and
scripts/train_ray_example_modules.py (importable by both, and by RLlib's EnvRunner, which
rebuilds a module from its class's dotted name).
"""

from __future__ import annotations

from typing import Any

from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import (
    TorchDeterministic,
    TorchDiagGaussian,
)


class DeterministicMean(TorchDeterministic):
    """Ray's TorchDeterministic with the `from_logits` RLlib's GetActions calls: Ray 2.60's
    has none (Distribution's raises NotImplementedError), so a module cannot act with it as
    shipped. The action is the logits themselves."""

    @classmethod
    def from_logits(cls, logits, **kwargs) -> DeterministicMean:
        return cls(loc=logits)


class DeterministicPPOTorchRLModule(DefaultPPOTorchRLModule):
    """PPO's default module, trained with its Gaussian, acting at inference (explore=False)
    through TorchDeterministic on the Gaussian's mean: a policy made deterministic for
    deployment."""

    def get_inference_action_dist_cls(self) -> type[DeterministicMean]:
        return DeterministicMean

    # Exploring and training keep the Gaussian (TorchRLModule's default for Box actions;
    # its own default for these two is the inference distribution).
    def get_exploration_action_dist_cls(self) -> type[Any]:
        return TorchDiagGaussian

    def get_train_action_dist_cls(self) -> type[Any]:
        return TorchDiagGaussian

    def _forward_inference(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        out = self._forward(batch, **kwargs)
        mean, _ = out[Columns.ACTION_DIST_INPUTS].chunk(2, dim=-1)  # the log std goes
        out[Columns.ACTION_DIST_INPUTS] = mean
        return out


class BareDeterministicPPOTorchRLModule(DeterministicPPOTorchRLModule):
    """The same with Ray's TorchDeterministic as shipped: RLlib cannot act with it."""

    def get_inference_action_dist_cls(self) -> type[TorchDeterministic]:  # pyright: ignore[reportIncompatibleMethodOverride]
        return TorchDeterministic
