"""TF SavedModel and `.h5` for modules Keras cannot rebuild, converted from their ONNX graph
by onnx2tf (a maintained ONNX-to-TensorFlow converter).

The SavedModel comes from the full graph (actions included), so its `serving_default` has
the same named inputs and outputs as `model.onnx`. The `.h5` comes from the network alone
(graph inputs -> action_dist_inputs) and is a tf_keras (Keras 2) file, as onnx2tf writes:
load it with `tf_keras.models.load_model(path)`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from rllib_mlflow.errors import UnsupportedModuleError, module_refusal
from rllib_mlflow.rllib.snapshot import PolicySnapshot

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "install the converter with `pip install --no-deps -r requirements-convert.txt` "
    "(onnx2tf, tf-keras and their helpers, pinned in rllib-mlflow's repository)"
)


def converter_missing() -> str | None:
    """Why onnx2tf cannot run here, or None when it can."""
    missing = [
        m
        for m in ("onnx2tf", "tf_keras", "onnx_graphsurgeon", "sng4onnx", "ai_edge_litert")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        return f"the ONNX-to-TensorFlow converter is not installed ({', '.join(missing)}): " + (
            INSTALL_HINT
        )
    return None


def write_saved_model_from_onnx(snapshot: PolicySnapshot, onnx_path: str, path: str) -> None:
    """Convert the full ONNX graph into a SavedModel directory at `path`."""
    with tempfile.TemporaryDirectory(prefix="rllib_mlflow_onnx2tf_") as work:
        _convert(snapshot, onnx_path, work, h5=False)
        Path(path).mkdir(parents=True)
        for name in ("saved_model.pb", "variables", "assets", "fingerprint.pb"):
            source = Path(work, name)
            if source.is_dir():
                shutil.copytree(source, Path(path, name))
            elif source.exists():
                shutil.copy(source, Path(path, name))


def write_h5_from_onnx(snapshot: PolicySnapshot, path: str) -> None:
    """Convert the network alone (graph inputs -> action_dist_inputs) into a tf_keras `.h5`."""
    from rllib_mlflow.export.onnx import write_onnx

    with tempfile.TemporaryDirectory(prefix="rllib_mlflow_onnx2tf_") as work:
        network = os.path.join(work, "network.onnx")
        write_onnx(snapshot, network, dist_inputs_only=True)
        _convert(snapshot, network, os.path.join(work, "out"), h5=True)
        shutil.copy(os.path.join(work, "out", "network_float32.h5"), path)


def _convert(snapshot: PolicySnapshot, onnx_path: str, output_dir: str, *, h5: bool) -> None:
    reason = converter_missing()
    if reason:
        raise UnsupportedModuleError(reason)
    onnx2tf = _import_onnx2tf()

    try:
        onnx2tf.convert(
            input_onnx_file_path=_folded(onnx_path, output_dir),
            output_folder_path=output_dir,
            output_h5=h5,
            non_verbose=True,
            # Our inputs are the observations as the env gives them (images NHWC), not
            # NCHW tensors for onnx2tf to transpose.
            keep_shape_absolutely_input_names=[name for name, _ in snapshot.graph_inputs()],
        )
    except (Exception, SystemExit) as error:  # onnx2tf exits on ops it cannot convert
        raise UnsupportedModuleError(
            module_refusal(
                snapshot.module_class,
                snapshot.module_id,
                "converting its ONNX graph to TensorFlow (onnx2tf)",
                error,
                "The ONNX file is exported all the same (formats=['onnx'], --formats onnx); "
                "the TF formats need operators onnx2tf converts.",
            )
        ) from error


def _folded(onnx_path: str, work: str) -> str:
    """The graph with its constant subgraphs folded by ONNX Runtime's basic (standard-ONNX)
    optimizations: torch computes a ZeroPad2d's pads with a chain of ops onnx2tf lays out
    wrongly, folded they become the convolution's own pads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    # Same file name: onnx2tf names its outputs after it (network.onnx -> network_float32.h5).
    folded = os.path.join(work, "folded", os.path.basename(onnx_path))
    os.makedirs(os.path.dirname(folded), exist_ok=True)
    options.optimized_model_filepath = folded
    onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    return folded


def _import_onnx2tf():
    """onnx2tf seeds Python's and NumPy's global random generators on import: keep the
    caller's sequences as they were."""
    import random

    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    import onnx2tf

    random.setstate(python_state)
    np.random.set_state(numpy_state)
    return onnx2tf
