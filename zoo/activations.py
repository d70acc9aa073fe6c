"""Hugging Face activation names (``hidden_act``, ``activation_function``) -> functions.

One table for every architecture, so that a name means the same thing everywhere: ``"gelu"``
is the exact (erf) GELU; ``"gelu_new"``, ``"gelu_fast"`` and ``"gelu_pytorch_tanh"`` are its
tanh approximation, computed by one fused kernel.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn.functional as F


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
