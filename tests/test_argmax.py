"""zoo.accel.argmax: greedy's best token from a bfloat16 screen of the head, exact against float32."""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from zoo.accel import argmax
from zoo.accel.argmax import (BUILD_AT_TOKENS, GIVE_UP_AFTER, ScreenedArgmax, _bfloat16_at_most, _sums_in_float32,
                         _threshold, screened)
from zoo.accel import unpack_all

_C = 2.0 ** -8 / (1 - 2.0 ** -8)  # the bfloat16 result's rounding, relative (not inflated)


def _head(vocab=4000, width=256, seed=0):
    return torch.randn(vocab, width, generator=torch.Generator().manual_seed(seed)) * 0.1


def _hidden(width, seed, massive=True):
    """A hidden state like a trained transformer's: a few dimensions far larger than the rest."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(1, width, generator=g)
    if massive:
        h[0, torch.randint(0, width, (3,), generator=g)] *= 40
    return h


def _screened(screen, h):
    """The screen's bfloat16 logits for ``h`` [1, n], as float64 [V]."""
    return torch.mm(h.bfloat16(), screen.screen)[0].double()


def _plain(screen, h, exclude=None, renormalize=False):
    """What a caller computes where the screen cannot tell: the argmax of its plain logits."""
    logits = F.linear(h, screen.weight)
    if screen.bias is not None:
        logits = logits + screen.bias
    if exclude is not None:
        logits[:, exclude] = float("-inf")
    if renormalize:
        logits = F.log_softmax(logits, dim=-1)
    return logits.argmax(dim=1)


def _choose(screen, h, **kwargs):
    """A caller's token: the screen's, or its plain logits' where the screen returns None."""
    token = screen(h, **kwargs)
    return _plain(screen, h, **kwargs) if token is None else token


def _decided(screen, h, **kwargs):
    """The screen's own token: the test fails where the screen leaves the step to the caller."""
    token = screen(h, **kwargs)
    assert token is not None, "the screen left the step to the plain product"
    return token


@pytest.mark.parametrize("n", [601, 768, 1600])
def test_the_screen_kernel_sums_in_float32(n):
    # 1 + (n - 1) * 2^-9: summed in bfloat16, each 2^-9 would vanish next to 1 (its ulp is 2^-7);
    # a head of 4096 rows, so that the product runs the kernel a real head runs
    head = torch.full((4096, n), 2.0 ** -9)
    head[:, 0] = 1.0
    screen = ScreenedArgmax(head)
    assert screen.sound  # the screen's own check of its kernel passed
    out = _screened(screen, torch.ones(1, n))
    expected = 1 + (n - 1) * 2.0 ** -9
    assert bool(((out - expected).abs() <= expected * 2.0 ** -8).all())


def _sum(terms, dtype, order):
    """Σ terms, added one by one in ``dtype`` (forward, reversed or pairwise), rounded to bfloat16."""
    if order == "pairwise":
        while terms.numel() > 1:
            if terms.numel() % 2:
                terms = torch.cat([terms, terms.new_zeros(1)])
            terms = (terms[0::2].to(dtype) + terms[1::2].to(dtype)).to(dtype)
        return terms[0].to(torch.bfloat16)
    acc = torch.zeros((), dtype=dtype)
    for t in (terms.flip(0) if order == "reversed" else terms):
        acc = (acc + t.to(dtype)).to(dtype)
    return acc.to(torch.bfloat16)


@pytest.mark.parametrize("order", ["forward", "reversed", "pairwise"])
@pytest.mark.parametrize("n", [3, 64, 768])
def test_the_kernel_check_tells_float32_sums_from_bfloat16_ones(order, n):
    g = torch.Generator().manual_seed(n)
    head = torch.randn(16, n, generator=g).bfloat16()
    probe = torch.randn(n, generator=g).bfloat16()
    terms = head.float() * probe.float()  # bfloat16 products: exact in float32
    expected = head.double() @ probe.double()
    magnitude = head.double().norm(dim=1) * probe.double().norm()

    def check(dtype):
        s = torch.stack([_sum(row, dtype, order) for row in terms]).double()
        return _sums_in_float32(s, expected, magnitude, n)

    assert check(torch.float32)
    assert not check(torch.bfloat16)


