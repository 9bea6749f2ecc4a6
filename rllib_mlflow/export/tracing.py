"""What torch's ONNX tracer needs to trace RLlib modules as users write them.

Ray's own `TinyAtariCNN` squeezes two dims at once (`torch.squeeze(x, dim=[-1, -2])`),
which torch's TorchScript exporter reads as one int and fails on ("only one element tensors
can be converted to Python scalars"); RLlib's Gaussian heads (`clip_log_std`) and modules
splitting mean from log std `chunk` their output, which the exporter writes as slices at
offsets computed from the tensor's shape at run time, and onnx2tf converts to empty tensors.
`onnx_additions` adds both cases while we export.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.onnx import symbolic_helper, symbolic_opset11

# Public in torch (documented), missing from its stubs' __all__.
_register = torch.onnx.register_custom_op_symbolic  # pyright: ignore[reportPrivateImportUsage]
_unregister = torch.onnx.unregister_custom_op_symbolic  # pyright: ignore[reportPrivateImportUsage]
_torch_squeeze = symbolic_opset11.squeeze  # pyright: ignore[reportPrivateImportUsage]
_torch_chunk = symbolic_opset11.prim_constant_chunk  # pyright: ignore[reportPrivateImportUsage]


@contextmanager
def onnx_additions(opset: int) -> Iterator[None]:
    """Symbolics the TorchScript exporter lacks, registered only while one export runs (the
    registry is process-wide; other exports in the process keep torch's own)."""
    _register("aten::squeeze", _squeeze, opset)
    _register("prim::ConstantChunk", _constant_chunk, opset)
    try:
        yield
    finally:
        _unregister("aten::squeeze", opset)
        _unregister("prim::ConstantChunk", opset)


def _squeeze(g, self, dim=None):
    """aten::squeeze over several dims as torch does it: only the dims of size 1 go."""
    dims = _constant_dims(dim)
    rank = symbolic_helper._get_tensor_rank(self)
    if dims is None or rank is None:  # no dim, one dim, or dims known only at run time
        return _torch_squeeze(g, self, dim)
    dims = sorted({d % rank for d in dims}, reverse=True)
    sizes = symbolic_helper._get_tensor_sizes(self) or [None] * rank
    if all(sizes[d] is not None for d in dims):
        axes = sorted(d for d in dims if sizes[d] == 1)
        return symbolic_helper._squeeze_helper(g, self, axes) if axes else self
    if 0 in dims:  # the batch axis, whose size varies: torch's check at run time
        for d in dims:  # the last first, so that the others keep their index
            self = _torch_squeeze(g, self, g.op("Constant", value_t=torch.tensor(d)))
        return self
    # Sizes unknown only because the tracer lost them (behind a padding it computes, as in
    # TinyAtariCNN): fixed by the observation shape, so a plain Squeeze, without the If node
    # onnx2tf cannot convert. Were one not 1, ONNX Runtime would raise and parity refuse.
    return symbolic_helper._squeeze_helper(g, self, sorted(dims))


def _constant_chunk(g, self, chunks: int, dim: int):
    """torch.chunk of a dim whose size the trace knows (a layer's width, not the batch) as
    slices at constant offsets, as torch cuts it: pieces of ceil(size / chunks)."""
    rank = symbolic_helper._get_tensor_rank(self)
    size = None if rank is None else symbolic_helper._get_tensor_dim_size(self, dim % rank)
    if rank is None or size is None:
        return _torch_chunk(g, self, chunks, dim)
    step, axis = -(-size // chunks), dim % rank
    return [
        symbolic_helper._slice_helper(
            g, self, axes=[axis], starts=[i * step], ends=[min((i + 1) * step, size)]
        )
        for i in range(chunks)
    ]


def _constant_dims(dim) -> list[int] | None:
    """The dims of `squeeze(x, dim=[...])` when there are several and they are constants."""
    if dim is None or not symbolic_helper._is_constant(dim):
        return None
    value = symbolic_helper._get_const(dim, "t", "dim")
    if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.numel() < 2:
        return None
    return [int(d) for d in value.tolist()]
