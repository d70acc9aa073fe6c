"""Tests parametrized over the registry: a new converter or catalog entry is covered here
without new test code (the style of timm's tests/test_models.py)."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

import zoo
from zoo.checkpoint import read_safetensors, save_safetensors
from zoo.errors import ConversionError
from zoo.loading import build_model, load_full
from zoo.registry import get_catalog
from zoo.verification import verify

from conftest import converters, digest, write_checkpoint

ENTRIES = sorted(get_catalog().models.values(), key=lambda e: e.name)
CONVERTERS = converters()


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_entry_resolves_and_builds_with_its_parameter_count(entry):
    catalog = get_catalog()
    arch = catalog.architecture(entry.architecture)
    conv = catalog.converter(entry.converter)
    assert conv.architecture == arch.name
    assert entry.task in arch.tasks
    for alias in entry.aliases:
        assert catalog.get(alias).name == entry.name
    model = build_model(arch, conv.architecture_config(entry.config), entry.task)  # meta device: no memory, no init
    n = sum(p.numel() for p in model.parameters())
    assert entry.params == n, f"{entry.name}: registry says {entry.params}, model has {n}"


@pytest.mark.parametrize("conv", CONVERTERS, ids=lambda c: c.name)
def test_converter_is_complete(conv):
    assert conv.reference and conv.hub_layout and conv.tiny_config, "verify needs all three"
    assert conv.tasks, "tasks maps Hugging Face class names to zoo tasks"
    for rule in conv.key_map:
        if rule.transform is not None:
            assert rule.transform.doc, f"transform {rule.transform.name} needs a docstring"


@pytest.mark.parametrize("layout", ["hub", "save_pretrained"])
@pytest.mark.parametrize("conv", CONVERTERS, ids=lambda c: c.name)
def test_parity_on_tiny_random_weights(conv, layout, tmp_path):
    write_checkpoint(conv, tmp_path, layout)
    before = digest(tmp_path)
    report = verify(str(tmp_path), device="cpu")
    assert report.passed, report.render()
    assert report.max_abs_diff <= report.tolerance <= 1e-3
    assert report.accounting["loaded"] > 0
    assert digest(tmp_path) == before, "verify must not modify its input"


@pytest.mark.parametrize("conv", CONVERTERS, ids=lambda c: c.name)
def test_packed_weights_change_nothing_but_speed(conv, tmp_path, monkeypatch):
    """On CPU float32 every zoo.accel.ops.Linear is packed for MKL and its plain pages released: the
    weights still read as the file's values, the outputs match the unpacked model's, and the
    input files are untouched."""
    from zoo.accel.ops import Linear
    from zoo.types import import_ref

    write_checkpoint(conv, tmp_path)
    before = digest(tmp_path)
    packed = load_full(str(tmp_path), device="cpu")
    monkeypatch.setenv("ZOO_PACK", "0")
    plain = load_full(str(tmp_path), device="cpu")
    linears = [m for m in packed.model.modules() if isinstance(m, Linear)]
    if torch.backends.mkl.is_available():
        assert all(m._packed is not None for m in linears)
    assert all(m._packed is None for m in plain.model.modules() if isinstance(m, Linear))
    want = plain.model.state_dict()
    for key, value in packed.model.state_dict().items():
        assert torch.equal(value, want[key]), key
    inputs = import_ref(packed.architecture.example_inputs)(packed.arch_config, packed.task, 2, 8, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        got, ref = packed.model(**inputs), plain.model(**inputs)
        copied = copy.deepcopy(packed.model)(**inputs)  # packed copies are caches: not copied
    for name in ("logits", "last_hidden_state"):
        if getattr(ref, name, None) is not None:
            torch.testing.assert_close(getattr(got, name), getattr(ref, name), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(getattr(copied, name), getattr(ref, name), atol=1e-5, rtol=1e-5)
    assert digest(tmp_path) == before


def _break(conv, expected):
    """A converter with one plausible bug: a transform dropped on a square weight, else the
    targets of two same-shaped tensors swapped."""
    key_map = list(conv.key_map)
    for i, rule in enumerate(key_map):
        if rule.transform is not None:
            target = rule.target.replace("{}", "0")
            if target in expected and len(set(expected[target].shape)) == 1:
                key_map[i] = dataclasses.replace(rule, transform=None)
                return dataclasses.replace(conv, key_map=tuple(key_map)), f"no {rule.transform.name} on {rule.source}"
    rules = [(i, r) for i, r in enumerate(key_map) if r.target and r.target.replace("{}", "0") in expected]
    for a, (i, r1) in enumerate(rules):
        for j, r2 in rules[a + 1:]:
            s1, s2 = expected[r1.target.replace("{}", "0")].shape, expected[r2.target.replace("{}", "0")].shape
            if s1 == s2 and r1.source.count("{}") == r2.source.count("{}"):
                key_map[i] = dataclasses.replace(r1, target=r2.target)
                key_map[j] = dataclasses.replace(r2, target=r1.target)
                return dataclasses.replace(conv, key_map=tuple(key_map)), f"{r1.source} <-> {r2.source}"
    pytest.fail(f"{conv.name}: found no way to break it")


@pytest.mark.parametrize("conv", CONVERTERS, ids=lambda c: c.name)
def test_broken_converter_is_caught_by_verify(conv, tmp_path):
    write_checkpoint(conv, tmp_path)
    arch = get_catalog().architecture(conv.architecture)
    task = next(iter(conv.tasks.values()))
    expected = build_model(arch, conv.architecture_config(json.loads((tmp_path / "config.json").read_text())), task).state_dict()
    broken, what = _break(conv, expected)
    report = verify(str(tmp_path), device="cpu", converter=broken)
    assert not report.passed, f"verify did not catch: {what}"
    assert report.first_divergence, "a failure names where outputs part ways"


@pytest.mark.parametrize("conv", CONVERTERS, ids=lambda c: c.name)
def test_missing_extra_and_misshapen_keys_are_named(conv, tmp_path):
    write_checkpoint(conv, tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = {k: v.clone() for k, v in read_safetensors(path).items()}
    consumed = load_full(str(tmp_path), device="cpu").report.consumed
    victim = sorted(k for k in consumed if tensors[k].dim() >= 1 and tensors[k].is_floating_point())[0]

    cases = {
        "missing": {k: v for k, v in tensors.items() if k != victim},
        "extra": {**tensors, "some.unknown.weight": torch.zeros(3)},
        "shape": {**tensors, victim: torch.zeros(*[d + 1 for d in tensors[victim].shape])},
        "dtype": {**tensors, victim: torch.zeros(tensors[victim].shape, dtype=torch.int32)},
    }
    for case, state in cases.items():
        save_safetensors(state, path)
        before = digest(tmp_path)
        with pytest.raises(ConversionError) as err:
            zoo.load(str(tmp_path), device="cpu")
        message = str(err.value)
        # a missing key is named as the target it fills: the file may name it otherwise
        # (renamed layouts, e.g. BERT's LayerNorm.gamma/beta)
        named = {"extra": "some.unknown.weight", "missing": consumed[victim]}.get(case, victim)
        assert named in message, (case, message)
        if case == "shape":
            assert str(list(tensors[victim].shape)) in message or str(list(tensors[victim].t().shape)) in message
        assert digest(tmp_path) == before


@pytest.mark.parametrize("conv", CONVERTERS, ids=lambda c: c.name)
def test_every_source_key_is_accounted_for(conv, tmp_path):
    write_checkpoint(conv, tmp_path)
    loaded = load_full(str(tmp_path), device="cpu")
    source = set(read_safetensors(tmp_path / "model.safetensors"))
    report = loaded.report
    assert set(report.consumed) | set(report.dropped) == source
    assert all(report.dropped.values()), "every dropped key has a reason"
    assert set(report.consumed.values()) == set(loaded.model.state_dict())
    assert not any(t.is_meta for t in loaded.model.state_dict().values())
    assert not loaded.model.training


def _smallest_per_architecture():
    best = {}
    for e in ENTRIES:
        if e.repo and (e.architecture not in best or (e.params or 0) < (best[e.architecture].params or 0)):
            best[e.architecture] = e
    return sorted(best.values(), key=lambda e: e.name)


@pytest.mark.parametrize("entry", _smallest_per_architecture(), ids=lambda e: e.name)
def test_full_size_verify_on_random_weights(entry):
    """One real-size model per architecture through the whole pipeline (Hub layout, random
    weights): sizes, dtypes and layouts that tiny configs cannot show."""
    report = verify(entry.name, device="cpu", seed=0, random_weights=True, batch=1, seq=8, new_tokens=3)
    assert report.passed, report.render()
    assert report.weights.startswith("random, seed 0")
