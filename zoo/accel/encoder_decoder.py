"""The encoder-decoder's fast path: a few rows times the tied output head.

A forward over a short target (or a decoding step of a few beams) multiplies a few rows by the
vocabulary-wide embedding matrix; for 4 to 32 rows on CPU float32 ``(W @ xᵀ)ᵀ`` streams the
matrix once and runs several times faster than ``x @ Wᵀ`` (:func:`zoo.accel.ops.linear`).
:class:`FewRowGenerator` is the model's ``Generator`` with that product, its class swapped by
:func:`zoo.accel.accelerate`. Generation reads the head through ``zoo.accel.head_logits``, which
does the same. An output projection of its own (an untied ``proj``) is an ``nn.Linear``, which
the generic pass makes a :class:`zoo.accel.ops.Linear` computing the same product.
"""
from __future__ import annotations

import torch

from ..activations import activate_
from ..plugins import encoder_decoder
from . import class_swap, ops


class FewRowGenerator(encoder_decoder.Generator):
    """``encoder_decoder.Generator`` whose tied projection computes a few rows as ``(W @ xᵀ)ᵀ``."""

    def tied(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.training or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
            return super().tied(x, weight)
        return ops.linear(x, weight)


class InPlaceFeedForward(encoder_decoder.PositionwiseFeedForward):
    """The feed-forward whose activation overwrites ``w_1``'s fresh output: one large buffer less
    per layer (``zoo.activations.activate_`` steps aside under autograd and where a hook may hold it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(activate_(self.act, self.w_1(x), self.w_1)))


FAST_PATHS = (
    class_swap("in-place-activation", encoder_decoder.PositionwiseFeedForward, InPlaceFeedForward,
               "the feed-forward's activation over its first output", packed=False),
    class_swap("few-row-head", encoder_decoder.Generator, FewRowGenerator,
               "a few rows times the tied head as (W @ xᵀ)ᵀ", packed=False),
)
