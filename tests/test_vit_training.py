"""ViT training: ``labels=`` gives transformers' ViTForImageClassification loss (every
problem_type), its gradients for every parameter, the same weights after an AdamW step (read
by the fast paths once back in eval mode), and dropout where and as often as the config says."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
from transformers import ViTConfig, ViTForImageClassification  # noqa: E402

import zoo  # noqa: E402
from zoo import accel  # noqa: E402
from zoo.checkpoint import save_safetensors  # noqa: E402
from zoo.converters import hf_vit  # noqa: E402
from zoo.convert import convert  # noqa: E402
from zoo.errors import ConfigError, InputError  # noqa: E402

from conftest import DropoutDraws, attention_dropout_recorder, record_dropout, zero_fraction_ok  # noqa: E402

LOSS_RTOL = 1e-5  # relative, float32
GRAD_RTOL = 1e-4  # max abs difference relative to the gradient's norm
ZERO = 1e-6  # a gradient below this fraction of the whole gradient's norm is zero (rounding noise)
BATCH = 3

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
            patch_size=8, num_labels=5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

# name -> (config changes, labels of a batch)
CASES = {
    "single_label": ({}, lambda g: torch.randint(0, 5, (BATCH,), generator=g)),
    "multi_label": ({}, lambda g: (torch.rand(BATCH, 5, generator=g) > 0.5).float()),
    "regression": ({"num_labels": 1}, lambda g: torch.randn(BATCH, generator=g)),
    # problem_type in config.json wins over the labels' dtype
    "config_regression": ({"problem_type": "regression"}, lambda g: torch.randn(BATCH, 5, generator=g)),
    "config_multi_label": ({"problem_type": "multi_label_classification"},
                           lambda g: torch.rand(BATCH, 5, generator=g)),
}


def write(folder: Path, seed: int = 0, layout: str = "hub", **changes) -> ViTForImageClassification:
    """A random ViTForImageClassification saved in ``folder`` in the Hub's layout (``vit.`` prefix,
    ``classifier.weight``) or as save_pretrained writes it; returned in eval mode."""
    torch.manual_seed(seed)
    ref = ViTForImageClassification(ViTConfig(**{**TINY, **changes}))
    with torch.no_grad():  # random init leaves LayerNorms at 1/0 and biases at 0: perturb all
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "save_pretrained":
        ref.save_pretrained(folder)
    else:
        state = hf_vit.hub_layout({k: v.detach().clone() for k, v in ref.state_dict().items()}, ref.config.to_dict())
        assert "vit.encoder.layer.0.attention.attention.query.weight" in state and "classifier.weight" in state
        save_safetensors(state, folder / "model.safetensors")
        ref.config.architectures = ["ViTForImageClassification"]
        ref.config.to_json_file(folder / "config.json")
    return ref.eval()


def pixels(seed: int = 1) -> torch.Tensor:
    return torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def zoo_names(ref, model) -> dict:
    """transformers parameter name -> zoo parameter name, through the converter's key map (the
    report's ``consumed``); a tied tensor answers under each of its names."""
    _, report = convert(ref.state_dict(), hf_vit.CONVERTER, model.state_dict())
    out = {}
    for name, p in ref.named_parameters(remove_duplicate=False):
        if name in report.consumed:
            out[name] = report.consumed[name]
    return out


def gradient_mismatches(ref, model) -> list:
    """The parameters whose gradients differ by more than GRAD_RTOL of their norm (every zoo
    parameter must have been compared once).

    A gradient that is zero in exact arithmetic (the key biases': adding one number to every
    attention score of a row changes no probability) is rounding noise on both sides; one
    below ZERO of the whole gradient's norm counts as zero, and must be zero on both sides."""
    names, seen, bad = zoo_names(ref, model), set(), []
    ours = dict(model.named_parameters())
    total = math.sqrt(sum(p.grad.norm().item() ** 2 for p in ref.parameters() if p.grad is not None))
    for name, p in ref.named_parameters():
        if not p.requires_grad:
            continue
        target = names[name]
        seen.add(target)
        g_ref, g_zoo = p.grad, ours[target].grad
        assert g_ref is not None and g_zoo is not None, f"{name} -> {target}: no gradient"
        err = (g_zoo - g_ref).abs().max().item()
        norm = g_ref.norm().item()
        if norm < ZERO * total:
            if g_zoo.norm().item() >= ZERO * total:
                bad.append(f"{name} -> {target}: zero in transformers, norm {g_zoo.norm().item():.3g} in zoo")
        elif err > GRAD_RTOL * norm:
            bad.append(f"{name} -> {target}: {err:.3g} vs norm {norm:.3g}")
    assert seen == set(ours), f"zoo parameters never compared: {sorted(set(ours) - seen)}"
    return bad


