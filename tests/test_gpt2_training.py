"""Training GPT-2: the loss and every gradient as transformers' classes compute them on the same
weights and batch (GPT2LMHeadModel, GPT2ForSequenceClassification with each problem type), one
AdamW step on both sides and the updated models' eval outputs (through the fast paths), and
dropout: where transformers has it, with the config's probabilities, off in eval mode."""
from __future__ import annotations

import math

import pytest
import torch

import zoo
from zoo import accel, testing
from zoo.accel import gpt2 as gpt2_accel
from zoo.convert import convert
from zoo.errors import ConfigError, InputError
from zoo.loading import load_full
from zoo.registry import get_catalog

CONV = get_catalog().converter("hf_gpt2")
LM, TC = "text-generation", "text-classification"
NO_DROPOUT = {"embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0}
# a fine-tuned classifier's config: a pad id of its own (eos is 0), three labels
CLASSIFIER = {**CONV.tiny_config, "pad_token_id": 1, "num_labels": 3}


def _folder(tmp_path, task, config, layout="hub"):
    """A random transformers reference saved as a checkpoint folder, and the reference."""
    return testing.write_reference_checkpoint(CONV, tmp_path, layout, config, task)


def _padded(lengths, side="right", seed=0):
    """Token ids (none of them the pad id 1) [len(lengths), max(lengths)], row i ``lengths[i]``
    tokens long, padded with 1 on ``side``; and the attention mask."""
    T = max(lengths)
    ids = torch.randint(2, 96, (len(lengths), T), generator=torch.Generator().manual_seed(seed))
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    if side == "left":
        mask = mask.flip(-1)
    return ids.masked_fill(mask == 0, 1), mask


def _lm_batch(side):
    """Per-token labels, -100 at padding. Right padding comes after every token: no mask needed.
    Left padding needs the mask, and -100 on each row's first token too: padding predicts it,
    and what padding positions compute carries no meaning (zoo's differs from transformers')."""
    ids, mask = _padded([12, 7, 3, 10], side, seed=1)
    if side == "right":
        return {"input_ids": ids, "labels": ids.masked_fill(mask == 0, -100)}
    first = mask.cumsum(-1) == 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill((mask == 0) | first, -100)}


def _labels(kind, rows, seed=2):
    g = torch.Generator().manual_seed(seed)
    if kind == "single":
        return torch.randint(0, 3, (rows,), generator=g)
    if kind == "multi":
        return torch.randint(0, 2, (rows, 3), generator=g).float()
    if kind == "regression-1":
        return torch.randn(rows, generator=g)
    return torch.randn(rows, 3, generator=g)  # regression over three outputs


# (task, config over the tiny one, batch): per-token labels padded with -100; a class id, a
# float per label or a float per row for the classifier
CASES = {
    "lm-right-padding": (LM, {}, lambda: _lm_batch("right")),
    "lm-left-padding-with-mask": (LM, {"pad_token_id": 1}, lambda: _lm_batch("left")),
    "single-label": (TC, CLASSIFIER, lambda: dict(zip(("input_ids", "attention_mask"), _padded([9, 4, 1, 7])),
                                                  labels=_labels("single", 4))),
    "single-label-left-padding": (TC, CLASSIFIER, lambda: dict(
        zip(("input_ids", "attention_mask"), _padded([9, 4, 1, 7], "left")), labels=_labels("single", 4))),
    "multi-label": (TC, CLASSIFIER, lambda: dict(zip(("input_ids", "attention_mask"), _padded([5, 8, 2])),
                                                 labels=_labels("multi", 3))),
    "regression": (TC, {**CLASSIFIER, "num_labels": 1}, lambda: dict(
        zip(("input_ids", "attention_mask"), _padded([5, 8, 2])), labels=_labels("regression-1", 3))),
    "regression-named-in-config": (TC, {**CLASSIFIER, "problem_type": "regression"}, lambda: dict(
        zip(("input_ids", "attention_mask"), _padded([6, 3, 8])), labels=_labels("regression-3", 3))),
    "single-label-named-in-config": (TC, {**CLASSIFIER, "problem_type": "single_label_classification"},
                                     lambda: dict(zip(("input_ids", "attention_mask"), _padded([6, 3, 8])),
                                                  labels=_labels("single", 3))),
}


