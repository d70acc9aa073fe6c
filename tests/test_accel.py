"""The speed layer (zoo.accel) behind its one step, for every converter with a reference: the
fast model computes what the plain one does, ``plain()`` undoes every fast path, each fast path
steps aside in training mode, and a broken fast path is caught by ``zoo verify`` while the
plain model still passes."""
from __future__ import annotations

import pytest
import torch

import zoo
from zoo import accel, testing
from zoo.accel import ops
from zoo.loading import load_full
from zoo.registry import get_catalog
from zoo.types import import_ref
from zoo.verification import verify

from conftest import converters, write_checkpoint

CONVERTERS = converters()


def _inputs(loaded):
    make = import_ref(loaded.architecture.example_inputs)
    return make(loaded.arch_config, loaded.task, 2, 8, torch.Generator().manual_seed(0))


def _outputs(model, inputs):
    with torch.inference_mode():
        out = model(**inputs)
    return {k: getattr(out, k) for k in ("logits", "last_hidden_state") if getattr(out, k, None) is not None}


@pytest.mark.parametrize("conv", CONVERTERS, ids=lambda c: c.name)
def test_fast_and_plain_agree_and_plain_undoes_every_fast_path(conv, tmp_path):
    write_checkpoint(conv, tmp_path)
    fast = load_full(str(tmp_path), device="cpu")
    plain = load_full(str(tmp_path), device="cpu", fast=False)
    assert "packed-linear" in accel.applied(fast.model)
    assert accel.applied(plain.model) == []
    assert not [type(m) for m in plain.model.modules() if type(m).__module__.startswith("zoo.accel")]
    inputs = _inputs(fast)
    want = _outputs(plain.model, inputs)
    with torch.inference_mode():  # real positions (BERT's unpadding leaves zeros at padding)
        compared = testing.assert_outputs_close(fast.model(**inputs), plain.model(**inputs), inputs, atol=1e-5,
                                                rtol=1e-5)
    assert {"logits", "last_hidden_state"} & set(compared)

    accel.plain(fast.model)
    assert accel.applied(fast.model) == []
    assert [type(m) for m in fast.model.modules()] == [type(m) for m in plain.model.modules()]
    for name, value in _outputs(fast.model, inputs).items():
        assert torch.equal(value, want[name]), name  # the very same computation again


def test_zoo_load_fast_false_gives_the_plain_model(tmp_path):
    write_checkpoint(get_catalog().converter("hf_gpt2"), tmp_path)
    model = zoo.load(str(tmp_path), device="cpu", fast=False)
    with torch.inference_mode():
        assert accel.applied(model) == [] and accel.decode_step(model) is None
    assert not any(isinstance(m, ops.Linear) for m in model.modules())
    with torch.inference_mode():
        assert accel.decode_step(zoo.load(str(tmp_path), device="cpu")) is not None


def _perturb_linear(monkeypatch):
    forward = ops.Linear.forward
    monkeypatch.setattr(ops.Linear, "forward", lambda self, x: forward(self, x) * 1.01)


def _perturb_qkv(monkeypatch):
    project = ops.PackedQKV.project_qkv

    def perturbed(self, x):
        q, k, v = project(self, x)
        return q, v, k  # keys and values swapped: the packed split read in the wrong order

    monkeypatch.setattr(ops.PackedQKV, "project_qkv", perturbed)


def _perturb_decode_step(monkeypatch):
    from zoo.accel import gpt2 as fast_gpt2

    step = fast_gpt2.step
    monkeypatch.setattr(fast_gpt2, "step", lambda *args: step(*args).flip(-1))


def _perturb_class_token_block(monkeypatch):
    from zoo.accel import vit as fast_vit

    blocks = fast_vit.ClassTokenViT.blocks
    monkeypatch.setattr(fast_vit.ClassTokenViT, "blocks", lambda self, x, hidden=None: blocks(self, x, hidden).flip(-1))


def _perturb_head(monkeypatch):
    from zoo.accel import encoder_decoder as fast_ed
    from zoo.accel import gpt2 as fast_gpt2

    monkeypatch.setattr(fast_gpt2.FewRowHeadGPT2, "logits", lambda self, x: ops.linear(x, self.wte.weight).flip(-1))
    monkeypatch.setattr(fast_ed.FewRowGenerator, "tied", lambda self, x, weight: ops.linear(x, weight).flip(-1))


def _perturb_unpadding(monkeypatch):
    from zoo.accel import bert as fast_bert

    layer = fast_bert._layer
    monkeypatch.setattr(fast_bert, "_layer", lambda block, x, padding: layer(block, x, padding).flip(-1))