def _bound(weight, h):
    """The module docstring's ``A``, term by term, from the largest row norms of the head."""
    n = weight.shape[1]
    w64, w16 = weight.double(), weight.bfloat16().double()
    screen_norm = float(w16.norm(dim=1).max())
    gamma = n * 2.0 ** -23 / (1 - n * 2.0 ** -23)
    residual_norm = float(((w64 - w16).norm(dim=1) + gamma * w64.norm(dim=1)).max())
    h64, h16 = h[0].double(), h[0].bfloat16().double()
    h_norm, round_norm, h16_norm = float(h64.norm()), float((h64 - h16).norm()), float(h16.norm())
    return (round_norm * screen_norm + h_norm * residual_norm + gamma * h16_norm * screen_norm
            + 2.0 ** -126 * n ** 0.5 * (h16_norm + screen_norm) + (4 * n + 2) * 2.0 ** -126)


def _check_bound(screen, weight, h):
    """The screened logits are within the bound of the float32 and of the exact ones, and the
    bound is the docstring's, inflated by no more than its 1 % (and 2^-9 relative)."""
    s = _screened(screen, h)
    A = screen.bound(h, h.bfloat16())
    assert _bound(weight, h) <= A <= 1.02 * _bound(weight, h)
    for reference in (F.linear(h, weight)[0].double(), (h.double() @ weight.double().t())[0]):
        assert bool(((s - reference).abs() <= A + s.abs() * _C).all())


@pytest.mark.parametrize("seed", range(4))
def test_the_bound_holds_and_the_choice_is_the_float32_argmax(seed):
    weight = _head(seed=seed)
    # on hidden states like a trained model's, the screen decides: never the plain product
    screen = ScreenedArgmax(weight)
    for trial in range(10):
        h = _hidden(weight.shape[1], 100 * seed + trial, massive=trial % 2 == 0)
        _check_bound(screen, weight, h)
        assert torch.equal(_decided(screen, h), F.linear(h, weight).argmax(dim=1))


@pytest.mark.parametrize("h_scale,w_scale,decides", [
    (1e-25, 1.0, True), (1.0, 1e-25, True), (1e15, 1.0, True), (1.0, 1e19, True), (1e-3, 1e3, True),
    # logits of 1e-40, below float32's normal range: the underflow term is larger than they are
    (1e-20, 1e-20, False), (1e-30, 1e-10, False),
])
def test_the_choice_holds_at_every_magnitude(h_scale, w_scale, decides):
    weight = _head(vocab=1000, width=64, seed=2) * w_scale
    screen = ScreenedArgmax(weight)
    left = 0  # steps left to the plain product
    for trial in range(8):
        h = _hidden(64, trial) * h_scale
        _check_bound(screen, weight, h)
        token = screen(h)
        left += token is None
        assert token is None or torch.equal(token, F.linear(h, weight).argmax(dim=1))
    assert left == (0 if decides else 8)


def test_the_threshold_leaves_out_only_tokens_below_the_best():
    # every bfloat16 value below the threshold s satisfies s + A + c|s| < top - A - c|top|,
    # in exact arithmetic: that token's float32 logit is below the best one's
    c = Fraction(_C)
    for top in (0.0, 1.0, -1.0, 250.0, -250.0, 3e-30, -3e-30, 1e30, -1e30, 1e-3, -1e-3):
        for A in (0.0, 1e-35, 1e-6, 1e-3, 0.5, 7.0, 1e3, abs(top) * 0.9, abs(top) * 1.1):
            below = torch.nextafter(_bfloat16_at_most(_threshold(top, A)), torch.tensor(float("-inf"), dtype=torch.bfloat16))
            s = Fraction(float(below))
            assert s + Fraction(A) + c * abs(s) < Fraction(top) - Fraction(A) - c * abs(Fraction(top)), (top, A)


def test_the_threshold_is_rounded_down_to_bfloat16():
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(200, generator=g) * 10.0 ** e for e in (-30, -3, 0, 5, 30)]).double()
    values = torch.cat([values, torch.tensor([0.0, 1.0, -1.0, 3.3e38, -3.3e38, 3.4e38, -3.4e38]).double()])
    for x in values.tolist():
        t = _bfloat16_at_most(x)
        above = torch.nextafter(t, torch.tensor(float("inf"), dtype=torch.bfloat16))
        assert t.dtype == torch.bfloat16 and float(t) <= x < float(above), x