def trained(folder: Path, fast: bool = True):
    model = zoo.load(folder, device="cpu", fast=fast)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    return model.train().requires_grad_(True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_and_gradients_match_transformers(case, tmp_path):
    changes, make_labels = CASES[case]
    ref = write(tmp_path, **changes).train()
    model = trained(tmp_path)
    assert "vit-class-token-block" in accel.applied(model)  # it trains too: the loss reads the class token only
    x, labels = pixels(), make_labels(torch.Generator().manual_seed(2))
    theirs = ref(pixel_values=x, labels=labels)
    ours = model(x, labels=labels)
    assert ours.loss.shape == () and ours.loss.requires_grad
    assert abs(ours.loss.item() - theirs.loss.item()) <= LOSS_RTOL * abs(theirs.loss.item()), (ours.loss, theirs.loss)
    theirs.loss.backward()
    ours.loss.backward()
    assert not gradient_mismatches(ref, model)


@pytest.mark.parametrize("layout", ["hub", "save_pretrained"])
def test_adamw_step_then_eval_matches(layout, tmp_path):
    """One AdamW step on both sides, then eval mode: the same logits, from the fast model (its
    packed copies and class-token block must read the updated weights)."""
    ref = write(tmp_path, layout=layout).train()
    model = trained(tmp_path)
    x, labels = pixels(), torch.tensor([0, 3, 4])
    before = model.eval()(x).logits.detach().clone()
    model.train()
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, betas=(0.9, 0.98), weight_decay=0.1) for m in (ref, model)]
    for m, opt in zip((ref, model), opts):
        opt.zero_grad()
        m(pixel_values=x, labels=labels).loss.backward()
        opt.step()
    ref.eval()
    model.eval()
    assert "vit-class-token-block" in accel.applied(model)
    with torch.no_grad():
        want, got = ref(pixel_values=x).logits, model(x).logits
    assert (got - before).abs().max() > 1e-3, "the step changed nothing: the check would be vacuous"
    assert (got - want).abs().max() <= 1e-5, (got - want).abs().max()
    with torch.no_grad():  # the plain model agrees with the fast one
        assert (accel.plain(model)(x).logits - want).abs().max() <= 1e-5


def test_gradient_check_catches_a_swapped_weight(tmp_path):
    """The gradient comparison is not vacuous: the query and key weights of one block swapped
    in zoo's model make the loss or the gradients differ."""
    ref = write(tmp_path).train()
    model = trained(tmp_path)
    sa = model.encoder.layer[0].attention.attention
    with torch.no_grad():
        q = sa.query.weight.clone()
        sa.query.weight.copy_(sa.key.weight)
        sa.key.weight.copy_(q)
    x, labels = pixels(), torch.tensor([1, 2, 0])
    theirs, ours = ref(pixel_values=x, labels=labels), model(x, labels=labels)
    theirs.loss.backward()
    ours.loss.backward()
    loss_differs = abs(ours.loss.item() - theirs.loss.item()) > LOSS_RTOL * abs(theirs.loss.item())
    assert loss_differs or gradient_mismatches(ref, model)
    assert any("query" in line or "key" in line for line in gradient_mismatches(ref, model))


def test_loss_is_zoo_losses_classification_in_eval_mode_too(tmp_path):
    """labels in eval mode (the class-token fast path running under autograd) give the same
    loss and gradients as transformers."""
    ref = write(tmp_path).eval()
    model = zoo.load(tmp_path, device="cpu").requires_grad_(True)
    x, labels = pixels(), torch.tensor([4, 0, 2])
    theirs, ours = ref(pixel_values=x, labels=labels), model(x, labels=labels)
    assert abs(ours.loss.item() - theirs.loss.item()) <= LOSS_RTOL * abs(theirs.loss.item())
    assert torch.allclose(ours.loss, F.cross_entropy(ours.logits, labels))
    theirs.loss.backward()
    ours.loss.backward()
    assert not gradient_mismatches(ref, model)


# ---------------------------------------------------------------------------------- dropout


def test_dropout_sites_and_rates(tmp_path):
    """hidden_dropout_prob at the embeddings and on both sublayer outputs of every block (one
    nn.Dropout each, as transformers' ViT: 1 + layers), attention_probs_dropout_prob handed to
    the attention; measured zero fractions within 5 standard errors of p."""
    write(tmp_path, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.2)
    model = trained(tmp_path)
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == 1 + TINY["num_hidden_layers"] and all(m.p == 0.3 for m in drops)
    assert all(layer.attention.attention.dropout == 0.2 for layer in model.encoder.layer)
    stats, handles = record_dropout(model)
    with torch.no_grad():
        for seed in range(4):
            model(pixels(seed))
    for h in handles:
        h.remove()
    for module, (zeroed, n, scaled) in stats.items():
        assert n > 1000 and scaled
        assert zero_fraction_ok(zeroed / n, 0.3, n), (zeroed / n, n)
    # the layer's one Dropout serves both sublayers: called twice per forward
    assert stats[model.encoder.layer[0].dropout][1] == 2 * stats[model.embeddings.dropout][1]