def _zoo_grads(ref, model):
    """The reference's gradients under zoo's parameter names, through the converter's key map
    (Conv1D weights transposed; the tied head's gradient is wte's, one tensor on both sides)."""
    grads, report = convert({n: p.grad for n, p in ref.named_parameters()}, CONV, model.state_dict())
    assert set(report.consumed.values()) == {n for n, _ in model.named_parameters()}
    return grads


def assert_gradients_match(ref, model):
    want = _zoo_grads(ref, model)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient"
        diff = float((p.grad - want[name]).abs().max())
        assert diff <= 1e-4 * float(want[name].norm()), f"{name}: gradient differs by {diff}"


# every case in the Hub's layout; a language model and a classifier as save_pretrained writes them
LAYOUTS = [(case, "hub") for case in CASES] + [("lm-right-padding", "save_pretrained"),
                                                ("single-label", "save_pretrained")]


@pytest.mark.parametrize("case, layout", LAYOUTS)
def test_loss_gradients_and_an_optimizer_step_match_transformers(case, layout, tmp_path):
    """Dropout off, train mode on both sides (zoo's model loaded with its fast paths, which step
    aside): the loss within 1e-5 relative, each gradient within 1e-4 of its norm; after one
    AdamW step on each side the eval outputs agree within 1e-5 (the fast paths read the new
    weights)."""
    task, config, batch = CASES[case]
    ref = _folder(tmp_path, task, {**CONV.tiny_config, **config, **NO_DROPOUT}, layout)
    loaded = load_full(str(tmp_path), device="cpu")
    model = loaded.model
    assert loaded.task == task and accel.applied(model)  # fast paths in place, at least the packed products
    ref.train().requires_grad_(True)
    model.train().requires_grad_(True)
    inputs = batch()

    theirs, ours = ref(**inputs), model(**inputs)
    assert ours.loss.dim() == 0
    assert math.isclose(ours.loss.item(), theirs.loss.item(), rel_tol=1e-5), (ours.loss.item(), theirs.loss.item())
    theirs.loss.backward()
    ours.loss.backward()
    assert_gradients_match(ref, model)

    hyper = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    torch.optim.AdamW(ref.parameters(), **hyper).step()
    torch.optim.AdamW(model.parameters(), **hyper).step()
    ref.eval()
    model.eval()
    plain_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    with torch.inference_mode():
        before = load_full(str(tmp_path), device="cpu").model(**plain_inputs)
        after_ours, after_theirs = model(**plain_inputs, output_hidden_states=True), ref(**plain_inputs,
                                                                                         output_hidden_states=True)
    testing.assert_outputs_close(after_ours, after_theirs, plain_inputs, atol=1e-5)
    assert not torch.allclose(before.logits, after_ours.logits, atol=1e-3)  # the step changed the model


def test_the_loss_in_eval_mode_and_under_inference_mode_is_the_same(tmp_path):
    """labels= also in eval mode (a validation loss): transformers' value, with the fast paths."""
    ref = _folder(tmp_path, LM, CONV.tiny_config)
    model = zoo.load(str(tmp_path), device="cpu")
    inputs = _lm_batch("right")
    with torch.inference_mode():
        ours, theirs = model(**inputs).loss, ref.eval()(**inputs).loss
    assert math.isclose(float(ours), float(theirs), rel_tol=1e-5)


def test_the_loss_check_has_teeth(tmp_path, monkeypatch):
    """An unshifted next-token loss, or a gradient read through the wrong key, is caught."""
    from zoo import losses

    ref = _folder(tmp_path, LM, {**CONV.tiny_config, **NO_DROPOUT})
    model = zoo.load(str(tmp_path), device="cpu").train().requires_grad_(True)
    ref.train().requires_grad_(True)
    inputs = _lm_batch("right")
    monkeypatch.setattr(losses, "causal_lm", losses.token_cross_entropy)  # no shift
    assert not math.isclose(model(**inputs).loss.item(), ref(**inputs).loss.item(), rel_tol=1e-3)
    monkeypatch.undo()
    model(**inputs).loss.backward()
    ref(**inputs).loss.backward()
    assert_gradients_match(ref, model)
    w = model.h[0].attn.c_attn.weight
    w.grad = w.grad.flip(0)  # q | k | v read in the wrong order
    with pytest.raises(AssertionError, match=r"h\.0\.attn\.c_attn\.weight: gradient differs"):
        assert_gradients_match(ref, model)