def test_a_hidden_state_whose_rounding_the_screen_must_allow_for():
    # h rounds to (1, 1 + 2^-7, 1) in bfloat16, an error (d, -d, 0) almost orthogonal to h;
    # rows j and -j are exact in bfloat16. The screen puts -j nearly 2A above j, while in float32
    # j is the best: only a threshold that allows for the whole bound keeps j
    d = 2.0 ** -8 - 2.0 ** -23
    h = torch.tensor([[1 + d, 1 + 2.0 ** -7 - d, 1.0]])
    j = [255.0, -255.0, 2.0 ** -10]
    weight = torch.tensor([[-v for v in j]] + [[-255.0, -255.0, 0.0]] * 40 + [j])
    screen = ScreenedArgmax(weight)
    s = _screened(screen, h)
    assert int(F.linear(h, weight).argmax()) == 41
    assert float(s.max() - s[41]) > 1.9 * screen.bound(h, h.bfloat16())
    assert int(_decided(screen, h)) == 41


def test_near_copies_of_the_best_row_are_rescored():
    g = torch.Generator().manual_seed(0)
    misled = 0  # cases where the screen's own top token is not the float32 best
    for n in (8, 64, 256):
        for rel in (1e-2, 3e-3, 1e-3):
            weight = torch.randn(4000, n, generator=g) * 0.1
            h = torch.randn(1, n, generator=g)
            best = int(F.linear(h, weight).argmax())
            rows = torch.randperm(4000, generator=g)[:24]
            weight[rows] = weight[best] * (1 + rel * torch.randn(24, n, generator=g))
            screen = ScreenedArgmax(weight)
            expected = F.linear(h, weight).argmax(dim=1)
            misled += int(_screened(screen, h).argmax() != expected[0])
            assert torch.equal(_decided(screen, h), expected)
    assert misled  # the threshold, not the screen's maximum, decided somewhere


def test_sums_that_could_overflow_float32_are_left_to_the_plain_product():
    # row 0 is ±2^127 alternating (exact sum 0): float32 overflows on the way (NaN, which
    # argmax picks), an order of the screen's might not
    weight = _head(vocab=1000, width=64)
    weight[0] = torch.tensor([(-1.0) ** i for i in range(64)]) * 2.0 ** 127
    weight[1] = 1e35
    h = torch.ones(1, 64)
    assert ScreenedArgmax(weight)(h) is None
    big = _head(vocab=1000, width=64)
    assert ScreenedArgmax(big).bound(h * 1e38, (h * 1e38).bfloat16()) == float("inf")


def test_the_bound_at_a_zero_hidden_state():
    weight = _head(vocab=300, width=64)
    h = torch.zeros(1, 64)  # only the underflow terms remain
    _check_bound(ScreenedArgmax(weight), weight, h)
    assert ScreenedArgmax(weight)(h) is None  # every logit 0: every token a candidate


def test_screened_logits_beyond_bfloat16s_range_are_left_to_the_plain_product():
    weight = _head(vocab=64, width=8, seed=5)
    weight[3] = -3e38  # h . W_3 = -2.4e39: -inf in bfloat16 (and in float32)
    assert ScreenedArgmax(weight)(torch.full((1, 8), 1.0)) is None


def test_weights_beyond_bfloat16s_range_and_non_finite_ones():
    weight = _head(vocab=64, width=8, seed=5)
    weight[5] = torch.tensor([3.399e38, -1e30, 0, 0, 0, 0, 0, 0])  # rounds to inf in bfloat16
    h = torch.tensor([[1.0, 1e-9, 0, 0, 0, 0, 0, 0]])
    assert ScreenedArgmax(weight)(h) is None and not ScreenedArgmax(weight).sound
    for bad in (float("inf"), float("-inf"), float("nan")):
        weight = _head(vocab=64, width=8, seed=6)
        weight[9, 3] = bad
        h = _hidden(8, 1, massive=False)
        screen = ScreenedArgmax(weight)
        assert screen(h) is None
        # no bound holds for such a head: not used, and nothing of its size kept
        assert not screen.sound and screen.screen.numel() == 0
        assert screened(torch.nn.Module(), weight, 1, BUILD_AT_TOKENS) is None


def test_near_ties_the_screen_cannot_see_are_rescored_in_float32():
    weight = _head(vocab=512, width=64)
    h = _hidden(64, 3)
    best = int(F.linear(h, weight).argmax())
    # rows a hair above and below the best one, and the best one moved behind them
    weight[7], weight[300], weight[best] = weight[best] * (1 + 1e-5), weight[best] * (1 - 1e-5), weight[0]
    screen = ScreenedArgmax(weight)
    s = _screened(screen, h)
    assert s[7] == s[300]  # to bfloat16 the two are one logit
    assert torch.equal(_decided(screen, h), torch.tensor([7]))
    assert torch.equal(_choose(screen, -h), F.linear(-h, weight).argmax(dim=1))


