"""Training BERT: the loss and every gradient against transformers, and dropout.

For every head (BertForMaskedLM; BertForSequenceClassification single-label, multi-label and
regression, with and without ``problem_type``; BertForTokenClassification;
BertForQuestionAnswering; BertForMultipleChoice), transformers' class with perturbed random
weights and dropout off is written in the Hub layout of its files and loaded through zoo's real
path with the speed layer on (``fast=True``, the default). Both switched to training
(``model.train().requires_grad_(True)``), the same padded batch with targets gives the same
loss (1e-5 relative) and the same gradient for every parameter (1e-4 of its norm), each
parameter found through the converter's accounting (``Report.consumed``; the MLM decoder is
the word embedding matrix on both sides, so its gradient is the sum of both uses). After one
AdamW step on each side, the eval outputs agree (1e-5): the fast paths read the new weights.

Dropout: zoo's model has transformers' dropout sites with the config's rates; in training each
zeroes its share of values (within a few standard errors) and scales the rest; in eval mode
outputs are deterministic and bit-identical to those of the same weights without dropout.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import transformers

from zoo import accel, losses, testing
from zoo.checkpoint import save_safetensors
from zoo.converters import hf_bert
from zoo.errors import InputError
from zoo.loading import load_full
from zoo.plugins import bert
from zoo.types import Transform

from conftest import DropoutDraws

LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4  # max |difference| over the gradient's norm
# gradients that are zero in exact arithmetic (the key biases: softmax ignores a shift; the
# choice classifier's bias, shared by every choice) hold rounding noise: they are compared
# with this share of the norm of the whole gradient instead
GRAD_FLOOR = 1e-7
ATOL = 1e-5
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

from test_bert import BASE, perturb  # noqa: E402  (the tiny BERT config every BERT test starts from)

# head -> (transformers class, zoo task, what its config.json adds)
HEADS = {
    "mlm": ("BertForMaskedLM", "fill-mask", {}),
    "single-label": ("BertForSequenceClassification", "text-classification",
                     dict(id2label={"0": "negative", "1": "neutral", "2": "positive"})),
    "single-label-named": ("BertForSequenceClassification", "text-classification",
                           dict(num_labels=3, problem_type="single_label_classification")),
    "multi-label": ("BertForSequenceClassification", "text-classification",
                    dict(num_labels=4, problem_type="multi_label_classification")),
    "multi-label-by-dtype": ("BertForSequenceClassification", "text-classification", dict(num_labels=4)),
    "regression": ("BertForSequenceClassification", "text-classification", dict(num_labels=1)),
    "regression-3": ("BertForSequenceClassification", "text-classification",
                     dict(num_labels=3, problem_type="regression")),
    "token": ("BertForTokenClassification", "token-classification", dict(num_labels=5)),
    "qa": ("BertForQuestionAnswering", "question-answering", {}),
    "choice": ("BertForMultipleChoice", "multiple-choice", {}),
}

# one row each (1 = token, 0 = padding): none, right padding, left padding; multiple-choice:
# two questions of bert.CHOICES choices, one choice of padding only
MASKS = ["1111111111", "1111110000", "0001111111"]
CHOICE_MASKS = ["1111111111", "1111100000", "0011111111", "1111111000", "1111111111", "0000000000"]


def reference(head, seed=0, **config):
    """transformers' class of ``head`` with random weights, every parameter perturbed (biases
    start at 0 and LayerNorms at 1 otherwise), in training mode; dropout off unless ``config``
    sets it."""
    cls_name, _, extra = HEADS[head]
    torch.manual_seed(seed)
    ref = getattr(transformers, cls_name)(transformers.BertConfig(**{**BASE, **NO_DROPOUT, **extra, **config}))
    ref.config.architectures = [cls_name]
    return perturb(ref, seed).train()


def write(ref, folder):
    """``ref`` in the Hub layout of fine-tuned files (``bert.`` prefix, ``gamma``/``beta``, the
    head at the top level; the pretraining heads for the MLM model)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = hf_bert.hub_layout(ref.state_dict(), ref.config.to_dict())
    save_safetensors({k: v.detach().clone() for k, v in tensors.items()}, folder / "model.safetensors")
    ref.config.to_json_file(str(folder / "config.json"))
    return folder


