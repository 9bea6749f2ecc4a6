"""Rebuild a new-API-stack RLModule from its checkpoint directory, as RLlib's
`RLModule.from_checkpoint` does, but from the plain data `pickles.load` reads: the class and
its constructor arguments from `class_and_ctor_args.pkl` (the class imported only where
`pickles.real_class` allows it), the weights from `module_state.pkl` or `module_state.pt`
(Ray 2.40's: a torch.save file of numpy arrays).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from rllib_mlflow.errors import (
    CheckpointError,
    UnsafeCheckpointError,
    UnsupportedModuleError,
    module_refusal,
)
from rllib_mlflow.rllib import pickles

CLASS_FILE = "class_and_ctor_args.pkl"
STATE_FILES = ("module_state.pkl", "module_state.pt")


def module_state_file(module_dir: Path) -> Path:
    """The module's weights file: the first of `STATE_FILES` there (named when missing)."""
    found = [module_dir / name for name in STATE_FILES if (module_dir / name).is_file()]
    return found[0] if found else module_dir / STATE_FILES[0]


def read_module_state(module_dir: Path) -> Any:
    """The module's weights ({name: array}) as plain data."""
    path = module_state_file(module_dir)
    if path.suffix == ".pt" and zipfile.is_zipfile(path):
        return _torch_file(path)
    return pickles.load(path)


def _torch_file(path: Path) -> Any:
    """The pickle inside a torch.save zip (`<name>/data.pkl`), read as data: RLlib saved
    numpy arrays there, so no tensor storage is needed."""
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not names:
            raise CheckpointError(f"{path} is a zip without data.pkl: not a torch.save file.")
        return pickles.loads(archive.read(names[0]), path)


def restore_module(module_dir: Path) -> Any:
    """RLlib's RLModule of `module_dir`, built by this Ray from the checkpoint's data.

    Typed Any: RLlib's module classes are many, and each caller knows which it reads."""
    if pickles.trusts_everything():  # the user vouches for the checkpoint's code
        from ray.rllib.core.rl_module.rl_module import RLModule

        return _torch_only(RLModule.from_checkpoint(str(module_dir.resolve())), module_dir)
    return _torch_only(_rebuild(module_dir), module_dir)


def _rebuild(module_dir: Path) -> Any:
    state = read_module_state(module_dir)  # first: a missing one says "incomplete"
    info = pickles.load(module_dir / CLASS_FILE)
    cls = pickles.real_class(info["class"], what="RLModule class", path=module_dir)
    try:
        args, kwargs = pickles.rebuild(info["ctor_args_and_kwargs"], module_dir)
    except UnsafeCheckpointError:
        raise  # an attack says so itself
    except CheckpointError as error:  # e.g. ModelV2ToRLModule's old-stack AlgorithmConfig
        raise CheckpointError(_arguments_refusal(cls, module_dir, error)) from error
    try:
        module = cls(*args, **kwargs)
        module.set_state(state)
    except Exception as error:
        raise CheckpointError(
            f"RLlib could not rebuild module {module_dir.name!r} from {module_dir} "
            f"({type(error).__name__}: {error}). The checkpoint may be truncated, or its "
            "class may take other arguments in this Ray release."
        ) from error
    return module


def _torch_only(module: Any, module_dir: Path) -> Any:
    """`module`, if it is a torch RLModule: any other (Ray's RandomRLModule, its
    rock-paper-scissors heuristics) acts in Python without a network to export."""
    from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule

    if isinstance(module, TorchRLModule):
        return module
    cls = type(module)
    others = [
        d.name for d in sorted(module_dir.parent.iterdir()) if _is_torch_module(d, module_dir)
    ]
    todo = "Only modules with a torch network are exported" + (
        f"; export the checkpoint's others with --module-id (module_id=): {', '.join(others)}."
        if others
        else "."
    )
    raise UnsupportedModuleError(
        module_refusal(
            f"{cls.__module__}.{cls.__qualname__}",
            module_dir.name,
            "reading the module",
            "it is not a torch RLModule: it computes its actions in Python, with no network",
            todo,
        )
    )


def _is_torch_module(directory: Path, besides: Path) -> bool:
    """Whether `directory` is another module of the checkpoint with a torch network (or
    one whose class cannot be looked at without importing it: the export will tell)."""
    if directory == besides or not (directory / CLASS_FILE).is_file():
        return False
    from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule

    try:
        info = pickles.load(directory / CLASS_FILE)
        cls = pickles.real_class(info["class"], what="RLModule class", path=directory)
    except Exception:  # the export of that module names its own problem
        return True
    return isinstance(cls, type) and issubclass(cls, TorchRLModule)


def _arguments_refusal(cls: type, module_dir: Path, error: CheckpointError) -> str:
    return module_refusal(
        f"{cls.__module__}.{cls.__qualname__}",
        module_dir.name,
        "reading its constructor arguments",
        str(error).replace(f"Checkpoint {module_dir} needs", "needs"),
        "They hold more than data: for a checkpoint you trust, "
        "RLLIB_MLFLOW_TRUSTED_MODULES='*' lets RLlib restore it itself.",
    )
