"""Errors raised by rllib-mlflow. Each message names the problem and what to do next."""


class RLlibMLflowError(Exception):
    """Base class of every error this library raises on purpose."""


class CheckpointError(RLlibMLflowError, ValueError):
    """The path is not a readable RLlib checkpoint, or it lacks the module asked for."""


class UnsupportedModuleError(RLlibMLflowError):
    """The policy cannot be rebuilt in the requested format."""


class ParityError(RLlibMLflowError):
    """An export does not act like the RLlib policy it came from."""


class RegistryError(RLlibMLflowError, ValueError):
    """A registered model, version, alias or iteration is invalid or cannot be found."""


class TrackingError(RLlibMLflowError):
    """The MLflow tracking server is unreachable or refuses the request.

    `status` is the HTTP status of a refusal (401, 403, ...), None when unreachable."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class UnsafePathError(RLlibMLflowError, ValueError):
    """A server named a file outside the folder it is being written to."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint's pickle asks to run code that no RLlib checkpoint needs; refused."""


def module_refusal(
    module_class: str, module_id: str, step: str, cause: BaseException | str, todo: str
) -> str:
    """The one line saying which module could not be exported, at which step, why, and what
    to do; `cause` (an error of torch, numpy or a converter) only as a short reason."""
    if isinstance(cause, BaseException):
        first = " ".join(str(cause).split("\n", 1)[0].split())
        cause = f"{type(cause).__name__}: {first}" if first else type(cause).__name__
    cause = cause if len(cause) <= 200 else cause[:197] + "..."
    because = f" ({cause})" if cause else ""
    name = module_class.rsplit(".", 1)[-1]
    return f"{name} (module {module_id!r}, {module_class}): {step} failed{because}. {todo}"


class EnvCreationError(RLlibMLflowError, ValueError):
    """The environment to play a policy in cannot be made from what the version records
    (or what was passed): the message says what was tried and what to pass instead."""
