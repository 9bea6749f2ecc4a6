"""Make a Ray 1.x pickled `checkpoint-N` and convert it to an `algo.save()` directory.

Ray 1.x (and 2.0) saved an algorithm as ONE pickled file, `checkpoint_00000N/checkpoint-N`
(plus `checkpoint-N.tune_metadata`), which rllib-mlflow refuses. This script checks the
conversion that rllib-mlflow's refusal message advises, in two steps, each run with the
python of a throwaway virtualenv (never the project's own environment):

1. With Ray 1.13 (Python 3.9, `pip install ray[rllib]==1.13.0 gym==0.21.0 torch`):

       python tests/archive/convert_ray1.py train OUT_DIR

   trains PPO on CartPole (torch, tiny net) for one iteration, `trainer.save(OUT_DIR)`
   (the pickled layout) and records the actions of `compute_single_action(explore=False)`
   on 50 seeded observations in OUT_DIR/truth.npz.

2. With Ray 2.3 to 2.9 (e.g. `pip install 'ray[rllib]==2.9.3'`, Python 3.11):

       python tests/archive/convert_ray1.py convert CHECKPOINT OUT_DIR [--literal]

   builds the same config and loads the legacy state the way that works (below), saves
   with `algo.save(OUT_DIR)` and checks the restored actions against truth.npz.
   `--literal` instead follows the advice word for word (`algo.restore(CHECKPOINT)`), which
   FAILS for a Ray 1.x checkpoint: the pickled worker state names `gym.spaces.box.Box`
   (gym is not installed beside Ray 2.3+, which uses gymnasium) and the policy class by its
   Ray 1.x path `ray.rllib.agents.ppo.ppo_torch_policy.PPOTorchPolicy`, which Ray 2.3+ no
   longer has, so Ray 2.9.3's own `pickle.loads` raises ModuleNotFoundError
   ('ray.rllib.agents'); Ray 2.3.1's `restore` fails earlier, looking for a
   `.tune_metadata` file inside the checkpoint directory (FileNotFoundError).

Checked on a real Ray 1.13.0 checkpoint (Python 3.9.18, torch 1.13.1, gym 0.21.0): converted
with Ray 2.9.3 and with Ray 2.3.1, the restored actions equal Ray 1.13's on all 50
observations, and `rllib-mlflow export` of the saved directory passes parity. The
MeanStdFilter field translation below (`--observation-filter MeanStdFilter`) is written
from Ray 1.13's and 2.3/2.9's filter.py but was not run; Ray 2.0 checkpoints were not made.

What works: unpickle `checkpoint-N` yourself, with a tolerant unpickler that stands in for
classes this Ray lacks (they occur only in the policy specs and spaces, which the freshly
built algorithm already has), keep the filters and policy states, translate Ray 1.x's
RunningStat fields (MeanStdFilter) to the names Ray 2.3+ uses, and hand them to
`algo.__setstate__({"worker": {"filters": ..., "state": ...}})`; then `algo.save()`.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np

N_OBS = 50
POLICY_ID = "default_policy"
# Ray 1.x legacy config dict; Ray 2.3-2.9 read it with PPOConfig().update_from_dict().
CONFIG: dict[str, Any] = {
    "env": "CartPole-v1",
    "framework": "torch",
    "num_workers": 0,
    "train_batch_size": 200,
    "sgd_minibatch_size": 64,
    "num_sgd_iter": 2,
    "model": {"fcnet_hiddens": [16, 16]},
    "seed": 0,
}


def observations() -> np.ndarray:
    """50 seeded CartPole-like observations (cart pos, velocity, pole angle, ang. vel.)."""
    rng = np.random.default_rng(0)
    bounds = np.array([2.4, 3.0, 0.2, 3.0])
    return (rng.uniform(-1.0, 1.0, size=(N_OBS, 4)) * bounds).astype(np.float32)


def actions(algo: Any, obs: np.ndarray) -> np.ndarray:
    return np.array([int(algo.compute_single_action(o, explore=False)) for o in obs])


def train(out_dir: str, observation_filter: str) -> None:
    """Ray 1.x/2.0: train one iteration and save the pickled checkpoint-N layout."""
    import ray

    try:
        from ray.rllib.agents.ppo import PPOTrainer as Algo  # Ray 1.x
    except ImportError:
        from ray.rllib.algorithms.ppo import PPO as Algo  # Ray 2.0
    ray.init(num_cpus=2, include_dashboard=False)
    config = dict(CONFIG, observation_filter=observation_filter)
    algo = Algo(config=config)
    algo.train()
    path = algo.save(out_dir)
    obs = observations()
    np.savez(Path(out_dir) / "truth.npz", obs=obs, actions=actions(algo, obs))
    manifest = {"ray_version": ray.__version__, "checkpoint": path, "config": config}
    (Path(out_dir) / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(path)


class _Missing:
    """Stands in for a class this Ray lacks (gym's spaces, Ray 1.x's policy classes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _LegacyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except Exception:  # missing, or a Ray 2.3 shim that raises on import
            return type(name, (_Missing,), {"__module__": module})


def _loads(data: bytes) -> Any:
    import io

    return _LegacyUnpickler(io.BytesIO(data)).load()


def _new_running_stats(filters: dict[str, Any]) -> dict[str, Any]:
    """Ray 1.x's RunningStat kept _n/_M/_S; Ray 2.3+ names them num_pushes/mean_array/
    std_array."""
    for flt in filters.values():
        for name in ("rs", "buffer"):
            stat = getattr(flt, name, None)
            if stat is not None and hasattr(stat, "_n"):
                stat.num_pushes = stat.__dict__.pop("_n")
                stat.mean_array = stat.__dict__.pop("_M")
                stat.std_array = stat.__dict__.pop("_S")
    return filters


def legacy_worker_state(checkpoint: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The worker state ({"filters", "state"}) and .tune_metadata of a Ray 1.x/2.0
    checkpoint (the checkpoint_00000N directory or the checkpoint-N file in it)."""
    path = Path(checkpoint)
    if path.is_dir():
        (path,) = [f for f in path.glob("checkpoint-*") if f.suffix != ".tune_metadata"]
    state = _loads(path.read_bytes())
    worker = _loads(state["worker"])
    meta_path = Path(str(path) + ".tune_metadata")
    meta = _loads(meta_path.read_bytes()) if meta_path.exists() else {}
    clean = {"filters": _new_running_stats(worker["filters"]), "state": worker["state"]}
    return clean, meta


def convert(checkpoint: str, out_dir: str, literal: bool) -> None:
    """Ray 2.3-2.9: load the legacy checkpoint into a freshly built algorithm and save."""
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig

    ray.init(num_cpus=2, include_dashboard=False)
    root = Path(checkpoint)
    truth_dir = root.parent if root.is_dir() else root.parent.parent
    manifest = json.loads((truth_dir / "manifest.json").read_text())
    algo = PPOConfig().update_from_dict(manifest["config"]).build()
    truth = np.load(truth_dir / "truth.npz")
    fresh = bool((actions(algo, truth["obs"]) == truth["actions"]).all())
    print(f"before loading, actions already equal to the checkpoint's: {fresh}")
    if literal:  # the advice word for word
        algo.restore(checkpoint)
    else:
        worker_state, meta = legacy_worker_state(checkpoint)
        algo.__setstate__({"worker": worker_state})
        algo._iteration = meta.get("iteration", 0)  # Trainable.iteration when saved
    saved = algo.save(out_dir)
    saved = getattr(saved, "checkpoint", saved)  # Ray 2.9: a TrainingResult
    saved = getattr(saved, "path", saved)  # Ray 2.9: a Checkpoint
    print(saved)
    got = actions(algo, truth["obs"])
    equal = bool((got == truth["actions"]).all())
    print(f"actions equal to Ray {manifest['ray_version']}'s: {equal}")
    if not equal:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_train = sub.add_parser("train")
    p_train.add_argument("out_dir")
    p_train.add_argument("--observation-filter", default="NoFilter")
    p_conv = sub.add_parser("convert")
    p_conv.add_argument("checkpoint")
    p_conv.add_argument("out_dir")
    p_conv.add_argument("--literal", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    if args.cmd == "train":
        train(args.out_dir, args.observation_filter)
    else:
        convert(args.checkpoint, args.out_dir, args.literal)


if __name__ == "__main__":
    main()