def batch(head, seed=1):
    """A padded batch and its targets, as a fine-tuning loop gives them: per-token labels
    -100 at padding (and, for the MLM, at the tokens not to predict); a start position
    outside the sequence (which counts for nothing)."""
    task = HEADS[head][1]
    rows = CHOICE_MASKS if task == "multiple-choice" else MASKS
    mask = torch.tensor([[int(c) for c in row] for row in rows])
    gen = torch.Generator().manual_seed(seed)
    inputs = dict(input_ids=torch.randint(1, BASE["vocab_size"], mask.shape, generator=gen),
                  attention_mask=mask, token_type_ids=torch.randint(0, 2, mask.shape, generator=gen))
    B, T = mask.shape
    labels = hf_bert.to_architecture({**BASE, **HEADS[head][2]})["num_labels"]
    if task == "fill-mask":
        y = torch.randint(0, BASE["vocab_size"], (B, T), generator=gen)
        predicted = (torch.rand(B, T, generator=gen) < 0.5) & mask.bool()
        predicted[0, 1] = True
        targets = dict(labels=y.masked_fill(~predicted, losses.IGNORE))
    elif task == "token-classification":
        targets = dict(labels=torch.randint(0, labels, (B, T), generator=gen).masked_fill(mask == 0, losses.IGNORE))
    elif task == "question-answering":
        start = torch.randint(0, 6, (B,), generator=gen)
        start[-1] = T + 2  # outside the sequence: ignored
        targets = dict(start_positions=start, end_positions=(start + 2).clamp(max=T - 1))
    elif task == "multiple-choice":
        inputs = {k: v.view(-1, bert.CHOICES, T) for k, v in inputs.items()}
        targets = dict(labels=torch.randint(0, bert.CHOICES, (B // bert.CHOICES,), generator=gen))
    elif head.startswith("single-label"):
        targets = dict(labels=torch.randint(0, labels, (B,), generator=gen))
    elif head.startswith("multi-label"):
        targets = dict(labels=torch.randint(0, 2, (B, labels), generator=gen).float())
    else:  # regression
        targets = dict(labels=torch.randn(B, generator=gen) if labels == 1 else torch.randn(B, labels, generator=gen))
    return inputs, targets


def per_sequence(inputs):
    """Multiple-choice inputs as the [B * C, T] sequences that per-position outputs follow."""
    return {k: v.flatten(0, 1) if v.dim() == 3 else v for k, v in inputs.items()}


def hf_names(report):
    """zoo parameter name -> transformers' parameter name, from the loader's accounting."""
    return {target: report.renamed.get(source, source) for source, target in report.consumed.items()}


def gradient_problems(model, ref, report):
    """Each parameter whose gradient differs from transformers' by more than GRAD_RTOL of its
    norm, named on both sides."""
    names, theirs = hf_names(report), dict(ref.named_parameters())
    ours = dict(model.named_parameters())
    assert set(ours) == set(names) and set(names.values()) == set(theirs), "parameters not one to one"
    total = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in theirs.values() if p.grad is not None))
    problems = []
    for name, p in ours.items():
        want = theirs[names[name]].grad
        assert p.grad is not None and want is not None, name
        diff = float((p.grad - want).abs().max())
        if diff > max(GRAD_RTOL * float(want.norm()), GRAD_FLOOR * total):
            problems.append(f"{name} ({names[name]}): max diff {diff:.3g}, gradient norm {float(want.norm()):.3g}")
    return problems


def silence_rounding_noise(model, ref, report):
    """Zero, on both sides, the gradients that are zero in exact arithmetic (see GRAD_FLOOR):
    Adam divides a gradient by its own size, which would turn their rounding noise, different
    on each side, into steps of the full learning rate."""
    names, theirs = hf_names(report), dict(ref.named_parameters())
    total = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in theirs.values()))
    for name, p in model.named_parameters():
        want = theirs[names[name]]
        if float(want.grad.norm()) <= GRAD_FLOOR * total:
            p.grad.zero_()
            want.grad.zero_()


