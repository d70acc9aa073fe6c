"""BERT's task heads, on the fine-tuned checkpoints users bring: BertForSequenceClassification
(single-label, multi-label, regression), BertForTokenClassification, BertForQuestionAnswering,
BertForMultipleChoice.

Each head is compared with transformers' class of its task on the same random weights (every
parameter perturbed, so that a swapped weight or bias cannot pass), float32, 1e-5 absolute, on
padded batches: per-token outputs at real positions (zoo's unpadding leaves zeros at padding),
the others whole. Checkpoints are written in the Hub layout of fine-tuned files (``bert.``
prefix, LayerNorm ``gamma``/``beta``, the head at the top level) and as ``save_pretrained``
writes them, and loaded through zoo's real path (``zoo.loading.load_full``).
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import transformers

from zoo import accel, testing
from zoo.checkpoint import read_safetensors, save_safetensors
from zoo.converters import hf_bert
from zoo.errors import ConfigError, ConversionError, InputError
from zoo.export import convert_checkpoint
from zoo.loading import build_model, load_full
from zoo.plugins.bert import CHOICES, example_inputs, parameter_count
from zoo.registry import get_catalog
from zoo.types import Transform
from zoo.verification import verify

ATOL = 1e-5

from test_bert import BASE, perturb  # noqa: E402  (the tiny BERT config every BERT test starts from)

# head -> (transformers class, zoo task, what its config.json adds)
HEADS = {
    "single-label": ("BertForSequenceClassification", "text-classification",
                     dict(id2label={"0": "negative", "1": "neutral", "2": "positive"})),
    "multi-label": ("BertForSequenceClassification", "text-classification",
                    dict(num_labels=4, problem_type="multi_label_classification")),
    "regression": ("BertForSequenceClassification", "text-classification",
                   dict(num_labels=1, problem_type="regression")),
    "token": ("BertForTokenClassification", "token-classification",
              dict(id2label={str(i): tag for i, tag in enumerate(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])})),
    "qa": ("BertForQuestionAnswering", "question-answering", {}),
    "choice": ("BertForMultipleChoice", "multiple-choice", {}),
}
LAYOUTS = ("hub", "save_pretrained")
AUTO = {
    "text-classification": transformers.AutoModelForSequenceClassification,
    "token-classification": transformers.AutoModelForTokenClassification,
    "question-answering": transformers.AutoModelForQuestionAnswering,
    "multiple-choice": transformers.AutoModelForMultipleChoice,
}

# masks as strings, one row each (1 = token, 0 = padding); multiple-choice: rows of CHOICES
PADDINGS = {
    "right": ["111111111", "111110000", "100000000"],
    "left": ["111111111", "000011111", "000000001"],
    "a row of padding only": ["111111111", "000000000", "111000000"],
    "holes": ["101101011", "011111111", "111111110"],
}
CHOICE_PADDINGS = {
    "right and left": ["111111111", "111110000", "100000000", "000011111", "111111111", "001111100"],
    "a choice of padding only": ["111111111", "000000000", "111000000", "110000000", "111111110", "111111111"],
}


def reference(head, seed=0):
    """The transformers model of ``head``, perturbed random weights; its config names the class
    (``architectures``), as the config.json of a fine-tuned checkpoint does."""
    cls_name, _, extra = HEADS[head]
    torch.manual_seed(seed)
    ref = getattr(transformers, cls_name)(transformers.BertConfig(**BASE, **extra))
    ref.config.architectures = [cls_name]
    return perturb(ref, seed)


def write(ref, folder, layout="hub", extra=None):
    """``ref`` as a checkpoint folder: the Hub layout of fine-tuned files (``hf_bert.hub_layout``)
    or transformers' ``save_pretrained``; ``extra`` tensors added to the Hub layout."""
    if layout == "save_pretrained":
        ref.save_pretrained(folder)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tensors = hf_bert.hub_layout(ref.state_dict(), ref.config.to_dict())
    tensors = {k: v.detach().clone() for k, v in {**tensors, **(extra or {})}.items()}
    save_safetensors(tensors, folder / "model.safetensors")
    ref.config.to_json_file(str(folder / "config.json"))
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(folder, reference) of every head in every layout, written once."""
    root = tmp_path_factory.mktemp("heads")
    out = {}
    for head in HEADS:
        ref = reference(head)
        for layout in LAYOUTS:
            out[head, layout] = write(ref, root / f"{head}-{layout}", layout), ref
    return out


def padded(rows, task, seed=3):
    """ids, mask and token types for the mask ``rows``: random ids and types under the padding
    too (they must not leak into real tokens); multiple-choice: [len(rows) / CHOICES, CHOICES, T]."""
    mask = torch.tensor([[int(c) for c in row] for row in rows])
    gen = torch.Generator().manual_seed(seed)
    inputs = dict(input_ids=torch.randint(1, BASE["vocab_size"], mask.shape, generator=gen),
                  attention_mask=mask, token_type_ids=torch.randint(0, 2, mask.shape, generator=gen))
    if task == "multiple-choice":
        inputs = {k: v.view(-1, CHOICES, v.shape[-1]) for k, v in inputs.items()}
    return inputs


def per_sequence(inputs):
    """The inputs as the [B * C, T] sequences a multiple-choice model runs (the layout of its
    hidden states), for masking per-position outputs."""
    return {k: v.flatten(0, 1) if v.dim() == 3 else v for k, v in inputs.items()}


def paddings(task):
    return CHOICE_PADDINGS if task == "multiple-choice" else PADDINGS


def assert_head_parity(model, ref, inputs, task):
    """zoo and transformers agree on every output both give (hidden states included) at real
    positions; returns zoo's output and the names compared."""
    with torch.no_grad():
        ours = model(**inputs, output_hidden_states=True)
        theirs = ref(**inputs, output_hidden_states=True)
    compared = testing.assert_outputs_close(ours, theirs, per_sequence(inputs), atol=ATOL, rtol=0)
    head = {"question-answering": {"start_logits", "end_logits"}}.get(task, {"logits"})
    assert head <= set(compared), compared
    assert len(ours.hidden_states) == BASE["num_hidden_layers"] + 1
    return ours, compared


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("head", sorted(HEADS))
def test_each_head_matches_transformers_on_padded_batches(checkpoints, head, layout):
    """The task comes from config.json's ``architectures``; every key is loaded, none dropped;
    the fast model (unpadding, fused q|k|v) and the plain one both match transformers."""
    folder, ref = checkpoints[head, layout]
    cls_name, task, _ = HEADS[head]
    fast = load_full(folder, device="cpu")
    plain = load_full(folder, device="cpu", fast=False)
    assert fast.task == task and fast.converter.name == "hf_bert"
    source = set(read_safetensors(folder / "model.safetensors"))
    assert set(fast.report.consumed) == source and not fast.report.dropped
    assert "bert-unpadding" in accel.applied(fast.model)
    for name, rows in paddings(task).items():
        inputs = padded(rows, task)
        ours, _ = assert_head_parity(fast.model, ref, inputs, task)
        assert_head_parity(plain.model, ref, inputs, task)
        B, T = inputs["input_ids"].shape[0], inputs["input_ids"].shape[-1]
        labels = fast.arch_config["num_labels"]
        if task == "question-answering":
            assert ours.start_logits.shape == ours.end_logits.shape == (B, T) and ours.logits is None
            per_token = [ours.start_logits, ours.end_logits]
        else:
            want = {"text-classification": (B, labels), "token-classification": (B, T, labels),
                    "multiple-choice": (B, CHOICES)}[task]
            assert tuple(ours.logits.shape) == want, name
            per_token = [ours.logits] if task == "token-classification" else []
        padding = inputs["attention_mask"] == 0
        for t in per_token:  # the fast model skips padding: zeros there
            assert bool((t[padding] == 0).all()), name