def test_non_finite_hidden_states_are_left_to_the_plain_product():
    weight = _head(vocab=300, width=32)
    h = _hidden(32, 1)
    for bad in (float("nan"), float("inf"), float("-inf")):
        h[0, 5] = bad
        assert ScreenedArgmax(weight)(h) is None


def test_the_screen_follows_the_weight_and_applies_to_one_row_of_float32_only():
    class Owner:
        pass

    owner, weight = Owner(), _head(vocab=200, width=16)
    assert screened(owner, weight, 1, BUILD_AT_TOKENS - 1) is None  # too short to pay for it
    first = screened(owner, weight, 1, BUILD_AT_TOKENS)
    assert first is not None and screened(owner, weight, 1, 2) is first  # made: used from then on
    with torch.no_grad():
        weight[0] += 1  # an in-place edit: the copy no longer describes the weight
    assert screened(owner, weight, 1, 2) is None and argmax.screen_of(owner) is None
    assert screened(owner, weight, 1, BUILD_AT_TOKENS) is not first
    assert screened(owner, weight, 2, BUILD_AT_TOKENS) is None
    assert screened(owner, weight.double(), 1, BUILD_AT_TOKENS) is None
    model = torch.nn.Linear(2, 2)
    screened(model, weight, 1, BUILD_AT_TOKENS)
    unpack_all(model)  # after edits through .data, as for packed copies
    assert argmax.screen_of(model) is None


def test_a_screen_that_cannot_rule_tokens_out_is_given_up():
    # rows that differ by less than the bound: every call has too many candidates, so every
    # call pays the screen and the float32 product; after GIVE_UP_AFTER calls it is dropped
    row = torch.randn(1, 64, generator=torch.Generator().manual_seed(0))
    weight = row * (1 + 1e-4 * torch.randn(500, 1, generator=torch.Generator().manual_seed(1)))
    model = torch.nn.Module()
    best = screened(model, weight, 1, BUILD_AT_TOKENS)
    assert best is not None
    for step in range(GIVE_UP_AFTER):
        assert best(_hidden(64, step)) is None
    assert screened(model, weight, 1, BUILD_AT_TOKENS) is None  # dropped, and not rebuilt
    assert argmax.screen_of(model).screen.numel() == 0 and argmax.screen_of(model).bytes_saved == 0
    # a head the screen decides on keeps it
    model, weight = torch.nn.Module(), _head(vocab=500, width=64)
    best = screened(model, weight, 1, BUILD_AT_TOKENS)
    for step in range(GIVE_UP_AFTER):
        _decided(best, _hidden(64, step))
    assert screened(model, weight, 1, 2) is best


def _biased_argmax(h, weight, bias, exclude=None):
    logits = F.linear(h, weight) + bias
    if exclude is not None:
        logits[:, exclude] = float("-inf")
    return logits.argmax(dim=1)


def test_a_bias_and_excluded_tokens():
    # a bias (Marian's final_logits_bias) is screened as one more column of the head; excluded
    # tokens (banned ones) are never chosen
    weight = _head(vocab=3000, width=128, seed=3)
    bias = torch.randn(3000, generator=torch.Generator().manual_seed(4))
    screen = ScreenedArgmax(weight, bias)
    flipped = 0
    for trial in range(12):
        h = _hidden(128, trial, massive=trial % 2 == 0)
        expected = _biased_argmax(h, weight, bias)
        flipped += int(expected != F.linear(h, weight).argmax(dim=1))
        assert torch.equal(_decided(screen, h), expected)
        banned = torch.tensor([int(expected), 7])  # the best token banned: the next one wins
        assert torch.equal(_decided(screen, h, exclude=banned), _biased_argmax(h, weight, bias, banned))
    assert flipped  # the bias decided somewhere


def test_a_screen_with_a_bias_follows_the_bias():
    owner, weight, bias = torch.nn.Module(), _head(vocab=200, width=16), torch.zeros(200)
    first = screened(owner, weight, 1, BUILD_AT_TOKENS, bias=bias)
    assert first is not None and screened(owner, weight, 1, 2, bias=bias) is first
    assert screened(owner, weight, 1, 2) is None  # asked without the bias: stale
    first = screened(owner, weight, 1, BUILD_AT_TOKENS, bias=bias)
    bias[3] = 100.0  # an in-place edit of the bias
    assert screened(owner, weight, 1, 2, bias=bias) is None
    again = screened(owner, weight, 1, BUILD_AT_TOKENS, bias=bias)
    h = _hidden(16, 0)
    assert torch.equal(_decided(again, h), _biased_argmax(h, weight, bias)) and int(again(h)) == 3
    assert screened(owner, weight, 1, BUILD_AT_TOKENS, bias=bias.double()) is None  # not float32


