"""zoo.accel.ops.linear computes F.linear, in either orientation, for every row count; in-place
activations compute the activations."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo.activations import ACTIVATIONS, activate_
from zoo.accel import ops
from zoo.accel.ops import Linear, Packed, linear


@pytest.fixture(autouse=True, params=["onednn", "mkl"])
def gemm(request, monkeypatch):
    """Every test once with oneDNN's products (zoo's choice where torch has them) and once with
    MKL's (ZOO_GEMM=mkl, and torches without oneDNN)."""
    monkeypatch.setenv("ZOO_GEMM", request.param)
    monkeypatch.setattr(ops, "_ONEDNN", None)
    if request.param == "onednn" and not ops.onednn():
        pytest.skip("this torch has no oneDNN linear")
    assert ops.onednn() == (request.param == "onednn")
    return request.param


@pytest.mark.parametrize("shape", [(1, 1, 48), (2, 48), (3, 2, 48), (4, 48), (2, 8, 48), (128, 48), (129, 48), (2, 300, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_f_linear(shape, bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    w = torch.randn(96, 48, generator=gen)
    b = torch.randn(96, generator=gen) if bias else None
    out = linear(x, w, b)
    assert out.shape == (*shape[:-1], 96) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, w, b), atol=1e-5, rtol=1e-5)


def test_linear_module_keeps_nn_linear_keys():
    m = Linear(8, 4)
    assert set(m.state_dict()) == {"weight", "bias"} and isinstance(m, torch.nn.Linear)


# --------------------------------------------------------------------------- packed weights (oneDNN's or MKL's layout)

needs_packing = pytest.mark.skipif(not __import__("zoo.accel.ops", fromlist=["x"]).packing_available(),
                                   reason="this torch cannot pack weights for oneDNN or MKL")


def _packed_linear(n_in=48, n_out=96, bias=True):
    torch.manual_seed(0)
    m = Linear(n_in, n_out, bias=bias).eval().requires_grad_(False)
    assert m.pack_weights() == [m.weight]
    return m


@needs_packing
@pytest.mark.parametrize("shape", [(1, 48), (1, 1, 48), (5, 48), (2, 8, 48), (128, 48), (3, 300, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_matches_f_linear(shape, bias):
    m = _packed_linear(bias=bias)
    x = torch.randn(*shape)
    assert m._packed.usable(x, [m.weight], [m.bias])
    out = m(x)
    assert out.shape == (*shape[:-1], 96)
    torch.testing.assert_close(out, F.linear(x, m.weight, m.bias), atol=1e-5, rtol=1e-5)
    strided = torch.randn(shape[0], 2 * 48)[:, ::2]  # a non-contiguous input
    torch.testing.assert_close(m(strided), F.linear(strided, m.weight, m.bias), atol=1e-5, rtol=1e-5)


@needs_packing
def test_packed_copy_follows_the_weight():
    m = _packed_linear()
    x = torch.randn(4, 48)
    with torch.no_grad():
        m.weight.mul_(2)  # an in-place update: the packed copy is stale and must not be used
    assert not m._packed.usable(x, [m.weight], [m.bias])
    torch.testing.assert_close(m(x), F.linear(x, m.weight, m.bias))

    m = _packed_linear()
    m.load_state_dict({"weight": torch.zeros(96, 48), "bias": torch.ones(96)})
    torch.testing.assert_close(m(x), torch.ones(4, 96))

    m = _packed_linear().double()  # moved to another dtype: plain path
    torch.testing.assert_close(m(x.double()), F.linear(x.double(), m.weight, m.bias))


@needs_packing
def test_packed_copy_is_not_used_for_training_or_autograd():
    m = _packed_linear()
    x = torch.randn(4, 48)
    with torch.no_grad():
        m.weight.copy_(torch.zeros(96, 48))  # stale packed copy: its use would show up below
    m._packed = Packed([m.weight], [m.bias])
    with torch.no_grad():
        m.weight.data.fill_(1.0)  # through .data: not version-counted, the copy says zeros
    m.train()
    torch.testing.assert_close(m(x), F.linear(x, m.weight, m.bias))  # training: plain weight
    m.eval().requires_grad_(True)
    assert not m._packed.usable(x, [m.weight], [m.bias])  # autograd needs the plain weight
    m(x).sum().backward()
    assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert m._packed.usable(x, [m.weight], [m.bias])


@needs_packing
def test_packed_copy_is_a_cache_not_state(tmp_path):
    import copy

    from zoo.accel import unpack_all
    from zoo.accel.ops import pack_all

    m = _packed_linear()
    assert set(m.state_dict()) == {"weight", "bias"}
    assert copy.deepcopy(m)._packed is None
    torch.save(m, tmp_path / "m.pt")
    assert torch.load(tmp_path / "m.pt", weights_only=False)._packed is None
    seq = torch.nn.Sequential(Linear(4, 4), torch.nn.ReLU(), Linear(4, 2)).eval()
    assert len(pack_all(seq)) == 2 and all(m._packed is not None for m in seq if isinstance(m, Linear))
    unpack_all(seq)
    assert all(m._packed is None for m in seq if isinstance(m, Linear))


@needs_packing
def test_the_copy_is_in_the_layout_of_the_library_that_computes(gemm):
    m = _packed_linear()
    assert m._packed.onednn == (gemm == "onednn")


def test_zoo_pack_0_switches_packing_off(monkeypatch):
    monkeypatch.setenv("ZOO_PACK", "0")
    from zoo.accel.ops import packing_available

    assert not packing_available() and Linear(4, 4).pack_weights() == []


@needs_packing
@pytest.mark.parametrize("bias", [True, False])
def test_fused_packed_weights_give_the_outputs_side_by_side(bias):
    """q, k and v packed as one product: the same as three Linears, and stale once any changes."""
    torch.manual_seed(0)
    parts = [torch.nn.Linear(48, 48, bias=bias).requires_grad_(False) for _ in range(3)]
    weights, biases = [p.weight for p in parts], [p.bias for p in parts]
    packed = Packed.of(weights, biases)
    x = torch.randn(2, 5, 48)
    assert packed.usable(x, weights, biases)
    want = torch.cat([p(x) for p in parts], dim=-1)
    torch.testing.assert_close(packed.linear(x), want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        (parts[2].bias if bias else parts[2].weight).add_(1)
    assert not packed.usable(x, weights, biases)
    assert Packed.of(weights, [biases[0], None, None] if bias else [torch.zeros(48), None, None]) is None


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_in_place_activation_equals_the_activation(name):
    act = ACTIVATIONS[name]
    x = torch.randn(4, 33, generator=torch.Generator().manual_seed(0)) * 4
    expected = act(x)
    with torch.inference_mode():
        y = x.clone()
        out = activate_(act, y)
    assert torch.equal(out, expected)  # the same kernel: equal bit for bit
    if name != "quick_gelu":  # every other activation has an in-place form, and it is used
        assert out is y


def test_in_place_activation_spares_what_a_forward_hook_holds():
    producer = Linear(6, 5)
    seen = []
    producer.register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.inference_mode():
        y = producer(torch.randn(3, 6))
        before = y.clone()
        out = activate_(ACTIVATIONS["gelu"], y, producer)
    assert out is not y and torch.equal(seen[0], before)
    assert torch.equal(out, F.gelu(before))


def test_pruned_linear_computes_with_the_pruned_weight():
    from torch.nn.utils import prune

    m = Linear(8, 4)
    prune.l1_unstructured(m, "weight", amount=0.5)  # weight becomes weight_orig * weight_mask
    x = torch.randn(2, 8)
    assert torch.equal(m(x), F.linear(x, m.weight, m.bias))


def test_in_place_activation_leaves_autograd_its_input():
    x = torch.randn(8, requires_grad=True)
    h = x * 2
    y = activate_(ACTIVATIONS["gelu"], h)
    assert y is not h  # gelu's backward reads h: it must not be overwritten
    y.sum().backward()
    ref = x.detach().clone().requires_grad_()
    F.gelu(ref * 2).sum().backward()
    assert torch.equal(x.grad, ref.grad)
