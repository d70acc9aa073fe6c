"""zoo.argmax: greedy's best token from a bfloat16 screen of the head, exact against float32."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo.argmax import (BUILD_AT_TOKENS, SCREEN_ATTRIBUTE, ScreenedArgmax, _bfloat16_at_most, screened,
                         sums_in_float32)
from zoo.ops import unpack_all


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


@pytest.mark.parametrize("n", [601, 768, 1600])
def test_the_screen_kernel_sums_in_float32(n):
    assert sums_in_float32(n)  # the probe that screened() makes before a screen is used
    # 1 + (n - 1) * 2^-9: summed in bfloat16, each 2^-9 would vanish next to 1 (its ulp is 2^-7)
    row = torch.full((1, n), 2.0 ** -9)
    row[0, 0] = 1.0
    out = _screened(ScreenedArgmax(row), torch.ones(1, n))
    expected = 1 + (n - 1) * 2.0 ** -9
    assert abs(float(out[0]) - expected) <= expected * 2.0 ** -8


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
            + 2.0 ** -126 * n ** 0.5 * (h16_norm + screen_norm) + (2 * n + 2) * 2.0 ** -126)


def _check_bound(screen, weight, h):
    """The screened logits are within the bound of the exact ones, and the bound is tight."""
    exact = (h.double() @ weight.double().t())[0]
    s = _screened(screen, h)
    A = screen.bound(h)
    assert _bound(weight, h) <= A <= 1.02 * _bound(weight, h)
    assert bool(((s - exact).abs() <= A + s.abs() * 2.0 ** -8 / (1 - 2.0 ** -8)).all())


@pytest.mark.parametrize("seed", range(4))
def test_the_bound_holds_and_the_choice_is_the_float32_argmax(seed, monkeypatch):
    weight = _head(seed=seed)
    screen = ScreenedArgmax(weight)
    # on hidden states like a trained model's, the screen decides: never the full product
    monkeypatch.setattr(screen, "_full", lambda h: pytest.fail("fell back to the float32 product"))
    for trial in range(10):
        h = _hidden(weight.shape[1], 100 * seed + trial, massive=trial % 2 == 0)
        _check_bound(screen, weight, h)
        assert torch.equal(screen(h), F.linear(h, weight).argmax(dim=1))


@pytest.mark.parametrize("h_scale,w_scale", [(1e-25, 1.0), (1.0, 1e-25), (1e-20, 1e-20), (1e-30, 1e-10),
                                             (1e15, 1.0), (1.0, 1e19), (1e-3, 1e3)])
def test_the_choice_holds_at_every_magnitude(h_scale, w_scale):
    weight = _head(vocab=1000, width=64, seed=2) * w_scale
    screen = ScreenedArgmax(weight)
    for trial in range(8):
        h = _hidden(64, trial) * h_scale
        _check_bound(screen, weight, h)
        assert torch.equal(screen(h), F.linear(h, weight).argmax(dim=1))


def test_the_threshold_is_rounded_down_to_bfloat16():
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(200, generator=g) * 10.0 ** e for e in (-30, -3, 0, 5, 30)]).double()
    values = torch.cat([values, torch.tensor([0.0, 1.0, -1.0, 3.3e38, -3.3e38, 3.4e38, -3.4e38]).double()])
    for x in values.tolist():
        t = _bfloat16_at_most(x)
        above = torch.nextafter(t, torch.tensor(float("inf"), dtype=torch.bfloat16))
        assert t.dtype == torch.bfloat16 and float(t) <= x < float(above), x


def test_weights_beyond_bfloat16s_range_and_non_finite_ones():
    weight = _head(vocab=64, width=8, seed=5)
    weight[5] = torch.tensor([3.399e38, -1e30, 0, 0, 0, 0, 0, 0])  # rounds to inf in bfloat16
    h = torch.tensor([[1.0, 1e-9, 0, 0, 0, 0, 0, 0]])
    assert torch.equal(ScreenedArgmax(weight)(h), F.linear(h, weight).argmax(dim=1))
    for bad in (float("inf"), float("-inf"), float("nan")):
        weight = _head(vocab=64, width=8, seed=6)
        weight[9, 3] = bad
        h = _hidden(8, 1, massive=False)
        assert torch.equal(ScreenedArgmax(weight)(h), F.linear(h, weight).argmax(dim=1))


def test_near_ties_the_screen_cannot_see_are_decided_in_float32():
    weight = _head(vocab=512, width=64)
    h = _hidden(64, 3)
    best = int(F.linear(h, weight).argmax())
    # rows a hair above and below the best one, and the best one moved behind them
    weight[7], weight[300], weight[best] = weight[best] * (1 + 1e-5), weight[best] * (1 - 1e-5), weight[0]
    screen = ScreenedArgmax(weight)
    s = _screened(screen, h)
    assert s[7] == s[300]  # to bfloat16 the two are one logit
    assert torch.equal(screen(h), torch.tensor([7]))
    assert torch.equal(screen(-h), F.linear(-h, weight).argmax(dim=1))


def test_non_finite_hidden_states_fall_back_to_float32():
    weight = _head(vocab=300, width=32)
    h = _hidden(32, 1)
    h[0, 5] = float("nan")
    assert torch.equal(ScreenedArgmax(weight)(h), F.linear(h, weight).argmax(dim=1))
    h[0, 5] = float("inf")
    assert torch.equal(ScreenedArgmax(weight)(h), F.linear(h, weight).argmax(dim=1))


def test_the_screen_follows_the_weight_and_applies_to_one_row_of_float32_only():
    class Owner:
        pass

    owner, weight = Owner(), _head(vocab=200, width=16)
    assert screened(owner, weight, 1, BUILD_AT_TOKENS - 1) is None  # too short to pay for it
    first = screened(owner, weight, 1, BUILD_AT_TOKENS)
    assert first is not None and screened(owner, weight, 1, 2) is first  # made: used from then on
    with torch.no_grad():
        weight[0] += 1  # an in-place edit: the copy no longer describes the weight
    assert screened(owner, weight, 1, 2) is None and getattr(owner, SCREEN_ATTRIBUTE) is None
    assert screened(owner, weight, 1, BUILD_AT_TOKENS) is not first
    assert screened(owner, weight, 2, BUILD_AT_TOKENS) is None
    assert screened(owner, weight.double(), 1, BUILD_AT_TOKENS) is None
    model = torch.nn.Linear(2, 2)
    screened(model, weight, 1, BUILD_AT_TOKENS)
    unpack_all(model)  # after edits through .data, as for packed copies
    assert SCREEN_ATTRIBUTE not in model.__dict__
