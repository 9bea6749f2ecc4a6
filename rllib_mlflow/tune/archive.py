"""Where the checkpoints under a folder are, whatever their names: a user's archive of
`algo.save()` directories (`archive/ppo_run1_iter5/`), a Tune experiment or trial, or
`ray_results` with several experiments; and which Ray release wrote a checkpoint.

A checkpoint directory is recognised by its files, not its name, because people name
`algo.save()` directories as they like. The walk stops at each checkpoint it finds (a
checkpoint's own sub-folders hold files that look alike, e.g. a module's
class_and_ctor_args.pkl) and skips hidden folders (the callback's staged copies are in one).
"""

from __future__ import annotations

from pathlib import Path

from rllib_mlflow.rllib import layout

# `rllib-mlflow register ~/ray_results` reaches ray_results/<experiment>/<trial>/<checkpoint>.
MAX_DEPTH = 3

# Files one of RLlib's checkpoints has at its top, on either API stack and from any Ray 2.x:
# an Algorithm's metadata and state, an old-stack Policy checkpoint's state.
_MARKER_FILES = ("rllib_checkpoint.json", "algorithm_state.pkl", "policy_state.pkl")

WHAT_IS_RECOGNISED = (
    "directories named checkpoint_* or holding rllib_checkpoint.json, algorithm_state.pkl, "
    "policy_state.pkl, learner_group/, or class_and_ctor_args.pkl with module_state.*"
)


def is_checkpoint_dir(path: Path) -> bool:
    """Whether `path` is an RLlib checkpoint directory (or one Tune began to write)."""
    if not path.is_dir():
        return False
    if path.name.startswith("checkpoint_"):  # Tune's, even one cut short: it will fail, named
        return True
    if any((path / name).is_file() for name in _MARKER_FILES):
        return True
    if (path / "learner_group").is_dir():
        return True
    # An RLModule saved on its own.
    return (path / "class_and_ctor_args.pkl").is_file() and any(path.glob("module_state.*"))


def find_checkpoints(root: Path, max_depth: int = MAX_DEPTH) -> list[Path]:
    """`root` itself if it is a checkpoint, else the checkpoints at most `max_depth` levels
    below it, sorted."""
    if is_checkpoint_dir(root):
        return [root]
    found: list[Path] = []
    level = [root]
    for _ in range(max_depth):
        below: list[Path] = []
        for folder in level:
            for child in _subfolders(folder):
                (found if is_checkpoint_dir(child) else below).append(child)
        level = below
    return sorted(found)


def _subfolders(folder: Path) -> list[Path]:
    try:
        children = sorted(folder.iterdir())
    except OSError:  # unreadable: nothing to find there, and nothing to stop for
        return []
    return [child for child in children if not child.name.startswith(".") and child.is_dir()]


def written_by(checkpoint: str | Path) -> str | None:
    """The Ray version that wrote a local checkpoint, where its rllib_checkpoint.json says."""
    return layout.written_by(Path(checkpoint))
