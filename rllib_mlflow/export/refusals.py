"""Failures inside torch's tracer, the module's forward pass or the parity check, told as
one line a user can act on: the module, the step, the cause and what to do."""

from __future__ import annotations

from rllib_mlflow.errors import UnsupportedModuleError, module_refusal
from rllib_mlflow.rllib.snapshot import PolicySnapshot


def tracing_refusal(snapshot: PolicySnapshot, error: BaseException) -> UnsupportedModuleError:
    """A failure inside torch's tracer (or the module's forward pass it runs) as one line:
    the module, the step, the cause and what to do."""
    if isinstance(error, NotImplementedError):
        todo = (
            "The module does not implement inference (forward_inference), as a training-only "
            "module such as a curiosity model: it has no policy to export."
        )
    elif isinstance(error, KeyError) and error.args == ("action_dist_inputs",):
        todo = (
            "Its forward_inference returns no action_dist_inputs (an encoder, or a module that "
            "returns actions itself): there is no action distribution to export."
        )
    elif isinstance(error, KeyError):
        todo = (
            f"Its forward pass reads {error}, which RLlib's EnvRunner does not give a module "
            "acting alone (e.g. a MultiRLModule's shared encoder output): only modules that "
            "act on their own observations are exported."
        )
    else:
        todo = (
            "Make its forward_inference traceable by torch.jit.trace (torch operations on the "
            "batch's tensors: no numpy, .item() or Python branches on tensor values)."
        )
    return UnsupportedModuleError(
        module_refusal(snapshot.module_class, snapshot.module_id, "tracing to ONNX", error, todo)
    )


def parity_refusal(snapshot: PolicySnapshot, error: BaseException) -> UnsupportedModuleError:
    """A failure while running RLlib's reference or an export for the parity check."""
    return UnsupportedModuleError(
        module_refusal(
            snapshot.module_class,
            snapshot.module_id,
            "checking parity with RLlib",
            error,
            "Nothing was written: unchecked, no export is known to act like RLlib. "
            "verify=False (--no-verify) skips the check, at your own risk.",
        )
    )


def naming_the_others(
    error: UnsupportedModuleError, snapshot: PolicySnapshot, snapshots: list[PolicySnapshot]
) -> UnsupportedModuleError:
    """In a multi-module checkpoint (a policy beside a curiosity model, ...), one module that
    cannot be exported need not stop the others: say how to export them."""
    others = [s.module_id for s in snapshots if s is not snapshot]
    return UnsupportedModuleError(
        f"{error} Export the checkpoint's other modules with --module-id (module_id=): "
        f"{', '.join(others)}."
    )