def same_loss(ours, theirs):
    a, b = float(ours.detach()), float(theirs.detach())
    return abs(a - b) <= LOSS_RTOL * abs(b)


def train_both(folder, ref, head, **load):
    """zoo's model of ``folder`` and ``ref``, both training, after forward and backward on
    the batch of ``head``: (loaded, zoo's output, transformers' output)."""
    loaded = load_full(folder, device="cpu", **load)
    model = loaded.model.train().requires_grad_(True)
    inputs, targets = batch(head)
    ours = model(**inputs, **targets)
    theirs = ref(**inputs, **targets)
    ours.loss.backward()
    theirs.loss.backward()
    return loaded, ours, theirs


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    return {head: write(reference(head), root / head) for head in HEADS}


# ----------------------------------------------------------------------------- loss and gradients


@pytest.mark.parametrize("head", sorted(HEADS))
def test_loss_gradients_and_a_step_match_transformers(checkpoints, head):
    """Loss, every gradient, then one AdamW step and an eval forward, on a model loaded with
    the speed layer on: training computes the real tokens only (all but the answer-span loss,
    which reads padding), and the fast paths read the new weights after the step."""
    folder = checkpoints[head]
    ref = reference(head)  # the same weights, fresh
    loaded, ours, theirs = train_both(folder, ref, head)
    model, task = loaded.model, HEADS[head][1]
    assert loaded.task == task
    assert {"bert-unpadding", "fused-qkv", "packed-linear"} <= set(accel.applied(model))
    assert ours.loss.shape == () and torch.isfinite(ours.loss)
    assert same_loss(ours.loss, theirs.loss), (ours.loss, theirs.loss)
    padding = per_sequence(batch(head)[0])["attention_mask"] == 0
    unpadded = bool((ours.last_hidden_state[padding] == 0).all())
    assert unpadded == (task != "question-answering")
    problems = gradient_problems(model, ref, loaded.report)
    assert not problems, "\n".join(problems)

    silence_rounding_noise(model, ref, loaded.report)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for params in (model.parameters(), ref.parameters()):
        opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
        opt.step()
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    model.eval()
    ref.eval()
    inputs, targets = batch(head, seed=2)
    with torch.no_grad():
        ours = model(**inputs, output_hidden_states=True)
        theirs = ref(**inputs, output_hidden_states=True)
        # a loss in eval mode too; the answer-span loss reads every position, padding included
        eval_loss, want_loss = model(**inputs, **targets).loss, ref(**inputs, **targets).loss
    compared = testing.assert_outputs_close(ours, theirs, per_sequence(inputs), atol=ATOL, rtol=0)
    assert {"question-answering": "start_logits"}.get(task, "logits") in compared
    assert same_loss(eval_loss, want_loss), (eval_loss, want_loss)
    padding = per_sequence(inputs)["attention_mask"] == 0
    assert bool((ours.last_hidden_state[padding] == 0).all())  # the unpadding ran: zeros at padding


def test_the_tied_decoder_gradient_is_the_sum_of_both_uses(checkpoints):
    """The MLM decoder reads the word embedding matrix: rows of tokens absent from the batch
    get gradient through the decoder alone; the sum matches transformers' tied tensor."""
    ref = reference("mlm")
    loaded, _, _ = train_both(checkpoints["mlm"], ref, "mlm")
    model = loaded.model
    grad = model.embeddings.word_embeddings.weight.grad
    seen = batch("mlm")[0]["input_ids"].unique()
    absent = torch.ones(BASE["vocab_size"], dtype=torch.bool)
    absent[seen] = False
    assert bool((grad[absent].abs().sum(-1) > 0).all())  # the decoder's share
    want = ref.bert.embeddings.word_embeddings.weight.grad
    assert ref.cls.predictions.decoder.weight is ref.bert.embeddings.word_embeddings.weight
    assert float((grad - want).abs().max()) <= GRAD_RTOL * float(want.norm())


