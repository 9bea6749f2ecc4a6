"""Export RLlib checkpoints to TF SavedModel, Keras `.h5`, ONNX and LiteRT, verified against
RLlib.

`export_checkpoint` is the entry point. Each module is exported into a temporary
directory beside the output, checked for parity, and only then moved into place, so a
failed export leaves nothing half-written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rllib_mlflow.errors import RLlibMLflowError, UnsupportedModuleError
from rllib_mlflow.export.agreement import DEFAULT_MIN_AGREEMENT
from rllib_mlflow.export.policy_file import FORMAT_FILES, policy_json
from rllib_mlflow.export.refusals import naming_the_others, parity_refusal
from rllib_mlflow.policy.serving import POLICY_FILE
from rllib_mlflow.rllib.reader import read_snapshots
from rllib_mlflow.rllib.snapshot import PolicySnapshot
from rllib_mlflow.rllib.uris import CheckpointLike

logger = logging.getLogger(__name__)

FORMATS = ("saved_model", "h5", "onnx")  # the default
# LiteRT files are converted from the SavedModel; asked for alone, it is made and dropped.
LITERT_FORMATS = ("tflite", "tflite_int8")
ALL_FORMATS = (*FORMATS, *LITERT_FORMATS)


@dataclass(frozen=True)
class ExportedPolicy:
    """One exported module: where it is and what it holds."""

    module_id: str
    path: Path
    formats: tuple[str, ...]
    metadata: dict[str, Any]  # the content of policy.json

    @property
    def policy(self) -> dict[str, Any]:
        """Deprecated name of `metadata` (it holds policy.json, not a policy)."""
        warnings.warn(
            "ExportedPolicy.policy is deprecated: use ExportedPolicy.metadata",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.metadata

    @property
    def parity(self) -> dict[str, Any] | None:
        return self.metadata.get("parity")

    @property
    def refused(self) -> dict[str, str]:
        """Requested formats that could not be made for this module, with the reason."""
        return self.metadata.get("refused_formats", {})


def export_checkpoint(
    checkpoint_path: CheckpointLike,
    output_dir: str | os.PathLike,
    formats: tuple[str, ...] | list[str] = FORMATS,
    module_id: str | None = None,
    verify: bool = True,
    *,
    overwrite: bool = False,
    parity_observations: int | None = None,
    min_int8_agreement: float = DEFAULT_MIN_AGREEMENT,
) -> list[ExportedPolicy]:
    """Export an RLlib checkpoint's policies to standard model formats.

    Args:
        checkpoint_path: an Algorithm, MultiRLModule or RLModule checkpoint directory,
            a URI such as ``s3://bucket/run/checkpoint_000003``, or a ``ray.tune.Checkpoint``.
        output_dir: where to write. A single module's files go directly into it; for a
            multi-module checkpoint, one sub-directory per module id.
        formats: any of ``"saved_model"``, ``"h5"``, ``"onnx"``, ``"tflite"`` (LiteRT,
            float32) and ``"tflite_int8"`` (LiteRT, int8-quantized).
        module_id: export only this module of a multi-module checkpoint.
        verify: compare every export with RLlib's own policy on sampled observations
            and fail (writing nothing) beyond tolerance. The report goes to policy.json.
        overwrite: replace existing export files in ``output_dir``.
        parity_observations: number of observations for the parity check (default 1000).
        min_int8_agreement: the share of observations on which ``tflite_int8`` must act like
            RLlib (it cannot be exact); below it that format is refused, the others written.

    Returns:
        One `ExportedPolicy` per exported module.
    """
    formats = validate_formats(formats)
    output = Path(output_dir)
    snapshots = read_snapshots(checkpoint_path, module_id)
    single = len(snapshots) == 1
    targets = {s.module_id: output if single else output / s.module_id for s in snapshots}
    for target in targets.values():
        _check_target(target, overwrite)
    for snapshot in snapshots:
        check_supported(snapshot, formats)
    exported = []
    for s in snapshots:
        try:
            target = targets[s.module_id]
            args = (s, target, formats, verify, parity_observations)
            exported.append(export_snapshot(*args, min_int8_agreement=min_int8_agreement))
        except UnsupportedModuleError as error:
            if len(snapshots) == 1:
                raise
            raise naming_the_others(error, s, snapshots) from error
    return exported


def export_snapshot(
    snapshot: PolicySnapshot,
    target: Path,
    formats: tuple[str, ...],
    verify: bool = True,
    parity_observations: int | None = None,
    *,
    min_int8_agreement: float = DEFAULT_MIN_AGREEMENT,
) -> ExportedPolicy:
    """Write one module's exports into `target`, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        refused = _write_formats(snapshot, staging, formats)
        formats = tuple(f for f in formats if f not in refused)
        parity, quantized = None, {}
        exact = tuple(f for f in formats if f != "tflite_int8")  # int8 is measured instead
        if verify and exact:
            parity = _verify(snapshot, staging, exact, parity_observations, refused)
        if "tflite_int8" in formats:  # quantized once the float formats are proven exact
            quantized = _write_int8(snapshot, staging, refused, verify, min_int8_agreement)
        formats = tuple(f for f in formats if f not in refused)
        _drop_unrequested_saved_model(staging, formats)
        policy = policy_json(snapshot, formats, parity, refused, quantized)
        (staging / POLICY_FILE).write_text(json.dumps(policy, indent=2))
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Exported module %r to %s (%s)", snapshot.module_id, target, ", ".join(formats))
    return ExportedPolicy(snapshot.module_id, target, formats, policy)


