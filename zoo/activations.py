"""Hugging Face activation names (``hidden_act``, ``activation_function``) -> functions.

One table for every architecture, so that a name means the same thing everywhere: ``"gelu"``
is the exact (erf) GELU; ``"gelu_new"``, ``"gelu_fast"`` and ``"gelu_pytorch_tanh"`` are its
tanh approximation, computed by one fused kernel.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .accel.ops import global_hooks_set


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_python": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "quick_gelu": _quick_gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


# in-place forms of the activations that have one (same kernels, so the same values bit for bit)
_IN_PLACE: Dict[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] = {
    F.gelu: lambda x: torch.ops.aten.gelu_(x),
    _gelu_tanh: lambda x: torch.ops.aten.gelu_(x, approximate="tanh"),
    F.relu: F.relu_,
    F.silu: lambda x: F.silu(x, inplace=True),
    torch.tanh: torch.tanh_,
}


def activate_(act: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *producers: nn.Module) -> torch.Tensor:
    """``act(x)``, written over ``x`` where that is safe; else ``act(x)``.

    For a fresh intermediate, such as a linear layer's output, overwriting it saves allocating
    and faulting in one large buffer per layer. ``producers`` are the modules whose forward
    returned ``x``. ``x`` is left alone when autograd needs it, when ``act`` has no in-place
    form, or when a forward hook on a producer (or a global one) may be holding it.
    """
    fn = _IN_PLACE.get(act)
    if fn is None or (x.requires_grad and torch.is_grad_enabled()):
        return act(x)
    if global_hooks_set() or any(m._forward_hooks for m in producers):
        return act(x)
    return fn(x)


def in_place(act: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The in-place form of ``act`` (``act`` itself where it has none), for a caller that knows
    its input is a fresh intermediate that nothing else holds (no hooks, no autograd)."""
    return _IN_PLACE.get(act, act)