def test_training_draws_the_plain_models_dropout_over_the_real_tokens(tmp_path):
    """With dropout on, the fast model trains on the real tokens of a padded batch: it draws a
    dropout mask at every site the plain model does, in the same order with the same rates,
    over fewer elements (no padding), each dropping its rate's share; the same seed gives the
    same loss, and padding positions hold zeros."""
    folder = write(reference("token", **RATES, classifier_dropout=0.4), tmp_path / "m")
    inputs, targets = batch("token")
    draws, losses_by_seed = {}, {}
    for fast in (True, False):
        model = load_full(folder, device="cpu", fast=fast).model.train().requires_grad_(True)
        assert bool(accel.applied(model)) == fast
        torch.manual_seed(7)
        with DropoutDraws() as recorded:
            out = model(**inputs, **targets)
            out.loss.backward()
        draws[fast] = recorded
        torch.manual_seed(7)
        losses_by_seed[fast] = (out.loss.detach(), model(**inputs, **targets).loss.detach())
        if fast:
            assert bool((out.last_hidden_state[inputs["attention_mask"] == 0] == 0).all())
    fast, plain = draws[True], draws[False]
    assert fast.rates() == plain.rates() and set(fast.rates()) == {0.25, 0.15, 0.4}
    sizes = [(a[1], b[1]) for a, b in zip(fast.draws, plain.draws)]
    assert all(n_fast <= n_plain for n_fast, n_plain in sizes) and any(n < m for n, m in sizes)
    assert fast.plausible() and plain.plausible()
    for first, again in losses_by_seed.values():
        assert torch.equal(first, again)


def test_a_loss_in_eval_mode_reads_padding_as_transformers_does(checkpoints):
    """The unpadding leaves zeros at padding, but the answer-span loss is a softmax over every
    position: asked for a loss, the fast model computes every position (as in training)."""
    ref = reference("qa").eval()
    model = load_full(checkpoints["qa"], device="cpu").model
    inputs, targets = batch("qa")
    with torch.no_grad():
        plain = model(**inputs)
        ours, theirs = model(**inputs, **targets), ref(**inputs, **targets)
    padding = inputs["attention_mask"] == 0
    assert bool((plain.start_logits[padding] == 0).all())  # without a loss: unpadded
    torch.testing.assert_close(ours.start_logits, theirs.start_logits, atol=ATOL, rtol=0)  # padding too
    assert same_loss(ours.loss, theirs.loss), (ours.loss, theirs.loss)


def _flip(dim):
    return Transform(f"flip({dim})", lambda w: w.flip(dim), lambda w: w.flip(dim), "a plausible bug: rows or columns reversed")


@pytest.mark.parametrize("head,key,dim", [("single-label", "classifier.weight", 0), ("qa", "qa_outputs.weight", 0),
                                          ("token", "classifier.weight", 1), ("mlm", "cls.predictions.bias", 0)])
def test_a_broken_head_mapping_fails_the_training_comparison(checkpoints, head, key, dim):
    """A head weight read reversed (labels, or start and end, swapped): the loss or the
    gradients differ from transformers'."""
    broken = dataclasses.replace(hf_bert.CONVERTER, key_map=tuple(
        dataclasses.replace(m, transform=_flip(dim)) if m.source == key else m for m in hf_bert.KEY_MAP))
    ref = reference(head)
    loaded, ours, theirs = train_both(checkpoints[head], ref, head, converter=broken)
    assert not same_loss(ours.loss, theirs.loss) and gradient_problems(loaded.model, ref, loaded.report)


# ----------------------------------------------------------------------------- targets


def test_the_problem_type_becomes_the_classifier_loss():
    to = hf_bert.to_architecture
    assert to(BASE)["classifier_loss"] is None  # by the labels, as transformers
    for kind in bert.CLASSIFIER_LOSSES:
        arch = to({**BASE, "problem_type": kind})
        assert arch["classifier_loss"] == kind
        assert hf_bert.from_architecture(arch)["problem_type"] == kind
        assert to(hf_bert.from_architecture(arch)) == arch
    testing.check_config_translation("hf_bert", {**BASE, "problem_type": "regression", "num_labels": 3})


