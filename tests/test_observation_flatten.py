"""policy/flatten.py flattens raw Dict observations with numpy alone (a served model has no
gymnasium nor RLlib); it must agree with RLlib's own `flatten_inputs_to_1d_tensor`, which its
FlattenObservations connector calls (sorted keys at every level), not with
gymnasium.spaces.flatten (the space's own key order), on keyword-built, OrderedDict and
nested spaces (tests/test_no_wrong_action.py checks it against RLlib's EnvRunner)."""

from __future__ import annotations

from collections import OrderedDict

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from rllib_mlflow.policy.flatten import flat_size, flatten_observation
from rllib_mlflow.policy.observations import ObservationConverter
from rllib_mlflow.policy.spaces import space_to_json

SPACE = gym.spaces.Dict(
    {
        "position": gym.spaces.Box(-1.0, 1.0, (2, 2), np.float32),
        "mode": gym.spaces.Discrete(3),
        "switches": gym.spaces.MultiDiscrete([2, 4]),
        "bits": gym.spaces.MultiBinary(3),
        "pair": gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Box(0.0, 1.0, (1,)))),
    }
)
# gymnasium keeps the order keywords, OrderedDicts and lists of pairs are written in (pos
# before flag); it sorts only a plain dict's keys.
KEYWORDS = spaces.Dict(
    pos=spaces.Box(-1, 1, (3,)), flag=spaces.Discrete(2), vel=spaces.Box(0, 1, (2,))
)
NESTED = spaces.Dict(
    [
        (
            "zeta",
            spaces.Tuple(
                (spaces.Discrete(3), spaces.Dict(b=spaces.Box(0, 1, (2,)), a=spaces.Discrete(2)))
            ),
        ),
        (
            "alpha",
            spaces.Dict(OrderedDict(y=spaces.MultiDiscrete([2, 3]), x=spaces.Box(-1, 1, ()))),
        ),
        ("mid", spaces.MultiBinary(2)),
    ]
)
ORDERED = spaces.Dict(
    OrderedDict([("zeta", spaces.Box(-1, 1, (2,))), ("alpha", spaces.Discrete(3))])
)
SPACES = {"every type": SPACE, "keywords": KEYWORDS, "nested pairs": NESTED, "ordered": ORDERED}


def _rllib_flatten(space: gym.Space, sample) -> np.ndarray:
    import tree
    from ray.rllib.utils.numpy import flatten_inputs_to_1d_tensor
    from ray.rllib.utils.spaces.space_utils import get_base_struct_from_space

    batch = tree.map_structure(lambda part: np.asarray(part)[None], sample)
    struct = get_base_struct_from_space(space)
    return flatten_inputs_to_1d_tensor(batch, struct, batch_axis=True)[0]


def test_the_spaces_really_list_their_keys_unsorted():
    assert list(KEYWORDS.spaces) == ["pos", "flag", "vel"]
    assert list(NESTED.spaces) == ["zeta", "alpha", "mid"]
    assert list(ORDERED.spaces) == ["zeta", "alpha"]
    assert list(space_to_json(NESTED)["spaces"]["zeta"]["spaces"][1]["spaces"]) == ["b", "a"]


@pytest.mark.parametrize("name", SPACES)
def test_numpy_flatten_equals_rllibs_own_for_every_space(name):
    from ray.rllib.connectors.env_to_module import FlattenObservations

    space = SPACES[name]
    description = space_to_json(space)
    connector = FlattenObservations(space, spaces.Discrete(2))
    assert (flat_size(description),) == connector.observation_space.shape
    space.seed(0)
    differs_from_gymnasium = False
    for _ in range(50):
        sample = space.sample()
        flat = flatten_observation(description, sample)
        np.testing.assert_array_equal(flat, _rllib_flatten(space, sample))
        gym_flat = gym.spaces.flatten(space, sample).astype(np.float32)
        differs_from_gymnasium |= not np.array_equal(flat, gym_flat)
    assert differs_from_gymnasium == (name != "every type")  # gymnasium's order is not RLlib's


@pytest.fixture
def converter() -> ObservationConverter:
    width = flat_size(space_to_json(SPACE))
    metadata = {
        "observation_space": space_to_json(SPACE),
        "preprocessing": [{"type": "flatten"}],
        "inputs": [{"name": "observations", "shape": [None, width]}],
    }
    return ObservationConverter(metadata)


def test_one_dict_a_list_of_dicts_and_a_dict_of_batches_agree(converter):
    SPACE.seed(1)
    samples = [SPACE.sample() for _ in range(4)]
    want = np.stack([_rllib_flatten(SPACE, s) for s in samples]).astype(np.float32)
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
