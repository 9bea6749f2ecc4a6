"""Read a checkpoint's pickles as data: never run what a pickle asks for.

A pickle may call any importable function with any arguments (`os.system("...")` takes three
opcodes), and checkpoints travel: a team bucket, an archive from a former colleague. RLlib,
`torch.load` and MLflow all unpickle them as they come. `load` instead

- builds for real only the data types checkpoints are made of (`_REAL`: numpy arrays and
  dtypes, containers, gymnasium spaces, numpy's random generators);
- stands a `StandIn` in for every other class or function: it records the name and what
  the pickle passes it (arguments, state, items) and runs nothing. Classes Ray moved or
  dropped, functions and classes pickled by value, optimizers, callbacks and the user's own
  classes all arrive this way, so that what inference needs (weights, config, spaces, filter
  statistics) is read from plain data whichever Ray wrote the checkpoint;
- refuses, naming it, a callable that only an attack would pickle (`_REFUSED`), before
  building anything more of that file.

Reading those StandIns back into RLlib's own classes (`real_class`) imports only Ray's
modules, modules this process already imported, and those the user trusts
(RLLIB_MLFLOW_TRUSTED_MODULES).
"""

from __future__ import annotations

import copyreg
import importlib
import io
import pickle
import sys
from pathlib import Path
from typing import Any

from rllib_mlflow.environment_variables import RLLIB_MLFLOW_TRUSTED_MODULES
from rllib_mlflow.errors import CheckpointError, UnsafeCheckpointError

# Callables only an attack pickles: they run programs, evaluate code, touch files or import.
_REFUSED_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty",
    "ctypes", "marshal", "pickle", "_pickle", "code", "codeop", "multiprocessing", "signal",
    "webbrowser", "asyncio", "_posixsubprocess", "pdb", "timeit", "io", "_io",
}  # fmt: skip
_REFUSED_BUILTINS = {
    "eval", "exec", "compile", "__import__", "getattr", "setattr", "delattr", "open",
    "input", "breakpoint", "globals", "locals", "vars", "exit", "quit", "help", "memoryview",
}  # fmt: skip

# The data types built for real, by module: what numpy, the containers and gymnasium's
# spaces pickle as. Each is a type or a constructor of plain values.
_REAL = {
    "builtins": {"set", "frozenset", "bytearray", "bytes", "complex", "slice", "range", "list",
                 "dict", "tuple", "int", "float", "str", "bool", "object"},
    "collections": {"OrderedDict", "defaultdict", "deque", "Counter"},
    "_codecs": {"encode"},  # bytes in protocol-2 pickles
    "copyreg": {"_reconstructor"},
    "numpy": {"ndarray", "dtype"},
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.numeric": {"_frombuffer"},
    "numpy.random._pickle": {"__generator_ctor", "__bit_generator_ctor", "__randomstate_ctor"},
    "numpy.random._pcg64": {"PCG64"},
    "numpy.random._mt19937": {"MT19937"},
    "gymnasium.spaces.box": {"Box"},
    "gymnasium.spaces.discrete": {"Discrete"},
    "gymnasium.spaces.multi_discrete": {"MultiDiscrete"},
    "gymnasium.spaces.multi_binary": {"MultiBinary"},
    "gymnasium.spaces.dict": {"Dict"},
    "gymnasium.spaces.tuple": {"Tuple"},
}  # fmt: skip


# Ray's classes that moved since a release wrote them: old dotted name -> this Ray's.
MOVED = {
    "ray.rllib.algorithms.sac.torch.sac_torch_rl_module.SACTorchRLModule":
        "ray.rllib.algorithms.sac.torch.default_sac_torch_rl_module.DefaultSACTorchRLModule",
    "ray.rllib.core.rl_module.rl_module.SingleAgentRLModuleSpec":
        "ray.rllib.core.rl_module.rl_module.RLModuleSpec",
    "ray.rllib.core.rl_module.marl_module.MultiAgentRLModuleSpec":
        "ray.rllib.core.rl_module.multi_rl_module.MultiRLModuleSpec",
}  # fmt: skip