def test_the_labels_come_from_the_config(checkpoints):
    """num_labels as transformers counts them: id2label's entries, or num_labels."""
    counts = {head: load_full(checkpoints[head, "hub"][0], device="cpu").arch_config["num_labels"]
              for head in ("single-label", "multi-label", "regression", "token")}
    assert counts == {"single-label": 3, "multi-label": 4, "regression": 1, "token": 5}


def test_an_older_token_classifier_with_a_pooler_drops_it_by_its_rule(tmp_path):
    """Files saved by older transformers hold a pooler in token-classification checkpoints."""
    ref = reference("token")
    gen = torch.Generator().manual_seed(1)
    pooler = {"bert.pooler.dense.weight": torch.randn(32, 32, generator=gen),
              "bert.pooler.dense.bias": torch.randn(32, generator=gen)}
    loaded = load_full(write(ref, tmp_path / "ckpt", extra=pooler), device="cpu")
    assert loaded.report.dropped == dict.fromkeys(pooler, hf_bert._POOLER_UNUSED)
    assert_head_parity(loaded.model, ref, padded(PADDINGS["left"], loaded.task), loaded.task)


# ----------------------------------------------------------------------------- layouts and tasks


@pytest.mark.parametrize("head", ["single-label", "token", "qa", "choice"])
def test_hub_layout_is_that_of_fine_tuned_files(head):
    """The encoder under ``bert.``, LayerNorm gamma/beta, the head at the top level, no
    pretraining head (``cls.*``); a pooler only where the class has one."""
    cls_name, task, _ = HEADS[head]
    ref = reference(head)
    keys = hf_bert.hub_layout(ref.state_dict(), ref.config.to_dict())
    heads = {k for k in keys if not k.startswith("bert.")}
    want = {"qa": {"qa_outputs.weight", "qa_outputs.bias"}}.get(head, {"classifier.weight", "classifier.bias"})
    assert heads == want
    assert "bert.embeddings.LayerNorm.gamma" in keys and "bert.encoder.layer.1.output.LayerNorm.beta" in keys
    assert not any(k.endswith(("LayerNorm.weight", "LayerNorm.bias")) for k in keys)
    assert ("bert.pooler.dense.weight" in keys) == (task in ("text-classification", "multiple-choice"))
    rows = {"single-label": 3, "token": 5, "qa": 2, "choice": 1}[head]
    assert tuple(keys[sorted(want)[-1]].shape) == (rows, 32)


