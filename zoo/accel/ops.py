"""Small numerical kernels shared by the architectures.

:class:`Linear` is ``nn.Linear`` with CPU float32 speed-ups, invisible to the state dict and
guarded by the parity tests:

- products run on oneDNN's float32 linear where torch has it (x86 builds; :func:`onednn`), which
  on a 2-core AMD EPYC runs transformer shapes 1.2-2x faster than MKL's ``F.linear``: a tied
  head or any weight zoo does not copy is read as it is (:func:`linear`);
- at load time, zoo also holds each weight in the library's own layout (:meth:`Linear.pack_weights`:
  oneDNN's, or MKL's packed GEMM layout where there is no oneDNN or ``ZOO_GEMM=mkl``). The loader
  then gives the plain weight's pages back to the page cache (:func:`zoo.checkpoint.release`),
  so memory stays near the file size;
- without oneDNN, a few rows times a wide weight is computed as ``(W @ xᵀ)ᵀ``.
"""
from __future__ import annotations

import functools
import mmap
import os
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


# rows for which W @ xᵀ beats x @ Wᵀ on CPU (measured: 2 rows lose, 4 to 32 win clearly, 64 and
# more about tie, and a full-size prefill loses to the extra copy of its large output)
TRANSPOSED_ROWS = (4, 32)

# MKL packs a weight for an expected number of rows; on a 2-core x86 CPU a pack for 128 rows is the
# best single choice from 1 row (as fast as the plain weight) to prefill sizes (15-30 % faster)
PACK_ROWS = 128


_onednn_linear = torch.ops.mkldnn._linear_pointwise.default if hasattr(torch.ops.mkldnn, "_linear_pointwise") else None
_ONEDNN: Optional[bool] = None  # onednn(), decided once


