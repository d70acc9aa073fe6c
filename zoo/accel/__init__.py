"""The speed layer: every fast path zoo applies to a loaded model, behind one step.

A model file (``plugins/*.py``) holds the model's math and nothing else: ``nn.Linear``,
``nn.LayerNorm``, ``F.scaled_dot_product_attention``. The loader's last step,
:func:`accelerate`, applies the fast paths that fit the model, its device and its dtype, and
records their names (:func:`applied`). :func:`plain` undoes them; ``zoo.load(..., fast=False)``
and ``zoo verify --plain`` never apply them.

Fast paths, each computing what the plain modules compute (a test per path compares the two,
and one shows that a broken path is caught):

- ``packed-linear`` (:mod:`zoo.accel.ops`), any model on CPU float32: every plain
  ``nn.Linear`` becomes :class:`zoo.accel.ops.Linear` (same parameters, same state-dict keys)
  computing on oneDNN and holding a copy of its weight in oneDNN's layout (MKL's packed GEMM
  layout with ``ZOO_GEMM=mkl`` or without oneDNN, where a few rows times a wide weight is
  computed as ``(W @ xᵀ)ᵀ``);
- per architecture, what its :attr:`zoo.types.Architecture.fast_paths` names: GPT-2's decoding
  step and few-row head (:mod:`zoo.accel.gpt2`), BERT's unpadding (:mod:`zoo.accel.bert`),
  BERT's and ViT's fused q|k|v product (:mod:`zoo.accel.fused_qkv`), a ViT classifier's
  class-token-only last block (:mod:`zoo.accel.vit`), the encoder-decoder's few-row head
  (:mod:`zoo.accel.encoder_decoder`), and the in-place MLP activations of all three;
- used by :mod:`zoo.generation` when it applies: greedy decoding's bfloat16 screen of the
  output head (:mod:`zoo.accel.argmax`) and the architecture's decoding step
  (:func:`decode_step`).

Every fast path steps aside by itself where hooks are set on the modules it would bypass.
The packed products, few-row heads, in-place activations and decoding steps also step aside
in training mode and under autograd, so training computes the plain model's products. BERT's
unpadding and ViT's class-token block stay on in training (with the modules' dropout) and
under autograd: they skip only positions that no output the loss reads depends on, so the loss
and its gradients are the plain model's (tested against transformers'); BERT's steps aside
for a loss that reads padding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import torch
import torch.nn as nn

from ..types import import_ref
from . import argmax, ops

APPLIED = "_zoo_fast_paths"  # the names of the fast paths applied, in the model's __dict__


@dataclass(frozen=True)
class FastPath:
    """One fast path: ``apply(model, release)`` returns whether it applied (``release`` is called
    on each plain weight it no longer reads, for the loader to give its pages back);
    ``undo(model)`` restores the plain model."""

    name: str
    apply: Callable[[nn.Module, Optional[Callable[[torch.Tensor], Any]]], bool]
    undo: Callable[[nn.Module], None]
    doc: str = ""
    # a decoding step for zoo.generation: (model) -> step(tokens [B, 1], cache) -> (B, C), or None
    decode_step: Optional[Callable[[nn.Module], Optional[Callable]]] = None


def _cpu_float32(model: nn.Module) -> bool:
    params = list(model.parameters())
    return bool(params) and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)


def _apply_packing(model: nn.Module, release) -> bool:
    if not _cpu_float32(model):
        return False
    fused = {id(m) for parent in model.modules() if isinstance(parent, ops.PackedQKV)
             for m in (parent.query, parent.key, parent.value)}
    for module in model.modules():
        if type(module) is nn.Linear and id(module) not in fused:
            module.__class__ = ops.Linear
    ops.pack_all(model, on_packed=release)
    return True


def _undo_packing(model: nn.Module) -> None:
    for module in model.modules():
        if type(module) is ops.Linear:
            module.unpack()
            module.__class__ = nn.Linear


PACKED_LINEAR = FastPath(
    "packed-linear", _apply_packing, _undo_packing,
    "CPU float32: nn.Linear products on oneDNN (or MKL), the weights in its layout",
)


def class_swap(name: str, plain_cls: type, fast_cls: type, doc: str = "", packed: bool = True) -> FastPath:
    """A fast path that turns each module of exactly ``plain_cls`` into ``fast_cls`` (a
    subclass overriding a method with a faster, equal computation), and back. ``packed``: the
    subclass holds packed weights (``unpack()``), so it applies on CPU float32 only."""

    def apply(model: nn.Module, release) -> bool:
        if packed and not ops.packing_available():
            return False
        swapped = False
        for module in model.modules():
            if type(module) is plain_cls and (not packed or _cpu_float32(module)):
                module.__class__ = fast_cls
                swapped = True
        return swapped

    def undo(model: nn.Module) -> None:
        for module in model.modules():
            if type(module) is fast_cls:
                if packed:
                    module.unpack()
                module.__class__ = plain_cls

    return FastPath(name, apply, undo, doc)


def packable(model: nn.Module, device: torch.device, dtype: torch.dtype) -> set:
    """Names of the weights :func:`accelerate` will hold packed on ``device``/``dtype`` (the
    loader need not lay them out contiguously: only the packed copy is read)."""
    if device.type != "cpu" or dtype != torch.float32 or not ops.packing_available():
        return set()
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def fast_paths(arch=None) -> List[FastPath]:
    """The fast paths for an architecture: its own first (they may take some Linears over as
    one product), then the generic ones."""
    own: Sequence[FastPath] = import_ref(arch.fast_paths) if arch is not None and arch.fast_paths else ()
    return [*own, PACKED_LINEAR]


def accelerate(model: nn.Module, arch=None, *, release=None, only: Optional[Sequence[str]] = None) -> List[str]:
    """Apply every fast path that fits ``model`` (built for ``arch``), or those named in
    ``only``; returns their names."""
    done = [fp.name for fp in fast_paths(arch) if (only is None or fp.name in only) and fp.apply(model, release)]
    before = model.__dict__.get(APPLIED, (None, []))[1]  # a second call adds to the first
    model.__dict__[APPLIED] = (arch, [fp.name for fp in fast_paths(arch) if fp.name in before or fp.name in done])
    return done


def applied(model: nn.Module) -> List[str]:
    """The names of the fast paths :func:`accelerate` applied to ``model`` (none for a plain one)."""
    return list(model.__dict__.get(APPLIED, (None, []))[1])


def plain(model: nn.Module) -> nn.Module:
    """Undo every fast path applied to ``model`` (in place); returns it."""
    arch, _ = model.__dict__.pop(APPLIED, (None, []))
    for fp in reversed(fast_paths(arch)):  # each undo touches only its own fast modules
        fp.undo(model)
    unpack_all(model)
    return model


def decode_step(model: nn.Module) -> Optional[Callable]:
    """The fast decoding step of an accelerated model, for this call of ``generate``, or None
    (then generation runs the model's own modules): ``step(tokens [B, 1], cache) -> (B, C)``,
    the final hidden state of the new token, as ``model.hidden(tokens, cache)[:, -1]``."""
    arch, done = model.__dict__.get(APPLIED, (None, []))
    for fp in fast_paths(arch):
        if fp.name in done and fp.decode_step is not None:
            step = fp.decode_step(model)
            if step is not None:
                return step
    return None


def unpack_all(model: nn.Module) -> None:
    """Drop every packed copy and greedy decoding's bfloat16 screen of the output head, after
    editing weights through ``.data``, say (in-place edits that bump a tensor's version are
    noticed without this)."""
    for module in model.modules():
        if hasattr(module, "pack_weights") and callable(getattr(module, "unpack", None)):
            module.unpack()
        argmax.forget(module)


def head_product(model: nn.Module) -> Callable[..., torch.Tensor]:
    """How generation multiplies by ``model``'s output head: ``(x, weight, bias) -> logits``
    (``bias`` [V] or [1, V]). Where the ``few-row-head`` fast path applies, a few rows on CPU
    float32 go the faster way (:func:`zoo.accel.ops.linear`); elsewhere ``F.linear``."""
    return _few_rows_head if "few-row-head" in applied(model) else _plain_head


def _plain_head(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    return torch.nn.functional.linear(x, weight, None if bias is None else bias.reshape(-1))


def _few_rows_head(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    return ops.linear(x, weight, None if bias is None else bias.reshape(-1))