def test_feature_extraction_on_a_classifier_folder_drops_the_head_by_its_rule(checkpoints):
    folder, ref = checkpoints["single-label", "hub"]
    loaded = load_full(folder, task="feature-extraction", device="cpu")
    assert loaded.report.dropped == dict.fromkeys(["classifier.bias", "classifier.weight"], hf_bert._CLASSIFIER_UNUSED)
    inputs = padded(PADDINGS["right"], "feature-extraction")
    with torch.no_grad():
        ours, theirs = loaded.model(**inputs), ref.bert(**inputs)  # BertModel, its pooler included
    assert {"last_hidden_state", "pooler_output"} <= set(testing.assert_outputs_close(ours, theirs, inputs, atol=ATOL))
    # an answer-span folder: its head dropped by its own rule, and no pooler to build
    loaded = load_full(checkpoints["qa", "hub"][0], task="feature-extraction", device="cpu")
    assert loaded.report.dropped == dict.fromkeys(["qa_outputs.bias", "qa_outputs.weight"], hf_bert._QA_UNUSED)
    assert loaded.model(**inputs).pooler_output is None


def write_tensors(folder, tensors, config):
    folder.mkdir(parents=True)
    save_safetensors({k: v.detach().clone() for k, v in tensors.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _pretraining(seed=0):
    torch.manual_seed(seed)
    return perturb(transformers.BertForPreTraining(transformers.BertConfig(**BASE)), seed)


def test_text_classification_on_a_pretraining_folder(tmp_path):
    """A pretraining file (MLM and next-sentence heads, no classifier): asking for a classifier
    fails naming the missing classifier keys, the pretraining heads dropped by their rules; the
    same file with a classifier loads, and matches BertForSequenceClassification."""
    pt = _pretraining()
    tensors = hf_bert.hub_layout(pt.state_dict(), BASE)
    write_tensors(tmp_path / "pt", tensors, BASE)
    with pytest.raises(ConversionError) as err:
        load_full(tmp_path / "pt", task="text-classification", device="cpu")
    message = str(err.value)
    assert "missing from the checkpoint: classifier.bias, classifier.weight" in message
    assert "cls." not in message  # the pretraining heads are dropped by their rules, not unexpected

    ref = transformers.BertForSequenceClassification(transformers.BertConfig(**BASE, num_labels=3)).eval()
    ref.bert.load_state_dict(pt.bert.state_dict())
    perturb(ref.classifier, seed=2)
    head = {"classifier.weight": ref.classifier.weight, "classifier.bias": ref.classifier.bias}
    write_tensors(tmp_path / "both", {**tensors, **head}, BASE)
    loaded = load_full(tmp_path / "both", task="text-classification", device="cpu", config_overrides={"num_labels": 3})
    dropped = loaded.report.dropped
    assert {k for k, why in dropped.items() if why == hf_bert._MLM_UNUSED} == {
        k for k in tensors if k.startswith("cls.predictions.")}
    assert {k for k, why in dropped.items() if why == hf_bert._NSP} == {"cls.seq_relationship.weight",
                                                                        "cls.seq_relationship.bias"}
    assert_head_parity(loaded.model, ref, padded(PADDINGS["holes"], "text-classification"), "text-classification")
    # fill-mask on that file: the fine-tuned head dropped by its rule
    dropped = load_full(tmp_path / "both", device="cpu").report.dropped
    assert dropped["classifier.weight"] == dropped["classifier.bias"] == hf_bert._CLASSIFIER_UNUSED


@pytest.mark.parametrize("head,task,named", [
    ("token", "question-answering", r"missing from the checkpoint: qa_outputs\.bias, qa_outputs\.weight"),
    ("qa", "token-classification", r"missing from the checkpoint: classifier\.bias, classifier\.weight"),
    ("qa", "fill-mask", r"cls\.predictions\.bias"),
    ("token", "text-classification", r"pooler\.dense\.bias \(source key bert\.pooler\.dense\.bias\)"),
    ("single-label", "multiple-choice", r"classifier\.weight: checkpoint \[3, 32\], model classifier\.weight expects \[1, 32\]"),
])
def test_a_head_the_checkpoint_lacks_is_named(checkpoints, head, task, named):
    with pytest.raises(ConversionError, match=named):
        load_full(checkpoints[head, "hub"][0], task=task, device="cpu")


# ----------------------------------------------------------------------------- broken mappings


def _flip(dim):
    return Transform(f"flip({dim})", lambda w: w.flip(dim), lambda w: w.flip(dim), "a plausible bug: rows or columns reversed")


# a plausible bug per head: labels (start/end) in the wrong order, or a weight read reversed
BREAKS = {"single-label": ("classifier.weight", 0), "regression": ("classifier.weight", 1),
          "token": ("classifier.weight", 0), "qa": ("qa_outputs.weight", 0), "choice": ("classifier.weight", 1)}


@pytest.mark.parametrize("head", sorted(BREAKS))
def test_a_broken_head_mapping_is_caught_by_verify(checkpoints, head):
    folder, _ = checkpoints[head, "hub"]
    key, dim = BREAKS[head]
    broken = dataclasses.replace(hf_bert.CONVERTER, key_map=tuple(
        dataclasses.replace(m, transform=_flip(dim)) if m.source == key else m for m in hf_bert.KEY_MAP))
    good = verify(str(folder), device="cpu")
    assert good.passed and good.task == HEADS[head][1], good.render()
    report = verify(str(folder), device="cpu", converter=broken)
    assert not report.passed
    assert report.first_divergence == "hidden states agree; the difference is in the output head", report.render()


@pytest.mark.parametrize("head", ["token", "qa", "choice"])
def test_a_broken_unpadding_is_caught_for_every_head(checkpoints, head, monkeypatch):
    """The heads that read per-token outputs go through the fast path's scatter back: a broken
    fast path is named by verify, and the plain model passes."""
    from zoo.accel import bert as fast_bert

    folder, _ = checkpoints[head, "hub"]
    layer = fast_bert._layer
    monkeypatch.setattr(fast_bert, "_layer", lambda block, x, padding: layer(block, x, padding).flip(-1))
    report = verify(str(folder), device="cpu")
    assert not report.passed
    assert "the difference is in the fast path bert-unpadding;" in report.first_divergence, report.render()
    assert verify(str(folder), device="cpu", plain=True).passed


# ----------------------------------------------------------------------------- export, kit, sizes


@pytest.mark.parametrize("head", sorted(HEADS))
def test_export_loads_in_transformers_auto_classes(checkpoints, head, tmp_path):
    """`zoo convert --to hf`: the same tensors under the same names, a config.json naming the
    class (labels and problem type kept), and AutoModelFor<task> gives the same outputs."""
    folder, ref = checkpoints[head, "hub"]
    cls_name, task, extra = HEADS[head]
    result = convert_checkpoint(str(folder), "hf", tmp_path / "out")
    assert not result.skipped
    source, back = read_safetensors(folder / "model.safetensors"), read_safetensors(tmp_path / "out" / "model.safetensors")
    assert set(source) == set(back) and all(torch.equal(source[k], back[k]) for k in source)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == [cls_name]
    assert config.get("problem_type") == extra.get("problem_type")
    if "id2label" in extra:
        assert config["id2label"] == extra["id2label"]
    model, info = AUTO[task].from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert type(model).__name__ == cls_name and not info["missing_keys"] and not info["unexpected_keys"], info
    loaded = load_full(tmp_path / "out", device="cpu")
    assert loaded.task == task
    for rows in paddings(task).values():
        inputs = padded(rows, task)
        assert_head_parity(loaded.model, model.eval(), inputs, task)
        assert_head_parity(loaded.model, ref, inputs, task)


@pytest.mark.parametrize("task", sorted(AUTO))
def test_the_kit_passes_for_every_head(task):
    """zoo.testing.check_converter on each task: key accounting and verify in both layouts, and
    the Hub layout round trip, bit for bit."""
    testing.check_converter("hf_bert", task=task)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_parameter_count_is_exact(head):
    cls_name, task, extra = HEADS[head]
    config = hf_bert.to_architecture({**BASE, **extra})
    arch = get_catalog().architecture("bert")
    model = build_model(arch, config, task)
    with torch.device("meta"):
        ref = getattr(transformers, cls_name)(transformers.BertConfig(**BASE, **extra))
    n = sum(p.numel() for p in model.parameters())
    assert parameter_count(config, task) == n == sum(p.numel() for p in ref.parameters())


# ----------------------------------------------------------------------------- config and input


def test_config_translation_of_the_heads():
    to = hf_bert.to_architecture
    assert to(BASE)["num_labels"] == 2  # transformers' default
    assert to({**BASE, "id2label": {"0": "a", "1": "b", "2": "c"}})["num_labels"] == 3
    # older files hold num_labels, which wins over id2label in transformers too
    assert to({**BASE, "num_labels": 5, "id2label": {"0": "a"}})["num_labels"] == 5
    assert to(BASE)["classifier_dropout_prob"] == 0.1  # hidden_dropout_prob when null
    arch = to({**BASE, "classifier_dropout": 0.3, "num_labels": 7})
    assert arch["classifier_dropout_prob"] == 0.3 and arch["num_labels"] == 7
    assert to(hf_bert.from_architecture(arch)) == arch
    testing.check_config_translation("hf_bert", {**BASE, **HEADS["token"][2]})
    with pytest.raises(ConfigError, match=r"id2label=\{\} names no label"):
        to({**BASE, "id2label": {}})


@pytest.mark.parametrize("field,value,message", [
    ("problem_type", "ranking", r"field problem_type must be one of regression, single_label_classification, "
                                r"multi_label_classification"),
    ("num_labels", 0, r"field num_labels must be an integer >= 1, got 0"),
    ("classifier_dropout", 1.5, r"field classifier_dropout must be a number from 0 to 1"),
    ("add_mlm_head", True, r"add_mlm_head=True: the text-classification model's logits are its own head's"),
])
def test_bad_head_config_is_refused_in_one_line(checkpoints, tmp_path, field, value, message):
    folder, ref = checkpoints["single-label", "hub"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    config = {**json.loads((folder / "config.json").read_text()), field: value}
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message) as err:
        load_full(bad, device="cpu")
    assert "\n" not in str(err.value)


def test_multiple_choice_example_inputs_and_bad_shapes(checkpoints):
    inputs = example_inputs(hf_bert.to_architecture(BASE), "multiple-choice", 2, 9, torch.Generator().manual_seed(0))
    assert all(tuple(t.shape) == (2, CHOICES, 9) for t in inputs.values())
    assert not bool(inputs["attention_mask"].all())
    model = load_full(checkpoints["choice", "hub"][0], device="cpu").model
    with pytest.raises(InputError, match=r"shape \[B, C, T\]"):
        model(torch.ones(2, 9, dtype=torch.long))
    with pytest.raises(InputError, match=r"attention_mask has shape \[2, 9\], input_ids \[2, 3, 9\]"):
        model(inputs["input_ids"], attention_mask=torch.ones(2, 9, dtype=torch.long))
    with pytest.raises(InputError, match=r"token ids must be in \[0, 99\)"):
        model(inputs["input_ids"] + 99)