def onednn() -> bool:
    """Whether CPU float32 products run on oneDNN: torch has its linear (x86 CPU builds) and
    ``ZOO_GEMM`` is not ``mkl``. Read once (set ``zoo.accel.ops._ONEDNN = None`` to read again)."""
    global _ONEDNN
    if _ONEDNN is None:
        _ONEDNN = (os.environ.get("ZOO_GEMM", "onednn") != "mkl" and _onednn_linear is not None
                   and torch.backends.mkldnn.is_available())
    return _ONEDNN


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for inference: on oneDNN for CPU float32 where torch has it
    (:func:`onednn`), else computed as ``(weight @ xᵀ)ᵀ`` for 4 to 32 rows on CPU.

    Batched decoding multiplies a few rows by a large ``[out, in]`` weight. For that shape
    MKL's ``x @ Wᵀ`` runs well below memory bandwidth (on a 2-core x86 CPU: 16 rows × a 58101×512
    output head, 29 ms against 11 ms), while ``W @ xᵀ`` streams the weight once. One row and
    large batches keep ``F.linear``. The result is copied back to row-major layout (rows × out
    floats, small next to the weight).
    """
    if (x.dtype == torch.float32 and weight.dtype == torch.float32 and x.is_cpu and weight.is_cpu
            and weight.dim() == 2 and weight.is_contiguous() and x.numel() and onednn()
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        return _onednn_linear(x if x.is_contiguous() else x.contiguous(), weight, bias, "none", [], "")
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
    """Whether this torch can hold weights in oneDNN's or MKL's layout (x86 CPU builds), and
    ``ZOO_PACK`` is not 0."""
    if os.environ.get("ZOO_PACK", "1") == "0":
        return False
    return onednn() or (torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear"))


def _scratch(shape, dtype) -> torch.Tensor:
    """A temporary tensor in its own anonymous memory map, returned to the system as soon as
    it is dropped. (From the allocator, temporaries of a few MB stay in the process heap after
    they are freed: packing GPT-2 that way kept ~140 MB more resident, varying run to run.)"""
    n = 1
    for d in shape:
        n *= d
    buf = mmap.mmap(-1, max(1, n * dtype.itemsize))
    return torch.frombuffer(buf, dtype=dtype, count=n).view(shape)


def tensor_stamp(tensors) -> list:
    """What identifies the state of some tensors: storage address, version, dtype."""
    return [(t.data_ptr(), t._version, t.dtype) for t in tensors if t is not None]


# the operator itself rather than its overload packet: a decode step calls it ~50 times
_mkl_linear = torch.ops.mkl._mkl_linear.default if hasattr(torch.ops.mkl, "_mkl_linear") else None


class Packed:
    """A copy of CPU float32 ``[out, in]`` weights in the GEMM library's layout (oneDNN's where
    :func:`onednn`, else MKL's packed layout), with their bias.

    Several weights (q, k and v, say) can be packed as one product: their outputs come out side
    by side, as from one Linear with the weights stacked. It is a cache, used only while it
    still describes its sources (:meth:`usable`: the same tensors at the same versions, so an
    in-place update such as ``weight.copy_()`` or ``load_state_dict`` is noticed, and so is
    ``model.to(...)``), for CPU float32 input and without autograd. Edits through
    ``weight.data`` bypass version counting: drop the copy (:func:`unpack_all`) after those.
    """

    __slots__ = ("data", "bias", "shape", "stamp", "sources", "onednn")

    def __init__(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor] = ()):
        with torch.no_grad():
            w = weights[0].detach()
            if len(weights) > 1 or not w.is_contiguous():  # MKL packs from a contiguous matrix
                rows = sum(t.shape[0] for t in weights)
                w = torch.cat([t.detach() for t in weights], out=_scratch((rows, w.shape[1]), w.dtype))
            self.onednn = onednn()
            self.data = w.to_mkldnn() if self.onednn else torch.ops.mkl._mkl_reorder_linear_weight(w, PACK_ROWS)
            self.bias = None if not biases else biases[0].detach() if len(biases) == 1 else torch.cat(biases)
        self.shape = torch.empty(1).expand(w.shape)  # MKL wants the plain weight for its shape only
        self.stamp = tensor_stamp([*weights, *biases])
        # the very tensors it copies: a new weight at a freed address has version 0 too
        self.sources = tuple(t for t in (*weights, *biases) if t is not None)

    @classmethod
    def of(cls, weights: Sequence[torch.Tensor], biases: Sequence[Optional[torch.Tensor]] = ()) -> Optional["Packed"]:
        """The packed copy, or None where packing does not apply (not CPU float32 2-D weights,
        inference tensors, no MKL, ``ZOO_PACK=0``, or biases on some of the weights only)."""
        present = [b for b in biases if b is not None]
        if not packing_available() or any(w.device.type != "cpu" or w.dtype != torch.float32 or w.dim() != 2
                                           for w in weights):
            return None
        if any(t.is_inference() for t in (*weights, *present)):
            return None  # an inference tensor has no version counter to notice changes by
        if present and len(present) != len(weights):
            return None
        return cls(weights, present)

    def usable(self, x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[Optional[torch.Tensor]] = ()) -> bool:
        """Whether ``x`` times these (current) weights may be computed from this copy.

        Called on every product, so kept to a few attribute reads (a decode step makes ~50)."""
        if x.dtype is not torch.float32 or not x.is_cpu:
            return False
        if torch.is_grad_enabled() and (x.requires_grad or any(
                t.requires_grad for t in (*weights, *biases) if t is not None)):
            return False
        return self.current(weights, biases)

    def current(self, weights: Sequence[torch.Tensor], biases: Sequence[Optional[torch.Tensor]] = ()) -> bool:
        """Whether this copy still holds these weights (not replaced, not changed in place)."""
        now = tuple(t for t in (*weights, *biases) if t is not None)
        return (len(now) == len(self.sources) and all(a is b for a, b in zip(now, self.sources))
                and tensor_stamp(now) == self.stamp)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        # both take [..., in] input as it is; MKL, given batch_size == rows, computes from the
        # packed copy (the plain weight, of which it only needs the shape, is never read)
        if not x.is_contiguous():
            x = x.contiguous()
        if self.onednn:
            return _onednn_linear(x, self.data, self.bias, "none", [], "")
        return _mkl_linear(x, self.data, self.shape, self.bias, x.numel() // x.size(-1))


class CachesNotState:
    """Mixin for a module that keeps caches in attributes (a packed copy, greedy's bfloat16
    screen): pickling and ``copy.deepcopy`` leave the attributes named in ``_caches`` out."""

    _caches: Tuple[str, ...] = ()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in self._caches}


class Linear(CachesNotState, nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys): from a :class:`Packed` copy of the
    weight in eval mode once :meth:`pack_weights` made one and while it is usable, else with
    :func:`linear`."""

    _packed: Optional[Packed] = None
    _repack = False  # packed before training: pack again in eval mode
    _caches = ("_packed",)

    def pack_weights(self) -> List[torch.Tensor]:
        """Make the packed copy; returns the weights now read from packed copies (for the
        loader to release their plain pages)."""
        self._packed = Packed.of([self.weight], [self.bias])
        return [self.weight] if self._packed is not None else []

    def unpack(self) -> None:
        self._packed, self._repack = None, False

    def train(self, mode: bool = True):
        """Training reads the plain weight: the packed copy is let go (its memory with it) and
        made again, from the weights as they are then, on the way back to eval mode."""
        super().train(mode)
        if mode and self._packed is not None:
            self._packed, self._repack = None, True
        elif not mode and (self._repack or (self._packed is not None
                                            and not self._packed.current([self.weight], [self.bias]))):
            with torch.no_grad():
                self.pack_weights()
            self._repack = False
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = self._parameters  # read directly: nn.Module.__getattr__ costs µs per call
        if "weight" not in params:  # pruned or parametrized: weight is computed, not stored
            return linear(x, self.weight, self.bias)
        packed, weight, bias = self._packed, params["weight"], params["bias"]
        if self.training or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
            return F.linear(x, weight, bias)  # training and autograd get the plain product
        if packed is not None and packed.usable(x, (weight,), (bias,)):
            return packed.linear(x)
        return linear(x, weight, bias)

    def product(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """This layer as a plain function of ``x``, for inference at the current weights.

        For a loop that calls the layer thousands of times (a decoding loop): the checks that
        :meth:`forward` makes at every call are made once, here. The weights must not change
        while the function is in use."""
        params = self._parameters
        if "weight" not in params or self.training or torch.is_grad_enabled():
            return self.forward
        packed, weight, bias = self._packed, params["weight"], params["bias"]
        probe = weight.new_empty(0)  # the model's own dtype and device stand for the input's
        if packed is not None and packed.usable(probe, (weight,), (bias,)):
            return packed.linear
        return functools.partial(linear, weight=weight, bias=bias)


class PackedQKV(CachesNotState, nn.Module):
    """Base of an attention module with the checkpoint's three projections ``query``, ``key``
    and ``value`` (plain ``nn.Linear``, set by the subclass): on CPU float32 the loader packs
    them as one product, one matrix product instead of three (20-30 % faster here)."""

    _qkv: Optional[Packed] = None  # q | k | v packed side by side, a cache
    _repack = False  # packed before training: pack again in eval mode
    _caches = ("_qkv",)

    def _parts(self):
        parts = (self.query, self.key, self.value)
        return [p.weight for p in parts], [p.bias for p in parts]

    def pack_weights(self) -> List[torch.Tensor]:
        self._qkv = Packed.of(*self._parts())
        return self._parts()[0] if self._qkv is not None else []

    def unpack(self) -> None:
        self._qkv, self._repack = None, False

    def train(self, mode: bool = True):
        """As :meth:`Linear.train`: the packed q | k | v is let go for training and made again
        from the trained weights on the way back to eval mode."""
        super().train(mode)
        if mode and self._qkv is not None:
            self._qkv, self._repack = None, True
        elif not mode and (self._repack or (self._qkv is not None and not self._qkv.current(*self._parts()))):
            with torch.no_grad():
                self.pack_weights()
            self._repack = False
        return self

    def project_qkv(self, x: torch.Tensor):
        """``(query(x), key(x), value(x))``, from the packed product when it is usable."""
        if self._qkv is not None and not self.training and self._qkv.usable(x, *self._parts()):
            return self._qkv.linear(x).split(x.shape[-1], dim=-1)
        return self.query(x), self.key(x), self.value(x)


def pack_all(model: nn.Module, on_packed: Optional[Callable[[torch.Tensor], Any]] = None) -> List[torch.Tensor]:
    """Pack the weights of every module of ``model`` that can (``pack_weights()``: zoo's
    :class:`Linear`, :class:`PackedQKV`); returns the weights packed. ``on_packed`` is called
    on each as soon as its module is packed (the loader releases its plain pages there)."""
    done: List[torch.Tensor] = []
    for module in model.modules():
        fn = getattr(module, "pack_weights", None)
        if callable(fn):
            for weight in fn():
                if on_packed is not None:
                    on_packed(weight)
                done.append(weight)
    return done


_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def global_hooks_set() -> bool:
    """Whether a global module hook is set. torch keeps them in private dicts of
    ``torch.nn.modules.module`` with no public reader; where this torch lacks one of them the
    answer is "maybe" (True), so that code that bypasses the modules steps aside."""
    from torch.nn.modules import module as nn_module

    found = [getattr(nn_module, name, None) for name in _GLOBAL_HOOKS]
    if any(not isinstance(hooks, dict) for hooks in found):
        return True
    return any(found)


def hooks_set(model: nn.Module) -> bool:
    """Whether any forward or backward hook is set, on ``model``'s modules or globally: code
    that computes a model's arithmetic without calling its modules must not bypass them."""
    if global_hooks_set():
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in model.modules())