def _perturb_activation(monkeypatch):
    from zoo import activations

    activate = activations.activate_
    for module in ("zoo.accel.bert", "zoo.accel.vit", "zoo.accel.encoder_decoder"):
        monkeypatch.setattr(f"{module}.activate_", lambda act, x, *producers: activate(act, x, *producers).flip(-1))


BREAK = {"bert-unpadding": _perturb_unpadding, "in-place-activation": _perturb_activation, "packed-linear": _perturb_linear, "few-row-head": _perturb_head, "fused-qkv": _perturb_qkv, "gpt2-decode-step": _perturb_decode_step,
         "vit-class-token-block": _perturb_class_token_block}


def _paths():
    """(converter, fast path) for every fast path of each converter's architecture."""
    catalog = get_catalog()
    return [(conv, fp.name) for conv in CONVERTERS
            for fp in accel.fast_paths(catalog.architecture(conv.architecture))]


@pytest.mark.parametrize("conv,path", _paths(), ids=lambda v: getattr(v, "name", v))
def test_a_broken_fast_path_is_caught_by_verify(conv, path, tmp_path, monkeypatch):
    write_checkpoint(conv, tmp_path)
    if path not in accel.applied(zoo.load(str(tmp_path), device="cpu")):
        pytest.skip(f"{path} does not apply on this machine (no MKL?)")
    BREAK[path](monkeypatch)
    report = verify(str(tmp_path), device="cpu")
    assert not report.passed
    assert f"the difference is in the fast path {path};" in report.first_divergence, report.render()
    assert verify(str(tmp_path), device="cpu", plain=True).passed


@pytest.mark.parametrize("conv", CONVERTERS, ids=lambda c: c.name)
def test_fast_paths_step_aside_in_training(conv, tmp_path, monkeypatch):
    """model.train() with gradients: no packed product runs, and gradients reach every weight."""
    write_checkpoint(conv, tmp_path)
    loaded = load_full(str(tmp_path), device="cpu")
    calls = []
    packed_linear = ops.Packed.linear
    monkeypatch.setattr(ops.Packed, "linear", lambda self, x: calls.append(1) or packed_linear(self, x))
    inputs = _inputs(loaded)
    _outputs(loaded.model, inputs)
    assert calls or not ops.packing_available()  # used in eval mode
    calls.clear()
    model = loaded.model.train().requires_grad_(True)
    out = model(**inputs)
    value = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
    value.float().square().mean().backward()
    assert calls == []
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())


@pytest.mark.parametrize("present", [True, False])
def test_global_hooks_are_read_behind_a_capability_check(present, monkeypatch):
    """torch's global hooks live in private dicts: where they are missing the answer is "maybe
    set" (True), so code that bypasses the modules steps aside."""
    from torch.nn.modules import module as nn_module

    if not present:
        monkeypatch.delattr(nn_module, "_global_forward_hooks")
    model = torch.nn.Linear(2, 2)
    assert ops.hooks_set(model) is (not present)
    handle = model.register_forward_hook(lambda *a: None)
    assert ops.hooks_set(model)
    handle.remove()


@pytest.mark.parametrize("conv", CONVERTERS, ids=lambda c: c.name)
def test_eval_after_training_packs_the_new_weights_again(conv, tmp_path):
    """Training lets the packed copies go; after optimizer steps, model.eval() makes them again
    from the new weights: inference reads them (speed back) and equals the plain product."""
    if not ops.packing_available():
        pytest.skip("no MKL packing in this torch build")
    write_checkpoint(conv, tmp_path)
    loaded = load_full(str(tmp_path), device="cpu")
    model = loaded.model.train().requires_grad_(True)
    # training reads the plain weights: the packed copies are let go, and their memory
    assert not [m for m in model.modules() if getattr(m, "_packed", None) or getattr(m, "_qkv", None)]
    inputs = _inputs(loaded)
    out = model(**inputs)
    (out.logits if out.logits is not None else out.last_hidden_state).float().pow(2).mean().backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    model.eval().requires_grad_(False)
    packed = [m for m in model.modules() if isinstance(m, (ops.Linear, ops.PackedQKV))
              and (getattr(m, "_packed", None) or getattr(m, "_qkv", None)) is not None]
    assert packed and all((m._packed.current([m.weight], [m.bias]) if isinstance(m, ops.Linear)
                           else m._qkv.current(*m._parts())) for m in packed)
    fast = _outputs(model, inputs)
    accel.plain(model)
    plain = _outputs(model, inputs)
    from zoo.verification import output_mask, real_positions

    assert plain and fast.keys() == plain.keys()
    mask = output_mask(inputs)  # padding positions carry no meaning (BERT's fast path: zeros)
    for name in plain:
        torch.testing.assert_close(real_positions(fast[name], mask), real_positions(plain[name], mask),
                                   atol=1e-5, rtol=1e-5)
