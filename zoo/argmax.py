"""Greedy decoding's token choice, ``argmax(h @ Wᵀ)``, reading half the output head's bytes.

At batch 1 a decoding step is bound by memory bandwidth: every weight is read once per token,
and a language model's output head is a large share of them (GPT-2 small: 154 MB of 498 MB).
Greedy decoding needs only the best token of each row, not the logits themselves, so
:class:`ScreenedArgmax` finds it in two passes:

1. **Screen** with a bfloat16 copy of the head (half the bytes): approximate logits ``s``.
2. **Rescore** exactly, in float32, the few tokens that could still be the best.

Step 2 is decided by a rigorous bound ``b_j >= |s_j - f_j|`` on each screened logit's error
against the float32 product ``f_j`` that the plain path computes. With ``t = max_i s_i``, the
best float32 logit is at least ``L = t - b_t``, and token ``j`` can reach at most
``s_j + b_j``; every token with ``s_j + b_j < L`` is provably not the best and is skipped. The
result is the float32 product's argmax (ties to the lowest index, as ``torch.argmax``); only
tokens whose float32 logits agree to rounding may come out the other way round, as between
any two float32 kernels.

The bound, per row ``h`` of the input and row ``W_j`` of the head, with ``h~`` and ``W~_j``
rounded to bfloat16 and ``R_j = W_j - W~_j``::

    |s_j - f_j| <= ||h - h~|| ||W~_j||                      (rounding of h)
                 + ||h|| ||R_j||                            (rounding of the head)
                 + γ (||h~|| ||W~_j|| + ||h|| ||W_j||)      (float32 sums, both products)
                 + 2^-126 √n (||h~|| + ||W~_j||)            (subnormal inputs flushed to zero)
                 + (2n + 2) 2^-126                          (underflow: products, result)
                 + 2^-8 |s_j| / (1 - 2^-8)                  (the result rounded to bfloat16)

by Cauchy-Schwarz, with γ = n u / (1 - n u), u = 2^-23, for sums of n terms in any order with
up to one unit in the last place of error per addition (round-to-nearest gives half that; the
slack covers kernels that round otherwise). The products of two bfloat16 numbers are exact in
float32 above its underflow. Every term but the last is at most a constant ``A`` per call,
taking the largest row norms of the head (made once, with the copy), so ``b_j <= A + c |s_j|``
and the test above is one comparison of ``s`` against a threshold: ``s_j + c |s_j|`` grows
with ``s_j``. The threshold is rounded down to bfloat16, so that ``s`` is compared as the
kernel produced it. Norms and bound are computed in float64 (nothing in them underflows) and
inflated by 1 % for their own rounding. Weights beyond bfloat16's range are clamped to it (the
residual ``R_j`` accounts for that); a non-finite screened logit sends the decision to the
float32 product.

The kernel's arithmetic is checked, not assumed: before a screen is made, a probe that
bfloat16 accumulation would fail runs through the same product (:func:`sums_in_float32`);
where it fails, greedy decoding takes the plain float32 path. The tests check the bound on
random data of every magnitude.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F

from .ops import _stamp

_BF16_UNIT = 2.0 ** -8  # unit roundoff of bfloat16 (8 significant bits)
_BF16_MAX = float(torch.finfo(torch.bfloat16).max)
_TINY = 2.0 ** -126  # float32's (and bfloat16's) smallest normal number
_FP32_ULP = 2.0 ** -23  # one unit in the last place of float32, relative
_RELATIVE = 1.01 * _BF16_UNIT / (1 - _BF16_UNIT)  # c: the bfloat16 result's rounding
SCREEN_ATTRIBUTE = "_screened_argmax"  # where screened() keeps a screen on its owner
# tokens rescored above this share of the vocabulary: the float32 product is cheaper
RESCORE_SHARE = 1 / 16
_CHUNK_ROWS = 512
BUILD_AT_TOKENS = 64


class ScreenedArgmax:
    """Exact ``argmax(h @ weightᵀ)`` for one row ``h`` and a float32 CPU ``weight`` [V, n],
    from a bfloat16 screen.

    Holds the bfloat16 copy transposed, [n, V]: a row times that layout was the fastest
    bfloat16 product here (3.7 ms for GPT-2's head, against 5.0 ms for [V, n] and 7.7 ms for
    the float32 head). Also holds the largest row norms of the head, for the bound, and work
    buffers, so that a decoding step allocates nothing large. One row only: at 2 or more rows
    the bfloat16 product ran no faster here than the float32 one (no bfloat16 instructions on
    this CPU). :meth:`matches` says whether it still describes a weight (same tensor, same
    version)."""

    def __init__(self, weight: torch.Tensor):
        w = weight.detach()
        V, n = w.shape
        self.gamma = n * _FP32_ULP / (1 - n * _FP32_ULP)
        self.absolute = (2 * n + 2) * _TINY
        self.flush = _TINY * math.sqrt(n)  # times the inputs' norms: subnormal inputs flushed
        self.screen = torch.empty((n, V), dtype=torch.bfloat16)
        screen_norm = residual_norm = 0.0
        with torch.no_grad():
            for lo in range(0, V, _CHUNK_ROWS):  # in slices: no temporaries of the head's size
                part = w[lo:lo + _CHUNK_ROWS]
                rounded = part.clamp(-_BF16_MAX, _BF16_MAX).to(torch.bfloat16)
                self.screen[:, lo:lo + _CHUNK_ROWS] = rounded.t()
                residual = part - rounded.float()  # R_j, exact in float32
                exact_norm = torch.linalg.vector_norm(part, dim=1, dtype=torch.float64)  # ||W_j||
                residual_norm_j = torch.linalg.vector_norm(residual, dim=1, dtype=torch.float64)  # ||R_j||
                # ||W~_j|| <= ||W_j|| + ||R_j||
                screen_norm = max(screen_norm, float((exact_norm + residual_norm_j).max()))
                residual_norm = max(residual_norm, float(residual_norm_j.add_(exact_norm, alpha=self.gamma).max()))
        self.screen_norm = screen_norm  # max_j ||W~_j||
        self.residual_norm = residual_norm  # max_j (||R_j|| + γ ||W_j||): scales with ||h||
        self.weight = weight
        self.stamp = _stamp([weight])
        self._screened = torch.empty((1, V), dtype=torch.bfloat16)
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

    def bound(self, h: torch.Tensor) -> float:
        """``A`` for a row ``h`` [1, n]: ``|s_j - f_j| <= A + c |s_j|``, c = 1.01 2^-8 / (1 - 2^-8)."""
        h16 = h.to(torch.bfloat16)
        h_norm = float(torch.linalg.vector_norm(h, dtype=torch.float64))
        round_norm = float(torch.linalg.vector_norm(h.double() - h16.double()))
        h16_norm = h_norm + round_norm  # >= ||h~||
        return 1.01 * (round_norm * self.screen_norm + h_norm * self.residual_norm
                       + self.gamma * h16_norm * self.screen_norm
                       + self.flush * (h16_norm + self.screen_norm) + self.absolute)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """Best token for ``h`` [1, n] (float32): a [1] int64 tensor."""
        h = h.reshape(1, -1)
        s = torch.mm(h.to(torch.bfloat16), self.screen, out=self._screened)[0]
        low, high = torch.aminmax(s)
        top = float(high)
        if not (math.isfinite(top) and math.isfinite(float(low))):  # NaN or overflow
            return self._full(h)
        A = self.bound(h)
        # the best float32 logit is >= L = top - A - c|top|; token j reaches <= s_j + A + c|s_j|,
        # which grows with s_j: it is below L for every s_j below the root tau of
        # s + c|s| = L - A, so the tokens with s_j >= tau are rescored
        y = top - _RELATIVE * abs(top) - 2 * A
        tau = y / (1 + _RELATIVE) if y >= 0 else y / (1 - _RELATIVE)
        if not math.isfinite(tau):
            return self._full(h)
        candidates = torch.ge(s, _bfloat16_at_most(tau), out=self._mask).nonzero().view(-1)
        if candidates.numel() > RESCORE_SHARE * s.numel():
            return self._full(h)
        exact = torch.mv(self.weight.index_select(0, candidates), h[0])
        return candidates[exact.argmax()].view(1)

    def _full(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight).argmax(dim=1)  # as the unscreened path computes it


@functools.lru_cache(maxsize=None)
def sums_in_float32(n: int) -> bool:
    """Whether the screen's product of width ``n`` sums in float32, as the bound assumes: it
    computes 1 + (n - 1) 2^-9 (in bfloat16 each 2^-9 would vanish next to 1, whose unit in the
    last place is 2^-7). Checked once per width and process; where it fails, no screen."""
    probe = torch.full((n, 256), 2.0 ** -9, dtype=torch.bfloat16)
    probe[0] = 1
    out = torch.mm(torch.ones((1, n), dtype=torch.bfloat16), probe).double()
    expected = 1 + (n - 1) * 2.0 ** -9
    gamma = n * _FP32_ULP / (1 - n * _FP32_ULP)
    return bool(((out - expected).abs() <= expected * (_RELATIVE + gamma)).all())


def _bfloat16_at_most(x: float) -> torch.Tensor:
    """The largest bfloat16 number <= ``x`` (a finite float), as a 0-dim tensor."""
    t = torch.tensor(x, dtype=torch.float64).to(torch.bfloat16)  # a neighbour of x
    if float(t) > x:
        t = torch.nextafter(t, torch.tensor(-math.inf, dtype=torch.bfloat16))
    return t


def screened(owner: object, weight: torch.Tensor, rows: int, tokens: int) -> Optional[ScreenedArgmax]:
    """The :class:`ScreenedArgmax` of ``weight`` kept on ``owner``, or None where it does not
    apply to ``rows`` rows. It is made on first use (and remade when the weight changed) by a
    call for at least :data:`BUILD_AT_TOKENS` ``tokens``: building costs about what it saves
    over 50 tokens."""
    cached = getattr(owner, SCREEN_ATTRIBUTE, None)
    if cached is not None and not cached.matches(weight):
        setattr(owner, SCREEN_ATTRIBUTE, None)  # stale (the weight changed, moved or was cast)
        cached = None
    if not ScreenedArgmax.applies(weight, rows) or not sums_in_float32(weight.shape[1]):
        return None
    if cached is None and tokens >= BUILD_AT_TOKENS:
        cached = ScreenedArgmax(weight)
        setattr(owner, SCREEN_ATTRIBUTE, cached)
    return cached