def _verify(
    snapshot: PolicySnapshot,
    staging: Path,
    formats: tuple[str, ...],
    observations: int | None,
    refused: dict[str, str],
) -> dict[str, Any]:
    """The parity report; each format that fails it is deleted and added to `refused`, so
    that the others are still written (ParityError when none passes)."""
    from rllib_mlflow.export.parity import DEFAULT_OBSERVATIONS, check_parity, refusal

    count = observations or DEFAULT_OBSERVATIONS
    try:
        parity = check_parity(snapshot, str(staging), list(formats), count)
    except RLlibMLflowError:
        raise
    except Exception as error:  # RLlib's module, its connectors or a format's runtime
        raise parity_refusal(snapshot, error) from error
    for fmt, result in parity["failed"].items():
        refused[fmt] = refusal(result, count)
        logger.warning("Module %r: no %s: it %s", snapshot.module_id, fmt, refused[fmt])
        path = staging / FORMAT_FILES[fmt]
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return parity


def _write_int8(
    snapshot: PolicySnapshot,
    staging: Path,
    refused: dict[str, str],
    verify: bool,
    min_agreement: float,
) -> dict[str, Any]:
    """Write `tflite_int8` and measure it against RLlib (with `verify`); below
    `min_agreement`, or where it cannot be made, it is refused and the others kept. Returns
    what policy.json records of it."""
    from rllib_mlflow.export import litert
    from rllib_mlflow.export.agreement import describe, measure_int8_agreement
    from rllib_mlflow.export.parity import format_runner

    try:
        _check_int8_possible(snapshot, refused)
        act = format_runner("saved_model", str(staging), snapshot)  # loaded once, for both
        source = litert.quantize(snapshot, str(staging), act)
    except UnsupportedModuleError as error:
        refused["tflite_int8"] = str(error)
        logger.warning("Module %r: no tflite_int8: %s", snapshot.module_id, error)
        return {}
    record: dict[str, Any] = {"calibration": source, "agreement": None}
    if not verify:
        return {"tflite_int8": record}
    record["agreement"] = report = measure_int8_agreement(
        snapshot, str(staging), min_agreement, act
    )
    if not report["passed"]:
        (staging / FORMAT_FILES["tflite_int8"]).unlink()
        refused["tflite_int8"] = (
            f"int8 quantization {describe(report)}, below min_int8_agreement "
            f"{min_agreement:.1%}. The float32 formats (tflite included) are exact; lower the "
            "threshold only if such a policy is good enough for you."
        )
        logger.warning("Module %r: no tflite_int8: %s", snapshot.module_id, refused["tflite_int8"])
    return {"tflite_int8": record}


def _check_int8_possible(snapshot: PolicySnapshot, refused: dict[str, str]) -> None:
    if "saved_model" in refused:
        raise UnsupportedModuleError(
            f"tflite_int8 is converted from the SavedModel, which is not made for this policy: "
            f"{refused['saved_model']}"
        )
    if snapshot.is_stateful:
        raise UnsupportedModuleError(
            "tflite_int8 is not made for stateful policies yet (its agreement with RLlib is "
            "measured on single observations); use tflite, which is exact."
        )