def test_attention_dropout_rate_reaches_the_probabilities(tmp_path, monkeypatch):
    """The attention call gets dropout_p = attention_probs_dropout_prob in training mode and 0
    in eval mode; with that p, the attention probabilities (read through an identity value
    matrix) are zeroed at rate p."""
    write(tmp_path, attention_probs_dropout_prob=0.25)
    model = trained(tmp_path)
    seen, counts = attention_dropout_recorder(monkeypatch)
    with torch.no_grad():
        model(pixels())
        assert seen == [0.25] * TINY["num_hidden_layers"]
        seen.clear()
        model.eval()(pixels())
    assert seen and set(seen) == {0.0}
    assert counts[1] > 1000 and zero_fraction_ok(counts[0] / counts[1], 0.25, counts[1])


def test_training_computes_the_last_block_for_the_class_token_alone(tmp_path, monkeypatch):
    """In training mode the fast classifier still computes its last block for the class token
    alone, with that block's dropout: the same dropout draws as the plain model, rate by rate
    in order, the last block's over fewer elements, each dropping its rate's share."""
    from zoo.accel import vit as fast_vit

    write(tmp_path, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.2)
    calls = []
    short = fast_vit.class_token_block
    monkeypatch.setattr(fast_vit, "class_token_block", lambda block, x: calls.append(block.training) or short(block, x))
    draws = {}
    for fast in (True, False):
        model = trained(tmp_path, fast=fast)
        torch.manual_seed(3)
        with DropoutDraws() as recorded:
            model(pixels(), labels=torch.tensor([0, 1, 2])).loss.backward()
        draws[fast] = recorded
    assert calls == [True]
    fast, plain = draws[True], draws[False]
    assert fast.rates() == plain.rates() == [0.3] + [0.2, 0.3, 0.3] * TINY["num_hidden_layers"]
    sizes = [(a[1], b[1]) for a, b in zip(fast.draws, plain.draws)]
    assert all(n == m for n, m in sizes[:-3]) and all(n < m for n, m in sizes[-3:])  # the last block: fewer
    assert fast.plausible() and plain.plausible()


def test_eval_mode_is_deterministic_and_unchanged_by_dropout_rates(tmp_path):
    """In eval mode dropout is the identity: the same logits, bit for bit, whatever the
    probabilities and however often it runs; in training mode two runs differ."""
    write(tmp_path)
    plain = zoo.load(tmp_path, device="cpu")
    dropping = zoo.load(tmp_path, device="cpu", hidden_dropout_prob=0.4, attention_probs_dropout_prob=0.3)
    assert dropping.config.dropout_rate == 0.4 and dropping.config.attention_dropout_rate == 0.3
    x = pixels()
    with torch.no_grad():
        want = plain(x).logits
        assert torch.equal(dropping(x).logits, want) and torch.equal(dropping(x).logits, want)
        dropping.train()
        assert not torch.allclose(dropping(x).logits, dropping(x).logits)


# ---------------------------------------------------------------------------------- config and input


def test_config_translation_carries_dropout_and_problem_type():
    arch = hf_vit.to_architecture({**TINY, "problem_type": "regression"})
    assert (arch["dropout_rate"], arch["attention_dropout_rate"], arch["problem_type"]) == (0.0, 0.0, "regression")
    assert hf_vit.to_architecture(hf_vit.from_architecture(arch)) == arch
    assert hf_vit.to_architecture({})["problem_type"] is None  # transformers picks by the labels
    # the label count as transformers counts it: num_labels wins over id2label, then id2label, then 2
    labels = {"0": "cat", "1": "dog"}
    for config, want in (({"num_labels": 3, "id2label": labels}, 3), ({"id2label": labels}, 2), ({}, 2)):
        assert hf_vit.to_architecture(config)["num_classes"] == want == ViTConfig(**config).num_labels
    back = hf_vit.from_architecture({**arch, "dropout_rate": 0.1, "attention_dropout_rate": 0.2})
    assert (back["hidden_dropout_prob"], back["attention_probs_dropout_prob"]) == (0.1, 0.2)


@pytest.mark.parametrize("field, value", [("problem_type", "ranking"), ("hidden_dropout_prob", 1.5),
                                          ("attention_probs_dropout_prob", -0.1)])
def test_bad_training_config_is_one_line_naming_the_field(field, value, tmp_path):
    write(tmp_path)
    with pytest.raises(ConfigError, match=field) as info:
        zoo.load(tmp_path, device="cpu", **{field: value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("labels, match", [
    (torch.tensor([0, 1]), "one row per image"),
    (torch.tensor([0, 5, 1]), "not a class id"),
    (torch.rand(3, 4), r"labels \[B, 5\]"),
])
def test_bad_labels_are_input_errors(labels, match, tmp_path):
    write(tmp_path)
    model = zoo.load(tmp_path, device="cpu")
    with pytest.raises(InputError, match=match):
        model(pixels(), labels=labels)


def test_labels_need_a_classifier(tmp_path):
    write(tmp_path)
    model = zoo.load(tmp_path, device="cpu", task="image-feature-extraction")
    with pytest.raises(InputError, match="labels need a classifier"):
        model(pixels(), labels=torch.tensor([0, 1, 2]))