class StandIn:
    """What a pickle named but was not allowed to build: `standin_for` is its dotted name;
    `args`, `kwargs`, `state`, `items` and `listitems` what the pickle gave it. Attributes
    set by the pickle's state dict are readable as attributes."""

    standin_for = "?"
    standin_import: str | None = None  # "module:QualName" of a class or function by reference
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    items: dict[Any, Any]
    listitems: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:
        # __new__, not __init__: pickle's NEWOBJ calls only __new__.
        self = super().__new__(cls)
        self.__dict__.update(args=args, kwargs=kwargs, state=None, items={}, listitems=[])
        return self

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict, slots)
        if isinstance(state, dict):
            for key, value in state.items():
                if isinstance(key, str) and key not in self.__dict__:
                    self.__dict__[key] = value

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["items"][key] = value

    def append(self, value: Any) -> None:
        self.__dict__["listitems"].append(value)

    def extend(self, values: Any) -> None:
        self.__dict__["listitems"].extend(values)

    def __call__(self, *args: Any, **kwargs: Any) -> StandIn:
        return _stand_in(f"{self.standin_for}()")(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<stand-in for {self.standin_for}>"


_STAND_INS: dict[str, type[StandIn]] = {}


def _stand_in(dotted: str) -> type[StandIn]:
    """One StandIn subclass per dotted name, named like the original (so `__name__` and
    `__module__` still say what it was)."""
    if dotted not in _STAND_INS:
        module, _, name = dotted.rpartition(".")
        _STAND_INS[dotted] = type(name, (StandIn,), {"standin_for": dotted, "__module__": module})
    return _STAND_INS[dotted]


def is_stand_in(value: Any) -> bool:
    """Whether `value` is a StandIn, or a class or function that a StandIn replaced."""
    return isinstance(value, StandIn) or (isinstance(value, type) and issubclass(value, StandIn))


def stand_in_name(value: Any) -> str:
    """The dotted name of what a StandIn replaced (of an instance: its class)."""
    return value.standin_for


def class_name(value: Any) -> str:
    """The name of a class a pickle named: real, a StandIn, or one pickled by value
    (cloudpickle's `_make_skeleton_class(type, name, ...)`, e.g. Tune's wrapper of an
    Algorithm or the eager TF policies RLlib makes at run time)."""
    if isinstance(value, StandIn) and value.standin_for.endswith("._make_skeleton_class"):
        return str(value.args[1]) if len(value.args) > 1 else "?"
    if is_stand_in(value):
        return stand_in_name(value).rpartition(".")[2]
    return getattr(value, "__name__", type(value).__name__)


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg's `_reconstructor`, for pickles of a class that is a StandIn here."""
    if isinstance(cls, type) and issubclass(cls, StandIn):
        return cls()
    return copyreg._reconstructor(cls, base, state)  # type: ignore[attr-defined]


class _DataUnpickler(pickle.Unpickler):
    def __init__(self, stream: Any, path: Path) -> None:
        super().__init__(stream)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core."):  # numpy 1.x's name of numpy 2's numpy._core
            module = f"numpy._core.{module[len('numpy.core.') :]}"
        if (module, name) == ("importlib", "import_module"):
            # cloudpickle imports a module a by-value class refers to this way (old-stack
            # eager TF policy classes: DQN's, SAC's); as a StandIn it imports nothing.
            return _stand_in("importlib.import_module")
        refused = module.split(".")[0] in _REFUSED_MODULES or (
            module == "builtins" and name in _REFUSED_BUILTINS
        )
        if refused:
            raise UnsafeCheckpointError(
                f"Checkpoint file {self.path} asks to call {module}.{name}, which no RLlib "
                "checkpoint needs: refused, nothing of it was run. Do not use this checkpoint; "
                "if you wrote it yourself, re-save it from the training run."
            )
        if (module, name) == ("copyreg", "_reconstructor"):
            return _reconstructor
        if name in _REAL.get(module, ()):
            return getattr(importlib.import_module(module), name)
        stand_in = _stand_in(f"{module}.{name}")
        # The pickle named it by module and qualified name: how to import it again (an
        # env class); the dotted name alone does not say where a nested class starts.
        stand_in.standin_import = f"{module}:{name}"
        return stand_in

    def persistent_load(self, pid: Any) -> Any:
        return _stand_in(f"persistent_id.{type(pid).__name__}")(pid)


def loads(data: bytes, path: Path) -> Any:
    """`load` of bytes read from `path` (named in errors)."""
    return _DataUnpickler(io.BytesIO(data), path).load()


def load(path: Path) -> Any:
    """The data of the pickle at `path` (see the module's docstring), or CheckpointError."""
    if not path.exists():
        raise CheckpointError(
            f"Checkpoint file {path} is missing: the checkpoint is incomplete or truncated. "
            "Use another checkpoint of the run, or re-save it with `algo.save()`."
        )
    try:
        return loads(path.read_bytes(), path)
    except UnsafeCheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(
            f"Checkpoint file {path} is corrupted or truncated ({type(error).__name__}: "
            f"{error}). Use another checkpoint of the run."
        ) from error


def real_class(value: Any, *, what: str, path: Path) -> type:
    """The class a pickle named, imported for real: RLlib's own (found where it moved to,
    see `MOVED`), a subclass of one in a module this process already imported (a custom
    RLModule), or a class of a trusted module; CheckpointError saying how to trust it
    otherwise. Only classes: the caller constructs them with the pickle's arguments, which
    a function, or a class of the standard library (a file handler), must never get."""
    if not is_stand_in(value):
        return value
    dotted = MOVED.get(stand_in_name(value), stand_in_name(value))
    module, _, name = dotted.rpartition(".")
    if not (module.split(".")[0] == "ray" or module in sys.modules or _trusted(module)):
        raise CheckpointError(
            f"Checkpoint {path} needs the {what} {dotted}, which is not Ray's: rllib-mlflow "
            "imports a checkpoint's own code only from modules you trust. If it is yours, "
            f"set RLLIB_MLFLOW_TRUSTED_MODULES={module.split('.')[0]} (a comma-separated list "
            "of module prefixes) and make it importable."
        )
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        # A package the class's file imports (Ray's MobileNet example: torchvision) is
        # missing where the export runs, not where training ran: say which to install.
        missing = getattr(error, "name", None) if isinstance(error, ImportError) else None
        missing = None if missing and module.startswith(missing) else missing  # the file itself
        todo = (
            f" Install it where you export (pip install {missing.split('.')[0]})."
            if missing
            else ""
        )
        raise CheckpointError(
            f"Checkpoint {path} needs the {what} {dotted}, which cannot be imported here "
            f"({type(error).__name__}: {error}).{todo}"
        ) from error
    if not (isinstance(found, type) and _may_build(found)):
        raise UnsafeCheckpointError(
            f"Checkpoint {path} names {dotted} as its {what}: not one of RLlib's classes "
            "nor of a trusted module, so it is not built (set RLLIB_MLFLOW_TRUSTED_MODULES "
            "to its module if you trust it)."
        )
    return found


def _may_build(cls: type) -> bool:
    rllib = [c for c in cls.__mro__ if c.__module__.startswith("ray.rllib.")]
    return bool(rllib) or _trusted(cls.__module__)


def _trusted(module: str) -> bool:
    prefixes = [p.strip() for p in RLLIB_MLFLOW_TRUSTED_MODULES.text().split(",") if p.strip()]
    return any(p == "*" or module == p or module.startswith(f"{p}.") for p in prefixes)


def trusts_everything() -> bool:
    """Whether the user trusts every checkpoint's code (RLLIB_MLFLOW_TRUSTED_MODULES=*)."""
    return _trusted("\0")


def rebuild(value: Any, path: Path) -> Any:
    """`value` with each StandIn of a class `real_class` allows made real: a class as
    itself, an instance called with the pickle's arguments, or given its state."""
    if isinstance(value, dict):
        return {k: rebuild(v, path) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(rebuild(v, path) for v in value)
    if isinstance(value, type) and issubclass(value, StandIn):
        return real_class(value, what="class", path=path)
    if not isinstance(value, StandIn):
        return value
    cls: Any = real_class(type(value), what="class", path=path)
    args, kwargs, state = value.args, value.kwargs, value.state
    instance = cls(*rebuild(args, path), **rebuild(kwargs, path)) if args or kwargs else None
    if instance is None:
        instance = cls.__new__(cls)
    if state is not None:
        state = rebuild(state, path)
        if hasattr(instance, "__setstate__"):
            instance.__setstate__(state)
        else:
            instance.__dict__.update(state)
    return instance
