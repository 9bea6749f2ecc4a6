"""policy/observations.py flattens raw Dict observations with numpy alone (a served model has no
gymnasium); it must agree with gymnasium.spaces.flatten, which RLlib's FlattenObservations
matches (tests/test_user_policies.py checks that against RLlib's EnvRunner)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from rllib_mlflow.policy.observations import ObservationConverter, flatten_observation
from rllib_mlflow.policy.spaces import space_to_json

SPACE = gym.spaces.Dict(
    {
        "position": gym.spaces.Box(-1.0, 1.0, (2, 2), np.float32),
        "mode": gym.spaces.Discrete(3, start=2),
        "switches": gym.spaces.MultiDiscrete([2, 4]),
        "bits": gym.spaces.MultiBinary(3),
        "pair": gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Box(0.0, 1.0, (1,)))),
    }
)


def test_numpy_flatten_equals_gymnasium_for_every_space_type():
    description = space_to_json(SPACE)
    SPACE.seed(0)
    for _ in range(50):
        sample = SPACE.sample()
        np.testing.assert_array_equal(
            flatten_observation(description, sample), gym.spaces.flatten(SPACE, sample)
        )


@pytest.fixture
def converter() -> ObservationConverter:
    width = int(gym.spaces.flatdim(SPACE))
    metadata = {
        "observation_space": space_to_json(SPACE),
        "preprocessing": [{"type": "flatten"}],
        "inputs": [{"name": "observations", "shape": [None, width]}],
    }
    return ObservationConverter(metadata)


def test_one_dict_a_list_of_dicts_and_a_dict_of_batches_agree(converter):
    SPACE.seed(1)
    samples = [SPACE.sample() for _ in range(4)]
    want = np.stack([gym.spaces.flatten(SPACE, s) for s in samples]).astype(np.float32)
    np.testing.assert_array_equal(converter.feeds(samples)["observations"], want)
    np.testing.assert_array_equal(converter.feeds(samples[0])["observations"], want[:1])
    plain = {k: v for k, v in samples[0].items() if k != "pair"}  # tuples do not batch
    batches = {k: np.stack([s[k] for s in samples]) for k in plain}
    batches["pair"] = [s["pair"] for s in samples]
    np.testing.assert_array_equal(converter.feeds(batches)["observations"], want)
    np.testing.assert_array_equal(converter.feeds(want)["observations"], want)  # flat already


def test_a_dict_without_a_key_is_refused_with_the_keys_expected(converter):
    SPACE.seed(2)
    sample = SPACE.sample()
    del sample["mode"]
    with pytest.raises(ValueError, match=r"lacks key\(s\) \['mode'\]"):
        converter.feeds(sample)
