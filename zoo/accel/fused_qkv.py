"""BERT's and ViT's fast path: q, k and v as one product.

Their checkpoints keep three projections, and plugins/bert.py and plugins/vit.py compute them
as three ``nn.Linear`` in ``SelfAttention.project_qkv``. On CPU float32 the fused subclasses
below (the same module, its class swapped by :func:`zoo.accel.accelerate`) hold q | k | v
packed side by side for MKL and compute the three as one matrix product (20-30 % faster than
three); they step aside in training mode, under autograd and when a weight changed
(:class:`zoo.accel.ops.PackedQKV`).
"""
from __future__ import annotations

from ..plugins import bert, vit
from . import class_swap, ops


class BertFusedSelfAttention(ops.PackedQKV, bert.SelfAttention):
    """``bert.SelfAttention`` whose ``project_qkv`` reads one packed q | k | v product."""


class ViTFusedSelfAttention(ops.PackedQKV, vit.SelfAttention):
    """``vit.SelfAttention`` whose ``project_qkv`` reads one packed q | k | v product."""


BERT = (class_swap("fused-qkv", bert.SelfAttention, BertFusedSelfAttention, "q | k | v packed as one product"),)
VIT = (class_swap("fused-qkv", vit.SelfAttention, ViTFusedSelfAttention, "q | k | v packed as one product"),)
