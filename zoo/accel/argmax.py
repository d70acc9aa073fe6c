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
                 + (4n + 2) 2^-126                          (underflow: every product and sum)
                 + 2^-8 |s_j| / (1 - 2^-8)                  (the result rounded to bfloat16)

by Cauchy-Schwarz. A bias ``b`` (Marian's ``final_logits_bias``) is screened as one more column
of the head, times an input of 1 (exact): it adds its rounding and its share of both sums,
``|b_j - b~_j| + γ (|b~_j| + |b_j|)``, with sums of n + 1 terms. Here γ = n u / (1 - n u), u = 2^-23, for sums of n terms in any order with
up to one unit in the last place of error per addition (round-to-nearest gives half that; the
slack covers kernels that round otherwise). The products of two bfloat16 numbers are exact in
float32 above its underflow. Every term but the last is at most a constant ``A`` per call,
taking the largest row norms of the head (made once, with the copy), so ``b_j <= A + c |s_j|``
and the test above is one comparison of ``s`` against a threshold ``tau``: ``s_j + c |s_j|``
grows with ``s_j`` (:func:`_threshold`). As ``s`` is bfloat16, the threshold is taken as the
bfloat16 number at or below ``tau``, so that the comparison runs on ``s`` as it is. Norms and
bound are computed in float64 (nothing in them underflows) and inflated by 1 % for their own
rounding.

Where the bound does not hold, the screen does not decide: a call returns None and the caller
computes its plain logits, as it would without a screen. So it does for a non-finite screened
logit, an ``h`` so large that a float32 sum could overflow (``||h|| max ||W_j|| (1 + γ)``
beyond float32's range), every token excluded, too many candidates (:data:`RESCORE_SHARE`), a
possible tie under renormalization (:data:`TIE_MARGIN`), and every call once a screen has given
up (:data:`GIVE_UP_SHARE`); a head with non-finite weights or weights beyond bfloat16's range,
or n > 2^22, gets no screen at all.

The kernel's arithmetic is checked, not assumed: each new screen runs one random row through
the very product it will use and compares every column against the float64 value of the same
bfloat16 operands, within ``γ ||h~|| ||W~_j||`` and the result's rounding. A kernel that
accumulated in bfloat16, or rounded its result otherwise than to nearest, fails that check,
and the screen is then not used (``sound`` is False).
"""
from __future__ import annotations

import math
import weakref
from typing import Optional

import torch

from .ops import tensor_stamp

_BF16_UNIT = 2.0 ** -8  # unit roundoff of bfloat16 (8 significant bits)
_TINY = 2.0 ** -126  # float32's (and bfloat16's) smallest normal number
_FP32_ULP = 2.0 ** -23  # one unit in the last place of float32, relative
_FP32_MAX = float(torch.finfo(torch.float32).max)
_MAX_WIDTH = 2 ** 22  # n u <= 1/2: γ stays meaningful
_RELATIVE = 1.01 * _BF16_UNIT / (1 - _BF16_UNIT)  # c: the bfloat16 result's rounding
# more candidates than this share of the vocabulary: the caller's plain product is cheaper
RESCORE_SHARE = 1 / 16
# a screen that left more than this share of its first calls to the plain product costs more
# than it saves on this model (a head whose logits crowd the best one): it is dropped
GIVE_UP_SHARE, GIVE_UP_AFTER = 1 / 4, 32
_CHUNK_ROWS = 512
# log_softmax(g) = (g - max) - logsumexp, in float32: a logit d below the best becomes equal to it
# only if d is below the unit in the last place of the logsumexp (< 2^-19 for up to e^16 tokens)
TIE_MARGIN = 2.0 ** -16
BUILD_AT_TOKENS = 64


class ScreenedArgmax:
    """Exact ``argmax(h @ weightᵀ + bias)`` for one row ``h``, a float32 CPU ``weight`` [V, n]
    and an optional ``bias`` of V entries, from a bfloat16 screen.

    Holds the bfloat16 copy transposed, [n, V]: a row times that layout was the fastest
    bfloat16 product here (3.7 ms for GPT-2's head, against 5.0 ms for [V, n] and 7.7 ms for
    the float32 head). Also holds the largest row norms of the head, for the bound, and work
    buffers, so that a decoding step allocates nothing large. One row only: at 2 or more rows
    the bfloat16 product ran no faster here than the float32 one (no bfloat16 instructions on
    this CPU). :meth:`matches` says whether it still describes a weight (same tensor, same
    version); ``sound`` whether the bound holds for it (see the module docstring)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
        w = weight.detach()
        V, n = w.shape
        self.weight, self.bias = weight, bias
        self._bias = None if bias is None else bias.detach().reshape(V)  # a view: edits show in the stamp
        self.stamp = tensor_stamp([weight, bias])
        if bias is not None:  # a bias is one more column of the head, times an input of 1
            n += 1
        self.gamma = _gamma(n)
        self.absolute = (4 * n + 2) * _TINY
        self.flush = _TINY * math.sqrt(n)  # times the inputs' norms: subnormal inputs flushed
        self.screen = torch.empty((n, V), dtype=torch.bfloat16)
        # the kernel check's row, and what the screen must give for it
        probe = torch.randn((1, n), generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
        probe64 = probe[0].double()
        expected = torch.empty(V, dtype=torch.float64)  # probe @ W~ᵀ, exactly
        screen_norms = torch.empty(V, dtype=torch.float64)  # >= ||W~_j||
        norms = torch.zeros(3, dtype=torch.float64)  # max_j of: the bound on ||W~_j||, ||R_j|| + γ ||W_j||, ||W_j||
        bias_norms = torch.zeros(2, dtype=torch.float64)  # max_j |b_j|, max_j |b_j - b~_j|
        head = w.shape[1]  # the head's own columns (the bias, if any, comes after them)
        with torch.no_grad():
            for lo in range(0, V, _CHUNK_ROWS):  # in slices: no temporaries of the head's size
                part = w[lo:lo + _CHUNK_ROWS]
                if bias is not None:
                    part = torch.cat([part, self._bias[lo:lo + _CHUNK_ROWS, None]], dim=1)
                rounded = part.to(torch.bfloat16)  # beyond bfloat16's range: inf, R_j inf, not sound
                self.screen[:, lo:lo + _CHUNK_ROWS] = rounded.t()
                torch.mv(rounded.double(), probe64, out=expected[lo:lo + _CHUNK_ROWS])
                residual = part - rounded.float()  # R_j, exact in float32 (rounding to nearest)
                exact_norm = torch.linalg.vector_norm(part[:, :head], dim=1, dtype=torch.float64)  # ||W_j||
                residual_norm = torch.linalg.vector_norm(residual[:, :head], dim=1, dtype=torch.float64)  # ||R_j||
                norms_j = screen_norms[lo:lo + _CHUNK_ROWS]
                torch.add(exact_norm, residual_norm, out=norms_j)  # ||W~_j|| <= ||W_j|| + ||R_j||
                chunk = torch.stack([norms_j, residual_norm + self.gamma * exact_norm, exact_norm])
                norms = torch.maximum(norms, chunk.amax(dim=1))  # a NaN stays
                if bias is not None:
                    b, b_residual = part[:, head].double().abs(), residual[:, head].double().abs()
                    bias_norms = torch.maximum(bias_norms, torch.stack([b.max(), b_residual.max()]))
                    norms_j.add_(b).add_(b_residual)  # the kernel check's row: ||[W~_j, b~_j]|| <= that
        self.screen_norm, self.residual_norm, self.weight_norm = norms.tolist()
        # the bias, times an exact 1: its rounding, and its share of both float32 sums
        self.bias_max, bias_residual = bias_norms.tolist()
        self.bias_term = bias_residual + self.gamma * (2 * self.bias_max + bias_residual)
        finite = bool(torch.isfinite(torch.cat([norms, bias_norms])).all())
        s = torch.mm(probe, self.screen)[0].double()
        magnitude = screen_norms.mul_(float(probe64.norm()))  # >= Σ_i |probe_i W~_ji|
        self.sound = True
        if not (finite and _sums_in_float32(s, expected, magnitude, n)):
            self._drop()
        self._screened = torch.empty((1, V), dtype=torch.bfloat16)
        self._mask = torch.empty(V, dtype=torch.bool)
        self.calls = self.crowded = 0  # calls, and those with too many candidates (GIVE_UP_*)

    def _drop(self) -> None:
        """Never use this screen (its bound does not hold, or it does not pay): every call
        returns None, and nothing of the head's size is kept."""
        self.sound = False
        self.screen = self.screen[:, :0].clone()

    @staticmethod
    def applies(weight: torch.Tensor, rows: int) -> bool:
        """Whether screening applies: one row times a float32 CPU matrix (not an inference
        tensor, whose changes cannot be noticed) at most 2^22 wide, outside CPU autocast."""
        return (rows == 1 and weight.dim() == 2 and weight.dtype == torch.float32 and weight.device.type == "cpu"
                and weight.shape[1] <= _MAX_WIDTH and not weight.is_inference()
                and not torch.is_autocast_enabled("cpu"))

    @property
    def bytes_saved(self) -> int:
        """Bytes a product reads less than the float32 head does (none once given up)."""
        if not self.sound:
            return 0
        return self.weight.numel() * (self.weight.element_size() - self.screen.element_size())

    def matches(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> bool:
        """Edits through ``.data`` go unnoticed, as for packed weights: ``zoo.accel.ops.unpack_all``."""
        return weight is self.weight and bias is self.bias and tensor_stamp([weight, bias]) == self.stamp

    def bound(self, h: torch.Tensor, h16: torch.Tensor) -> float:
        """``A`` for a row ``h`` [1, n] and its bfloat16 rounding ``h16``: ``|s_j - f_j| <= A +
        c |s_j|`` with c = 1.01 2^-8 / (1 - 2^-8); infinite where a float32 sum could overflow.
        A bias adds its own rounding and its share of the float32 sums (``bias_term``)."""
        h_norm = float(torch.linalg.vector_norm(h, dtype=torch.float64))
        if not (h_norm * self.weight_norm + self.bias_max) * (1 + self.gamma) < _FP32_MAX:  # NaN too
            return math.inf
        round_norm = float(torch.linalg.vector_norm(h.double() - h16.double()))
        h16_norm = h_norm + round_norm  # >= ||h~||
        return 1.01 * (round_norm * self.screen_norm + h_norm * self.residual_norm
                       + self.gamma * h16_norm * self.screen_norm + self.bias_term
                       + self.flush * (h16_norm + self.screen_norm) + self.absolute)

    def __call__(self, h: torch.Tensor, exclude: Optional[torch.Tensor] = None,
                 renormalize: bool = False) -> Optional[torch.Tensor]:
        """Best token for ``h`` [1, n] (float32), a [1] int64 tensor, or None where the screen
        cannot tell (see the module docstring): the caller then takes the argmax of its plain
        logits, which gives that token wherever the screen does. ``exclude``: token ids never
        chosen (their logits at -inf, as a banned-tokens processor sets them).
        ``renormalize``: the argmax of ``log_softmax`` of those logits, as transformers'
        ``renormalize_logits`` gives it: the same token, except that rounding may make a token
        within :data:`TIE_MARGIN` below the best equal to it, and then the lower index wins;
        such a step is left to the caller."""
        if not self.sound:
            return None
        h = h.reshape(1, -1)
        x = h if self._bias is None else torch.cat([h, h.new_ones(1, 1)], dim=1)  # [h, 1]: the bias column
        x16 = x.to(torch.bfloat16)
        s = torch.mm(x16, self.screen, out=self._screened)[0]
        low, high = torch.aminmax(s)
        top = float(high)
        if not (math.isfinite(top) and math.isfinite(float(low))):  # NaN or overflow
            return None
        if exclude is not None and exclude.numel():
            s.index_fill_(0, exclude, -math.inf)
            top = float(s.max())
            if not math.isfinite(top):  # everything excluded
                return None
        margin = TIE_MARGIN if renormalize else 0.0  # also every token within the margin of the best
        tau = _threshold(top, self.bound(h, x16[:, :h.size(1)]) + margin / 2)
        if not math.isfinite(tau):
            return None
        candidates = torch.ge(s, _bfloat16_at_most(tau), out=self._mask).nonzero().view(-1)
        self.calls += 1
        if candidates.numel() > RESCORE_SHARE * s.numel():
            self.crowded += 1
            if self.calls >= GIVE_UP_AFTER and self.crowded > GIVE_UP_SHARE * self.calls:
                self._drop()  # it costs more than it saves on this head
            return None
        exact = torch.mv(self.weight.index_select(0, candidates), h[0])
        if self._bias is not None:  # as the plain path: the product, then the bias added
            exact = exact + self._bias.index_select(0, candidates)
        best = int(exact.argmax())
        # candidates are in ascending order: one before the best, within the margin, might tie
        if renormalize and bool((exact[:best] >= exact[best] - margin).any()):
            return None
        return candidates[best].view(1)


def _gamma(n: int) -> float:
    """γ for a float32 sum of n terms, up to one unit in the last place per addition."""
    return n * _FP32_ULP / (1 - n * _FP32_ULP)


def _threshold(top: float, A: float) -> float:
    """``tau``: every screened logit ``s < tau`` is below the best one by more than the bound.

    The best float32 logit is at least ``L = top - A - c|top|``, and a token screened at ``s``
    reaches at most ``s + A + c|s|``, which grows with ``s``; ``tau`` is the root of
    ``s + c|s| = L - A``."""
    y = top - _RELATIVE * abs(top) - 2 * A
    return y / (1 + _RELATIVE) if y >= 0 else y / (1 - _RELATIVE)


def _sums_in_float32(s: torch.Tensor, expected: torch.Tensor, magnitude: torch.Tensor, n: int) -> bool:
    """Whether a kernel's bfloat16 results ``s`` are the exact values ``expected`` summed in
    float32 and rounded to bfloat16, ``magnitude`` bounding Σ|terms| per column."""
    slack = 1.01 * (_gamma(n) * magnitude + _RELATIVE * s.abs() + (4 * n + 2) * _TINY)
    return bool(((s - expected).abs() <= slack).all())


def _fits(bias: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``bias`` is a float32 vector of one entry per row of ``weight``, on its device."""
    V = weight.shape[0]
    return (bias.dtype == weight.dtype and bias.device == weight.device and bias.numel() == V
            and bias.dim() >= 1 and bias.shape[-1] == V and not bias.is_inference())


def _bfloat16_at_most(x: float) -> torch.Tensor:
    """The largest bfloat16 number <= ``x`` (a finite float), as a 0-dim tensor."""
    t = torch.tensor(x, dtype=torch.float64).to(torch.bfloat16)  # a neighbour of x
    if float(t) > x:
        t = torch.nextafter(t, torch.tensor(-math.inf, dtype=torch.bfloat16))
    return t


# each owner's screen, kept beside it rather than on it: a screen is a cache, never part of the
# model (pickling, deepcopy and state dicts never see it), and it goes when the owner goes
_SCREENS: "weakref.WeakKeyDictionary[object, ScreenedArgmax]" = weakref.WeakKeyDictionary()


def screen_of(owner: object) -> Optional[ScreenedArgmax]:
    """The screen :func:`screened` keeps for ``owner``, if any."""
    return _SCREENS.get(owner)


def forget(owner: object) -> None:
    """Drop ``owner``'s screen (after editing its weights through ``.data``, say)."""
    _SCREENS.pop(owner, None)


def screened(owner: object, weight: torch.Tensor, rows: int, tokens: int,
             bias: Optional[torch.Tensor] = None) -> Optional[ScreenedArgmax]:
    """The :class:`ScreenedArgmax` of ``weight`` kept for ``owner``, or None where it does not
    apply to ``rows`` rows (or the bound does not hold for this head or this machine's
    kernel). It is made on first use (and remade when the weight changed) by a call for at
    least :data:`BUILD_AT_TOKENS` ``tokens``: building costs about what it saves over 50
    tokens."""
    cached = _SCREENS.get(owner)
    if cached is not None and not cached.matches(weight, bias):
        forget(owner)  # stale (the weight changed, moved or was cast)
        cached = None
    if not ScreenedArgmax.applies(weight, rows) or (bias is not None and not _fits(bias, weight)):
        return None
    if cached is None and tokens >= BUILD_AT_TOKENS:
        cached = ScreenedArgmax(weight, bias)
        _SCREENS[owner] = cached
    return cached if cached is not None and cached.sound else None