def _drop_unrequested_saved_model(staging: Path, formats: tuple[str, ...]) -> None:
    """The SavedModel LiteRT was converted from, when it was not asked for itself."""
    if "saved_model" not in formats:
        shutil.rmtree(staging / FORMAT_FILES["saved_model"], ignore_errors=True)


def validate_formats(formats: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`formats` as a tuple of known format names, or a ValueError naming the known ones."""
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",")]
    # "tflite-int8" as well as "tflite_int8", as "saved-model" for "saved_model".
    formats = [f.replace("-", "_") for f in formats]
    unknown = [f for f in formats if f not in ALL_FORMATS]
    if unknown or not formats:
        raise ValueError(f"Unknown export format(s) {unknown}; choose from {list(ALL_FORMATS)}.")
    return tuple(dict.fromkeys(formats))


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{target} already exists and is not empty. Choose another output directory "
            "or pass overwrite=True (--overwrite)."
        )


def check_supported(snapshot: PolicySnapshot, formats: tuple[str, ...]) -> None:
    """Refuse only when none of `formats` can be made for the module."""
    if "onnx" in formats or snapshot.network is not None:
        return
    from rllib_mlflow.export.convert import converter_missing

    reason = converter_missing()
    if reason:
        raise UnsupportedModuleError(
            f"Cannot export {list(formats)} for module {snapshot.module_id!r}: "
            f"{snapshot.unsupported_reason} The TF formats need onnx2tf, but {reason}. "
            "Or use formats=['onnx'] (--formats onnx)."
        )


def _write_formats(
    snapshot: PolicySnapshot, staging: Path, formats: tuple[str, ...]
) -> dict[str, str]:
    """Write every format that can be made; return {format: why not} for the others."""
    from rllib_mlflow.export.onnx import write_onnx

    refused: dict[str, str] = {}
    onnx_path = staging / FORMAT_FILES["onnx"]
    if "onnx" in formats or snapshot.network is None:
        write_onnx(snapshot, str(onnx_path))  # the TF formats of traced modules start here
    litert = [f for f in LITERT_FORMATS if f in formats]
    for fmt in ("saved_model", "h5"):
        if fmt not in formats and not (fmt == "saved_model" and litert):
            continue
        try:
            _write_tf_format(snapshot, staging, fmt, onnx_path)
        except UnsupportedModuleError as error:
            refused[fmt] = str(error)
            logger.warning("Module %r: no %s: %s", snapshot.module_id, fmt, error)
    if "tflite" in formats:
        try:
            _write_tflite(snapshot, staging, refused)
        except UnsupportedModuleError as error:
            refused["tflite"] = str(error)
            logger.warning("Module %r: no tflite: %s", snapshot.module_id, error)
    if "onnx" not in formats and onnx_path.exists():
        onnx_path.unlink()
    if len(refused) == len(formats):
        raise UnsupportedModuleError(
            f"None of {list(formats)} can be made for module {snapshot.module_id!r}: "
            f"{refused}. Add 'onnx' to the formats."
        )
    return refused


def _write_tf_format(snapshot: PolicySnapshot, staging: Path, fmt: str, onnx_path: Path) -> None:
    path = str(staging / FORMAT_FILES[fmt])
    if snapshot.network is None:
        from rllib_mlflow.export import convert

        if fmt == "saved_model":
            convert.write_saved_model_from_onnx(snapshot, str(onnx_path), path)
        else:
            convert.write_h5_from_onnx(snapshot, path)
        return
    from rllib_mlflow.export.keras import build_keras_model
    from rllib_mlflow.export.tensorflow import write_h5, write_saved_model

    model = build_keras_model(snapshot)
    if fmt == "h5":
        write_h5(model, path)
    else:
        write_saved_model(model, snapshot, path)


def _write_tflite(snapshot: PolicySnapshot, staging: Path, refused: dict[str, str]) -> None:
    if "saved_model" in refused:
        raise UnsupportedModuleError(
            f"LiteRT is converted from the SavedModel, which is not made for this policy: "
            f"{refused['saved_model']}"
        )
    from rllib_mlflow.export.litert import write_tflite

    write_tflite(str(staging / FORMAT_FILES["saved_model"]), str(staging / FORMAT_FILES["tflite"]))


def _move_into_place(staging: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for item in staging.iterdir():
        destination = target / item.name
        if destination.is_dir():
            shutil.rmtree(destination)
        elif destination.exists():
            destination.unlink()
        os.replace(item, destination)