# ----------------------------------------------------------------------------- dropout

DROPOUT = {"embd_pdrop": 0.1, "attn_pdrop": 0.3, "resid_pdrop": 0.2}  # three probabilities, told apart


def _within(zeros: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """``zeros`` of ``n`` dropped is what probability ``p`` gives, within ``sigmas`` standard errors."""
    return abs(zeros / n - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def test_dropout_modules_mirror_transformers(tmp_path):
    """The same dropout sites as GPT2Model (by name: drop, h.N.attn.resid_dropout, h.N.mlp.dropout;
    the attention probabilities' p on the attention module), with the config's probabilities."""
    ref = _folder(tmp_path, LM, {**CONV.tiny_config, **DROPOUT})
    model = zoo.load(str(tmp_path), device="cpu")
    theirs = {n.removeprefix("transformer."): m.p for n, m in ref.named_modules() if isinstance(m, torch.nn.Dropout)}
    ours = {n: m.p for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    ours.update({f"{n}.attn_dropout": m.attn_pdrop for n, m in model.named_modules() if hasattr(m, "attn_pdrop")})
    assert ours == theirs
    assert ours["drop"] == 0.1 and ours["h.1.attn.attn_dropout"] == 0.3 and ours["h.1.mlp.dropout"] == 0.2


@pytest.mark.parametrize("task", [LM, TC])
def test_with_dropout_on_the_same_seed_gives_transformers_loss_and_gradients(task, tmp_path):
    """Dropout on (train mode), the same torch seed on both sides: the same loss and gradients,
    since every dropout draws its mask where transformers draws it, in the same order, with
    the same probability (on the CPU, where both call the same kernels)."""
    config = {**(CLASSIFIER if task == TC else CONV.tiny_config), **DROPOUT}
    ref = _folder(tmp_path, task, config).train().requires_grad_(True)
    model = zoo.load(str(tmp_path), device="cpu").train().requires_grad_(True)
    inputs = CASES["single-label" if task == TC else "lm-right-padding"][2]()
    torch.manual_seed(7)
    theirs = ref(**inputs).loss
    torch.manual_seed(7)
    ours = model(**inputs).loss
    assert math.isclose(ours.item(), theirs.item(), rel_tol=1e-5), (ours.item(), theirs.item())
    theirs.backward()
    ours.backward()
    assert_gradients_match(ref, model)
    torch.manual_seed(8)
    assert not math.isclose(model(**inputs).loss.item(), ours.item(), rel_tol=1e-5)  # another seed, other masks


def test_each_dropout_site_drops_its_configured_fraction(tmp_path):
    """Hooked in train mode: the embeddings, each attention output and each MLP output have the
    fraction of their entries zeroed that the config says (within 5 standard errors), the
    others scaled by 1 / (1 - p)."""
    _folder(tmp_path, LM, {**CONV.tiny_config, **DROPOUT})
    model = zoo.load(str(tmp_path), device="cpu").train()
    seen = {}

    def record(name):
        def hook(module, args, out):
            seen[name] = (args[0].detach(), out.detach(), module.p)
        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout):
            module.register_forward_hook(record(name))
    torch.manual_seed(0)
    model(torch.randint(0, 96, (16, 32), generator=torch.Generator().manual_seed(0)))
    assert sorted(seen) == ["drop", "h.0.attn.resid_dropout", "h.0.mlp.dropout", "h.1.attn.resid_dropout",
                            "h.1.mlp.dropout"]
    for name, (x, y, p) in seen.items():
        assert p == (0.1 if name == "drop" else 0.2)
        dropped = (y == 0) & (x != 0)
        assert _within(int(dropped.sum()), int((x != 0).sum()), p), (name, float(dropped.float().mean()))
        torch.testing.assert_close(y[~dropped], x[~dropped] / (1 - p))


def test_attention_probabilities_drop_their_configured_fraction(tmp_path):
    """One token per row attends to itself alone (probability 1): each head's output is then
    that head's value scaled by 1 / (1 - p), or zero where dropout took the probability; zero
    for the config's fraction of heads (within 5 standard errors). In eval mode, never."""
    _folder(tmp_path, LM, {**CONV.tiny_config, **DROPOUT})
    model = zoo.load(str(tmp_path), device="cpu", fast=False).train()
    values, outputs = {}, {}
    for i, block in enumerate(model.h):
        block.attn.c_attn.register_forward_hook(lambda m, a, out, i=i: values.__setitem__(i, out.detach()[..., 64:]))
        block.attn.c_proj.register_forward_pre_hook(lambda m, a, i=i: outputs.__setitem__(i, a[0].detach()))
    ids = torch.randint(0, 96, (1024, 1), generator=torch.Generator().manual_seed(0))
    p, heads = 0.3, 4
    torch.manual_seed(0)
    model(ids)
    dropped = n = 0
    for i in range(2):
        v = values[i].reshape(1024, heads, 8)
        y = outputs[i].reshape(1024, heads, 8)
        zero = (y == 0).all(-1)
        torch.testing.assert_close(y[~zero], v[~zero] / (1 - p))
        dropped, n = dropped + int(zero.sum()), n + zero.numel()
    assert _within(dropped, n, p), dropped / n
    model.eval()
    with torch.inference_mode():
        model(ids)
    assert all(bool((outputs[i].reshape(1024, heads, 8) != 0).any(-1).all()) for i in range(2))


@pytest.mark.parametrize("task", [LM, TC])
def test_in_eval_mode_dropout_changes_nothing(task, tmp_path):
    """Eval mode: outputs are deterministic and bit-identical to a model whose dropout is 0
    (fast and plain); train mode with dropout: they vary with the seed."""
    config = {**(CLASSIFIER if task == TC else CONV.tiny_config), **DROPOUT}
    _folder(tmp_path, task, config)
    inputs = {k: v for k, v in CASES["single-label" if task == TC else "lm-right-padding"][2]().items()
              if k != "labels"}
    for fast in (True, False):
        model = zoo.load(str(tmp_path), device="cpu", fast=fast)
        without = zoo.load(str(tmp_path), device="cpu", fast=fast, **NO_DROPOUT)
        assert model.drop.p == 0.1 and without.drop.p == 0.0
        with torch.inference_mode():
            torch.manual_seed(0)
            a = model(**inputs, output_hidden_states=True)
            torch.manual_seed(1)
            b = model(**inputs, output_hidden_states=True)
            c = without(**inputs, output_hidden_states=True)
        for x in (b, c):
            assert torch.equal(a.logits, x.logits)
            assert all(torch.equal(h, k) for h, k in zip(a.hidden_states, x.hidden_states))
    model.train()
    with torch.no_grad():
        torch.manual_seed(0)
        t0 = model(**inputs).logits
        torch.manual_seed(1)
        t1 = model(**inputs).logits
    assert not torch.allclose(t0, t1) and not torch.allclose(t0, a.logits)


def test_the_decoding_step_stays_for_inference_and_steps_aside_in_training(tmp_path):
    """The dropout modules do not keep the fast decoding step from applying in eval mode (it
    leaves dropout out, a no-op there); in training mode, and under autograd, it steps aside."""
    ref = _folder(tmp_path, LM, {**CONV.tiny_config, **DROPOUT, "eos_token_id": None})
    model = zoo.load(str(tmp_path), device="cpu")
    with torch.no_grad():
        assert gpt2_accel.decode_step(model) is not None
        model.train()
        assert gpt2_accel.decode_step(model) is None
        model.eval()
    assert gpt2_accel.decode_step(model) is None  # autograd on
    ids = torch.randint(0, 96, (2, 4), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ours = model.generate(ids, max_new_tokens=6)
    theirs = ref.eval().generate(ids, do_sample=False, max_new_tokens=6, pad_token_id=0)
    assert torch.equal(ours, theirs)


# ----------------------------------------------------------------------------- config and input


def test_dropout_and_problem_type_are_translated_both_ways():
    config = {**CLASSIFIER, **DROPOUT, "problem_type": "multi_label_classification"}
    arch = testing.check_config_translation(CONV, config)
    assert {k: arch[k] for k in (*DROPOUT, "problem_type")} == {**DROPOUT, "problem_type": "multi_label_classification"}
    back = CONV.source_config(arch)
    assert {k: back[k] for k in (*DROPOUT, "problem_type")} == {k: config[k] for k in (*DROPOUT, "problem_type")}
    # absent: transformers' defaults (0.1 everywhere; the problem type chosen from the labels)
    defaults = CONV.architecture_config(CONV.tiny_config)
    assert [defaults[k] for k in (*DROPOUT, "problem_type")] == [0.1, 0.1, 0.1, None]
    testing.check_config_translation(CONV, CONV.tiny_config)


@pytest.mark.parametrize("field, value, message", [
    ("problem_type", "ranking", r"config field problem_type='ranking' is not one of regression"),
    ("attn_pdrop", 1.5, r"attn_pdrop=1\.5 must be a probability"),
])
def test_bad_training_config_is_refused_by_its_field(field, value, message):
    from zoo.plugins.gpt2 import from_config

    with pytest.raises(ConfigError, match=message):
        from_config(CONV.architecture_config({**CONV.tiny_config, field: value}))


def test_a_checkpoint_with_a_bad_dropout_is_refused_naming_the_file_and_field(tmp_path):
    import json

    _folder(tmp_path, LM, CONV.tiny_config)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "resid_pdrop": 2}))
    with pytest.raises(zoo.ZooError, match=r"config\.json.*resid_pdrop must be a number from 0 to 1, got 2") as err:
        zoo.load(str(tmp_path), device="cpu")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("task, inputs, message", [
    (LM, {"input_ids": torch.tensor([[5, 6, 7]]), "labels": torch.tensor([[5, 6]])},
     r"labels have shape \[1, 2\], not the input ids' \[1, 3\]"),
    (LM, {"input_ids": torch.tensor([[5, 6, 7]]), "labels": torch.tensor([[5, 96, -100]])},
     r"label 96 is not a class id in \[0, 96\)"),
    (LM, {"input_ids": torch.tensor([[5, 6, 7]]), "labels": torch.tensor([[5, 6, 7]]), "last_token_only": True},
     "labels need the logits of every position"),
    (LM, {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.tensor([[1, 1]])},
     r"attention_mask has shape \[1, 2\], the input ids \[1, 3\]"),
    (TC, {"input_ids": torch.tensor([[5, 6], [7, 8]]), "labels": torch.tensor([0, 1, 2])},
     r"labels have shape \[3\], not a class id per input row \(\[2\]\)"),
    (TC, {"input_ids": torch.tensor([[5, 6], [7, 8]]), "labels": torch.tensor([0, 3])},
     r"label 3 is not a class id in \[0, 3\)"),
    (TC, {"input_ids": torch.tensor([[5, 6], [7, 8]]), "labels": torch.ones(2, 2)},
     r"labels have shape \[2, 2\], not a value per label of each input row \(\[2, 3\]\)"),
])
def test_bad_labels_are_an_input_error(task, inputs, message, tmp_path):
    _folder(tmp_path, task, CLASSIFIER if task == TC else CONV.tiny_config)
    model = zoo.load(str(tmp_path), device="cpu").train()
    with pytest.raises(InputError, match=message) as err:
        model(**inputs)
    assert "\n" not in str(err.value)


def test_float_labels_for_a_single_label_classifier_are_an_input_error(tmp_path):
    _folder(tmp_path, TC, {**CLASSIFIER, "problem_type": "single_label_classification"})
    model = zoo.load(str(tmp_path), device="cpu")
    with pytest.raises(InputError, match="labels must be class ids"):
        model(torch.tensor([[5, 6]]), labels=torch.tensor([1.0]))


def test_an_attention_mask_with_a_cache_is_refused(tmp_path):
    _folder(tmp_path, LM, CONV.tiny_config)
    model = zoo.load(str(tmp_path), device="cpu")
    with pytest.raises(InputError, match="attention_mask is read without a cache only"):
        model(torch.tensor([[5, 6]]), attention_mask=torch.tensor([[1, 1]]), cache=model.new_cache(1, 8))
