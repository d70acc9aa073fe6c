"""Greedy decoding's token choice, ``argmax(h @ Wᵀ)``, reading half the output head's bytes.

At batch 1 a decoding step is bound by memory bandwidth: every weight is read once per token,
and a language model's output head is a large share of them (GPT-2 small: 154 MB of 498 MB).
Greedy decoding needs only the best token of each row, not the logits themselves, so
:class:`ScreenedArgmax` finds it in two passes:

1. **Screen** with a bfloat16 copy of the head (half the bytes): approximate logits ``s``.
2. **Rescore** exactly, in float32, the few tokens that could still be the best.

Step 2 is decided by a rigorous bound ``b_j >= |s_j - f_j|`` on each screened logit's error
against the float32 product ``f_j`` that the plain path computes. Token ``j`` is rescored when
``s_j + b_j >= max_i (s_i - b_i)``; every other token is below the best by more than the
errors can explain. The result is the float32 product's argmax (ties to the lowest index, as
``torch.argmax``); only tokens whose float32 logits agree to rounding may come out the other
way round, as between any two float32 kernels.

The bound, per row ``h`` of the input and row ``W_j`` of the head, with ``h~`` and ``W~_j``
rounded to bfloat16 and ``R_j = W_j - W~_j``::

    |s_j - f_j| <= ||h - h~|| ||W~_j||       (rounding of h)
                 + ||h|| ||R_j||             (rounding of the head)
                 + γ (||h~|| ||W~_j|| + ||h|| ||W_j||)   (float32 sums, both products)
                 + 2^-8 |s_j| / (1 - 2^-8)   (the result rounded to bfloat16)
                 + (2n + 2) 2^-126           (underflow: subnormal or flushed products, result)

by Cauchy-Schwarz, with γ = n 2^-24 / (1 - n 2^-24) for sums of n terms. The products of two
bfloat16 numbers are exact in float32 above its underflow, and the kernels sum in float32
(checked by the tests, which also check the bound on random data of every magnitude). The
norms and the bound are computed in float64, so that nothing in them underflows, and
inflated by 1 % for their own rounding. Weights beyond bfloat16's range are clamped to it
(the residual ``R_j`` accounts for that); a non-finite screened logit is always rescored, and
a non-finite best one sends the decision to the float32 product.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .ops import _stamp

_BF16_UNIT = 2.0 ** -8  # unit roundoff of bfloat16 (8 significant bits)
_BF16_MAX = float(torch.finfo(torch.bfloat16).max)
_FP32_UNIT = 2.0 ** -24
SCREEN_ATTRIBUTE = "_screened_argmax"  # where screened() keeps a screen on its owner
# tokens rescored above this share of the vocabulary: the float32 product is cheaper
RESCORE_SHARE = 1 / 16
_CHUNK_ROWS = 2048
BUILD_AT_TOKENS = 64


class ScreenedArgmax:
    """Exact ``argmax(h @ weightᵀ)`` for one row ``h`` and a float32 CPU ``weight`` [V, n],
    from a bfloat16 screen.

    Holds a bfloat16 copy of ``weight`` (half its size), two float64 norms per row of it, and
    work buffers, so that a decoding step allocates nothing large (a fresh buffer of a few
    hundred KB costs page faults at every step). One row only: at 2 or more rows the bfloat16
    product ran no faster here than the float32 one (no bfloat16 instructions on this CPU).
    :meth:`matches` says whether it still describes a weight (same tensor, same version)."""

    def __init__(self, weight: torch.Tensor):
        w = weight.detach()
        V, n = w.shape
        self.gamma = n * _FP32_UNIT / (1 - n * _FP32_UNIT)
        self.absolute = (2 * n + 2) * 2.0 ** -126
        self.screen = torch.empty((V, n), dtype=torch.bfloat16)
        self.screen_norm = torch.empty(V, dtype=torch.float64)  # ||W~_j||
        self.residual_norm = torch.empty(V, dtype=torch.float64)  # ||R_j|| + γ ||W_j||: scale with ||h||
        with torch.no_grad():
            for lo in range(0, V, _CHUNK_ROWS):  # in slices: no temporaries of the head's size
                part, screen = w[lo:lo + _CHUNK_ROWS], self.screen[lo:lo + _CHUNK_ROWS]
                rounded = screen.copy_(part.clamp(-_BF16_MAX, _BF16_MAX)).double()
                torch.linalg.vector_norm(rounded, dim=1, out=self.screen_norm[lo:lo + _CHUNK_ROWS])
                exact = part.double()
                residual = torch.linalg.vector_norm(rounded.sub_(exact), dim=1)
                residual.add_(torch.linalg.vector_norm(exact, dim=1), alpha=self.gamma)
                self.residual_norm[lo:lo + _CHUNK_ROWS] = residual
        self.weight = weight
        self.stamp = _stamp([weight])
        self._screened16 = torch.empty(V, dtype=torch.bfloat16)
        self._screened = torch.empty(V, dtype=torch.float64)
        self._bound = torch.empty(V, dtype=torch.float64)
        self._work = torch.empty(V, dtype=torch.float64)
        self._mask = torch.empty(V, dtype=torch.bool)

    @staticmethod
    def applies(weight: torch.Tensor, rows: int) -> bool:
        """Whether screening applies: one row times a float32 CPU matrix (not an inference
        tensor, whose changes cannot be noticed), outside CPU autocast."""
        return (rows == 1 and weight.dim() == 2 and weight.dtype == torch.float32 and weight.device.type == "cpu"
                and not weight.is_inference() and not torch.is_autocast_enabled("cpu"))

    @property
    def bytes_saved(self) -> int:
        """Bytes a product reads less than the float32 head does."""
        return self.weight.numel() * (self.weight.element_size() - self.screen.element_size())

    def matches(self, weight: torch.Tensor) -> bool:
        return weight is self.weight and _stamp([weight]) == self.stamp

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """Best token for ``h`` [1, n] (float32): a [1] int64 tensor."""
        h = h.reshape(-1)
        h16 = h.to(torch.bfloat16)
        s = self._screened.copy_(torch.mv(self.screen, h16, out=self._screened16))
        h_norm = float(torch.linalg.vector_norm(h, dtype=torch.float64))
        round_norm = float(torch.linalg.vector_norm(h.double() - h16.double()))
        # the bound b, inflated by 1 % for the rounding of its own arithmetic
        alpha = 1.01 * (round_norm + self.gamma * (h_norm + round_norm))
        bound = torch.mul(self.screen_norm, alpha, out=self._bound)
        bound.add_(self.residual_norm, alpha=1.01 * h_norm)
        bound.add_(torch.abs(s, out=self._work), alpha=1.01 * _BF16_UNIT / (1 - _BF16_UNIT))
        bound.add_(1.01 * self.absolute)
        floor = float(torch.sub(s, bound, out=self._work).max())  # the best logit is at least this
        if not math.isfinite(floor):  # NaN or overflow: decide in float32
            return self._full(h)
        # rescored: every token not below the floor by more than its bound; NaN ones too
        candidates = torch.lt(s.add_(bound), floor, out=self._mask).logical_not_().nonzero().view(-1)
        if candidates.numel() > RESCORE_SHARE * s.numel():
            return self._full(h)
        exact = torch.mv(self.weight.index_select(0, candidates), h)
        return candidates[exact.argmax()].view(1)

    def _full(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h[None], self.weight).argmax(dim=1)  # as the unscreened path computes it


def screened(owner: object, weight: torch.Tensor, rows: int, tokens: int) -> Optional[ScreenedArgmax]:
    """The :class:`ScreenedArgmax` of ``weight`` kept on ``owner``, or None where it does not
    apply to ``rows`` rows. It is made on first use (and remade when the weight changed) by a
    call for at least :data:`BUILD_AT_TOKENS` ``tokens``: building costs about what it saves
    over 50 tokens."""
    cached = getattr(owner, SCREEN_ATTRIBUTE, None)
    if cached is not None and not cached.matches(weight):
        setattr(owner, SCREEN_ATTRIBUTE, None)  # stale (the weight changed, moved or was cast)
        cached = None
    if not ScreenedArgmax.applies(weight, rows):
        return None
    if cached is None and tokens >= BUILD_AT_TOKENS:
        cached = ScreenedArgmax(weight)
        setattr(owner, SCREEN_ATTRIBUTE, cached)
    return cached