@pytest.mark.parametrize("head,targets,message", [
    ("mlm", dict(labels=torch.zeros(3, 9, dtype=torch.long)), r"labels has shape \[3, 9\], expected \[3, 10\]"),
    ("mlm", dict(labels=torch.full((3, 10), 99)), r"labels must be in \[0, 99\) or -100, got 99..99"),
    ("token", dict(labels=torch.zeros(3, 10)), r"labels must hold integers"),
    ("single-label", dict(labels=torch.tensor([0, 1, 3])), r"labels must be in \[0, 3\), got 0..3"),
    ("single-label-named", dict(labels=torch.zeros(3)), r"labels must hold integers"),
    ("multi-label", dict(labels=torch.zeros(3)), r"labels has shape \[3\], expected \[3, 4\]"),
    ("regression", dict(labels=[0.5, 1.0, 2.0]), r"the loss takes labels, a tensor; got list"),
    ("single-label", dict(labels=[0, 1, 2]), r"the loss takes labels, a tensor; got list"),
    ("choice", dict(labels=torch.tensor([0, 3])), r"labels must be in \[0, 3\), got 0..3"),
    ("qa", dict(start_positions=torch.tensor([1, 2, 3])), r"takes start_positions and end_positions"),
    ("qa", dict(labels=torch.tensor([1, 2, 3])), r"takes start_positions and end_positions"),
    ("qa", dict(start_positions=torch.zeros(3), end_positions=torch.zeros(3)), r"start_positions must hold integers"),
    ("token", dict(start_positions=torch.zeros(3, dtype=torch.long)), r"are the question-answering model's targets"),
])
def test_bad_targets_are_refused_in_one_line(checkpoints, head, targets, message):
    model = load_full(checkpoints[head], device="cpu").model
    inputs, _ = batch(head)
    with pytest.raises(InputError, match=message) as err:
        model(**inputs, **targets)
    assert "\n" not in str(err.value)


def test_the_feature_extractor_has_no_loss(checkpoints):
    model = load_full(checkpoints["mlm"], device="cpu", task="feature-extraction").model
    inputs, targets = batch("mlm")
    with pytest.raises(InputError, match=r"feature-extraction\): the model has no head, so no loss"):
        model(**inputs, **targets)


# ----------------------------------------------------------------------------- dropout

RATES = dict(hidden_dropout_prob=0.25, attention_probs_dropout_prob=0.15)


def dropout_sites(model):
    """Module path -> dropout rate of every dropout site: ``nn.Dropout`` modules, and zoo's
    attention-probability dropout (``SelfAttention.dropout_p``) under the name of
    transformers' module (``attention.self.dropout``); the encoder's prefix ``bert.`` left out."""
    sites = {}
    for name, m in model.named_modules():
        name = name.removeprefix("bert.")
        if isinstance(m, torch.nn.Dropout):
            sites[name] = m.p
        elif isinstance(m, bert.SelfAttention):
            sites[f"{name}.dropout"] = m.dropout_p
    return sites


@pytest.mark.parametrize("classifier_dropout", [None, 0.35])
@pytest.mark.parametrize("head", ["mlm", "single-label", "token", "qa", "choice"])
def test_dropout_sites_and_rates_are_transformers(tmp_path, head, classifier_dropout):
    """The same dropout sites as transformers' class of the task, each with its rate from
    config.json (the classifier's: classifier_dropout, else hidden_dropout_prob)."""
    ref = reference(head, **RATES, classifier_dropout=classifier_dropout)
    model = load_full(write(ref, tmp_path / "m"), device="cpu").model
    theirs = dropout_sites(ref)
    assert dropout_sites(model) == theirs
    assert theirs["embeddings.dropout"] == RATES["hidden_dropout_prob"]
    assert theirs["encoder.layer.1.attention.self.dropout"] == RATES["attention_probs_dropout_prob"]
    if "dropout" in theirs:  # the classifier's
        assert theirs["dropout"] == (classifier_dropout or RATES["hidden_dropout_prob"])


