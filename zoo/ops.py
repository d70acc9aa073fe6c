"""Small numerical kernels shared by the architectures.

:class:`Linear` is ``nn.Linear`` with two CPU float32 speed-ups, both invisible to the state
dict and guarded by the parity tests:

- a few rows times a wide weight is computed as ``(W @ xᵀ)ᵀ`` (:func:`linear`);
- at load time, zoo also holds the weight in MKL's packed GEMM layout (:meth:`Linear.pack`),
  which runs prefill-sized products 15-30 % faster and batched decoding up to twice as fast,
  at the speed of the plain weight for one row. The loader then gives the plain weight's pages
  back to the page cache (:func:`zoo.checkpoint.release`), so memory stays near the file size.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


# rows for which W @ xᵀ beats x @ Wᵀ on CPU (measured: 2 rows lose, 4 to 32 win clearly, 64 and
# more about tie, and a full-size prefill loses to the extra copy of its large output)
TRANSPOSED_ROWS = (4, 32)

# MKL packs a weight for an expected number of rows; measured here, a pack for 128 rows is the
# best single choice from 1 row (as fast as the plain weight) to prefill sizes (15-30 % faster)
PACK_ROWS = 128


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, computed as ``(weight @ xᵀ)ᵀ`` for 4 to 32 rows on CPU.

    Batched decoding multiplies a few rows by a large ``[out, in]`` weight. For that shape
    MKL's ``x @ Wᵀ`` runs well below memory bandwidth (measured here: 16 rows × a 58101×512
    output head, 29 ms against 11 ms), while ``W @ xᵀ`` streams the weight once. One row and
    large batches keep ``F.linear``. The result is copied back to row-major layout (rows × out
    floats, small next to the weight).
    """
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    lo, hi = TRANSPOSED_ROWS
    if lo <= rows <= hi and x.device.type == "cpu" and x.dtype == torch.float32:
        flat = x.reshape(rows, x.shape[-1])
        if bias is None:
            y = weight @ flat.t()
        else:
            y = torch.addmm(bias[:, None], weight, flat.t())
        return y.t().contiguous().view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


def packing_available() -> bool:
    """Whether this torch can pack weights for MKL (x86 CPU builds), and ``ZOO_PACK`` is not 0."""
    if os.environ.get("ZOO_PACK", "1") == "0":
        return False
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) computed with :func:`linear`, or with
    an MKL-packed copy of the weight once :meth:`pack` has made one.

    The packed copy is used only while it still describes the weight: in eval mode, for CPU
    float32 input, with the same weight tensor at the same version (an in-place update such as
    ``weight.copy_()`` or ``load_state_dict`` is noticed, ``model.to(...)`` too), and without
    autograd. Edits through ``weight.data`` bypass version counting: call :meth:`unpack` (or
    :func:`unpack_all`) after such edits.
    """

    _packed = None  # (packed weight, weight's data_ptr, weight's version) once packed

    def pack(self) -> bool:
        """Make the packed copy (CPU float32 weights only); returns whether it did."""
        w = self.weight
        if not packing_available() or w.device.type != "cpu" or w.dtype != torch.float32 or w.is_meta:
            return False
        with torch.no_grad():
            packed = torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), PACK_ROWS)
        self._packed = (packed, w.data_ptr(), w._version)
        return True

    def unpack(self) -> None:
        self._packed = None

    def _use_packed(self, x: torch.Tensor) -> bool:
        packed = self._packed
        if packed is None or self.training or x.device.type != "cpu" or x.dtype != torch.float32:
            return False
        w = self.weight
        if w.data_ptr() != packed[1] or w._version != packed[2] or w.device.type != "cpu" or w.dtype != torch.float32:
            self._packed = None  # the weight changed under the packed copy: drop it for good
            return False
        return not (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_packed(x):
            rows = x.numel() // x.shape[-1]
            flat = x.reshape(rows, x.shape[-1]).contiguous()
            # the plain weight is passed for its shape only: with batch_size == rows MKL computes
            # from the packed copy and never reads it
            y = torch.ops.mkl._mkl_linear(flat, self._packed[0], self.weight, self.bias, rows)
            return y.view(*x.shape[:-1], y.shape[-1])
        return linear(x, self.weight, self.bias)

    def __getstate__(self):  # pickling / deepcopy: the packed copy is a cache, not state
        state = dict(self.__dict__)
        state.pop("_packed", None)
        return state


def pack_all(model: nn.Module) -> list:
    """Pack every :class:`Linear` of ``model``; returns the modules packed."""
    return [m for m in model.modules() if isinstance(m, Linear) and m.pack()]


def unpack_all(model: nn.Module) -> None:
    """Drop every packed copy (after editing weights through ``.data``, say)."""
    for m in model.modules():
        if isinstance(m, Linear):
            m.unpack()