def test_renormalized_logits_where_rounding_ties_the_best_with_a_lower_index():
    # log_softmax rounds a logit one ulp below the best to the best's value; argmax then takes
    # the lower index. With renormalize=True the screen gives what the plain path gives
    weight = torch.randn(5000, 8, generator=torch.Generator().manual_seed(0)) * 0.1
    weight[:, 0] = 0.5  # a logsumexp near log(5000): its ulp is 2^-21
    weight[40, 0], weight[9, 0] = 4.0, float(torch.nextafter(torch.tensor(4.0), torch.tensor(0.0)))
    h = torch.zeros(1, 8)
    h[0, 0] = 1.0  # logits: column 0
    logits = F.linear(h, weight)
    assert int(logits.argmax()) == 40 and int(F.log_softmax(logits, dim=-1).argmax()) == 9  # tied, lower wins
    screen = ScreenedArgmax(weight)
    assert int(_decided(screen, h)) == 40
    assert screen(h, renormalize=True) is None and int(_choose(screen, h, renormalize=True)) == 9
    # far from a tie, renormalized or not is the same token, decided by the screen
    weight[9, 0] = 3.0
    assert int(_decided(ScreenedArgmax(weight), h, renormalize=True)) == 40


def test_a_constant_offset_in_the_bias_costs_the_bound_nothing():
    # the bias's rounding is charged as its own (not times ||h||): an offset of 30 on every
    # token moves no token past another, and the screen still decides
    weight = _head(vocab=5000, width=128, seed=5)
    bias = 30 + torch.randn(5000, generator=torch.Generator().manual_seed(6)) * 0.1
    screen = ScreenedArgmax(weight, bias)
    for trial in range(6):
        h = _hidden(128, trial)
        assert torch.equal(_decided(screen, h), _biased_argmax(h, weight, bias))


def test_crowded_calls_are_left_to_the_plain_product(monkeypatch):
    weight = _head(vocab=3000, width=64, seed=7)
    bias = torch.randn(3000, generator=torch.Generator().manual_seed(8))
    screen = ScreenedArgmax(weight, bias)
    monkeypatch.setattr(argmax, "RESCORE_SHARE", 0.0)  # every call too crowded
    for trial in range(4):
        h = _hidden(64, trial)
        banned = torch.tensor([int(_biased_argmax(h, weight, bias)), 11])
        for kwargs in ({}, {"exclude": banned}, {"exclude": banned, "renormalize": True}):
            assert screen(h, **kwargs) is None
    assert screen.crowded == screen.calls == 12


def test_renormalization_widens_the_threshold_by_the_tie_margin():
    # logits far below the bound's relative term: only the widened threshold brings token 9,
    # which log_softmax ties with the best (40) and which then wins as the lower index
    weight = torch.zeros(5000, 4)
    weight[:, 0] = -(2.0 ** -10)  # the other tokens, below the margin: not candidates
    weight[40, 0], weight[9, 0] = 2.0 ** -16, 2.0 ** -16 - 2.0 ** -22
    h = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert int(F.log_softmax(F.linear(h, weight), dim=-1).argmax()) == 9
    # 9 is a candidate, so the rescoring sees the possible tie and leaves the step to the caller
    screen = ScreenedArgmax(weight)
    assert screen(h, renormalize=True) is None and screen.calls == 1 and screen.crowded == 0


def test_the_bias_rounding_is_in_the_bound_where_the_logits_cancel_it():
    # logit = h . W_j + b_j with h . W_j = -3008 (exact) against a bias of ~3008, which bfloat16
    # rounds by up to 8: the screen ranks 5 first by 4, while in float32 3 is best by 3.8. The
    # other tokens' logits are -1008, far below both
    weight = torch.zeros(1000, 2)
    weight[:, 0] = -3008.0
    weight[5, 1] = 4.0
    bias = torch.full((1000,), 2000.0)
    bias[3], bias[5] = 3015.9, 3008.1
    h = torch.ones(1, 2)
    screen = ScreenedArgmax(weight, bias)
    s = torch.mm(torch.ones(1, 3).bfloat16(), screen.screen)[0]
    assert int(s.argmax()) == 5 and int(_biased_argmax(h, weight, bias)) == 3
    assert int(_decided(screen, h)) == 3