def within(zeros, n, p, sigmas=5.0):
    """Whether ``zeros`` of ``n`` values is a plausible count for a dropout of rate ``p``."""
    return abs(zeros / n - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def test_each_dropout_zeroes_its_rate_and_scales_the_rest(tmp_path):
    """Training: at every nn.Dropout site (embeddings, both sublayer outputs of each layer,
    the classifier) the share of values zeroed is the configured rate, statistically, and the
    rest are scaled by 1 / (1 - p). Eval: every site passes its input as it is."""
    ref = reference("single-label", **RATES, classifier_dropout=0.4)
    model = load_full(write(ref, tmp_path / "m"), device="cpu").model.train()
    counts = {}

    def record(name, p):
        def hook(module, args, output):
            x = args[0]
            kept = output != 0
            real = x != 0
            scale = 1 / (1 - p) if module.training else 1.0
            torch.testing.assert_close(output[kept], x[kept] * scale, rtol=1e-6, atol=0)
            zeros, n = counts.get(name, (0, 0))
            counts[name] = (zeros + int((real & ~kept).sum()), n + int(real.sum()))
        return hook

    rates = {n: m.p for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert len(rates) == 1 + 2 * BASE["num_hidden_layers"] + 1
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Dropout):
            m.register_forward_hook(record(name, m.p))
    inputs = {k: v.repeat(8, 1) for k, v in batch("single-label")[0].items()}  # 24 rows
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(5):
            model(**inputs)
    for name, (zeros, n) in counts.items():
        assert within(zeros, n, rates[name]), (name, zeros / n, rates[name], n)

    model.eval()
    counts.clear()
    with torch.no_grad():
        first, second = model(**inputs), model(**inputs)
    assert all(zeros == 0 for zeros, _ in counts.values())
    assert torch.equal(first.logits, second.logits)


def test_attention_dropout_drops_attention_probabilities_at_its_rate(tmp_path):
    """With uniform attention (q = k = 0) over values all 1, each output is (kept
    probabilities) / (T (1 - p)): whole counts, so the dropout acts on the probabilities,
    and their share dropped is attention_probs_dropout_prob, statistically."""
    ref = reference("token", **RATES)
    model = load_full(write(ref, tmp_path / "m"), device="cpu").model.train()
    attention = model.encoder.layer[0].attention.self
    p = attention.dropout_p
    assert p == RATES["attention_probs_dropout_prob"]
    with torch.no_grad():
        for part in (attention.query, attention.key, attention.value):
            part.weight.zero_()
            part.bias.zero_()
        attention.value.bias.fill_(1.0)
        B, T, H = 8, 16, BASE["hidden_size"]
        torch.manual_seed(0)
        y = attention(torch.randn(B, T, H), None)  # (B, T, H): heads side by side
        heads = y.view(B, T, attention.n_head, -1)
        assert bool((heads == heads[..., :1]).all())  # one count per head and query
        kept = heads[..., 0] * T * (1 - p)
        torch.testing.assert_close(kept, kept.round(), atol=1e-4, rtol=0)
        n = B * T * attention.n_head * T
        assert within(n - int(kept.round().sum()), n, p)
        attention.eval()
        assert torch.allclose(attention(torch.randn(B, T, H), None), torch.ones(B, T, H), atol=1e-6, rtol=0)


def test_eval_outputs_are_those_of_the_model_without_dropout(tmp_path):
    """Dropout rates change nothing in eval mode: the same weights with and without dropout in
    the config give bit-identical outputs, on the fast model and on the plain one."""
    ref = reference("token", **RATES, classifier_dropout=0.4)
    folder = write(ref, tmp_path / "m")
    inputs, _ = batch("token")
    for fast in (True, False):
        with_dropout = load_full(folder, device="cpu", fast=fast).model
        without = load_full(folder, device="cpu", fast=fast, config_overrides=dict(
            NO_DROPOUT, classifier_dropout=0.0)).model
        assert dropout_sites(without)["dropout"] == 0.0
        with torch.no_grad():
            a, b = with_dropout(**inputs), without(**inputs)
        assert torch.equal(a.logits, b.logits) and torch.equal(a.last_hidden_state, b.last_hidden_state)


def test_dropout_in_training_varies_with_the_seed(tmp_path):
    """Training with dropout on: different seeds give different outputs, the same seed the same."""
    model = load_full(write(reference("token", **RATES), tmp_path / "m"), device="cpu").model.train()
    inputs, _ = batch("token")
    outs = []
    for seed in (0, 1, 0):
        torch.manual_seed(seed)
        with torch.no_grad():
            outs.append(model(**inputs).logits)
    assert not torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
