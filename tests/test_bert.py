"""BERT: parity with transformers on tiny random configs, in every key layout real files use.

Tolerance: 1e-5 absolute on float32 CPU outputs (logits, last hidden state, pooler output and
every hidden state). Each test writes a checkpoint folder (config.json + model.safetensors) and
loads it through the real zoo path (``zoo.loading.load_full``).

zoo's BERT skips padding positions and returns zeros there: per-position outputs are compared
with transformers where ``attention_mask`` is 1 (as ``zoo verify`` does), and must be exactly
zero where it is 0.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import functools
import json
import re

import pytest
import torch
import transformers

from zoo import testing
from zoo.checkpoint import save_safetensors
from zoo.convert import compile_key_map
from zoo.converters import hf_bert
from zoo.errors import ConfigError, ConversionError, InputError
from zoo.loading import build_model, load_full
from zoo.plugins.bert import example_inputs, from_config
from zoo.registry import get_catalog
from zoo.tasks import RunOptions
from zoo.tasks import feature_extraction, fill_mask
from zoo.verification import verify

ATOL = 1e-5

BASE = dict(
    model_type="bert", vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=37, hidden_act="gelu", layer_norm_eps=1e-12, max_position_embeddings=64,
    type_vocab_size=2, pad_token_id=0,
)

# config variety: hidden sizes, head counts, layer counts, activations, eps, token types
CONFIGS = {
    "h32-nh4-L2-gelu": {},
    "h48-nh3-L3-gelu_new": dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=3,
                                intermediate_size=64, hidden_act="gelu_new", layer_norm_eps=1e-5),
    "h64-nh8-L1-relu": dict(hidden_size=64, num_attention_heads=8, num_hidden_layers=1,
                            intermediate_size=96, hidden_act="relu", type_vocab_size=3, vocab_size=120),
}

TASK_CLASS = {"fill-mask": transformers.BertForMaskedLM, "feature-extraction": transformers.BertModel}


def tiny(**over):
    return {**BASE, **over}


def perturb(model, seed=0):
    """transformers initialises biases to 0 and LayerNorms to 1: add noise everywhere so that a
    swapped weight/bias or gamma/beta cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def pretraining_model(config, seed=0):
    return _pretraining_model(json.dumps(config, sort_keys=True), seed)


@functools.lru_cache(maxsize=None)
def _pretraining_model(config_json, seed):
    """BertForPreTraining: the layout of the Hub pretraining files (encoder under ``bert.``,
    pooler, MLM head, next-sentence head)."""
    torch.manual_seed(seed)
    config = json.loads(config_json)
    return perturb(transformers.BertForPreTraining(transformers.BertConfig(**config)), seed)


def reference_from(pt, config, task):
    """The transformers model of ``task`` holding the weights of the pretraining model ``pt``."""
    ref = TASK_CLASS[task](transformers.BertConfig(**config)).eval()
    sd = pt.state_dict()
    if task == "feature-extraction":
        ref.load_state_dict({k[len("bert."):]: v for k, v in sd.items() if k.startswith("bert.")})
    else:
        keep = {k: v for k, v in sd.items() if not k.startswith(("bert.pooler.", "cls.seq_relationship."))}
        ref.load_state_dict(keep)
    return ref


def to_layout(sd, config, *, prefix=True, gamma=False, position_ids=False, decoder=False):
    """A ``bert.``-prefixed state dict -> one of the key layouts found in real files."""
    out = {}
    for key, t in sd.items():
        if key.startswith("cls.predictions.decoder.") and not decoder:
            continue
        if not prefix:
            key = key.removeprefix("bert.")
        if gamma:
            key = re.sub(r"LayerNorm\.weight$", "LayerNorm.gamma", key)
            key = re.sub(r"LayerNorm\.bias$", "LayerNorm.beta", key)
        out[key] = t.detach().clone()
    if position_ids:
        n = config["max_position_embeddings"]
        out[("bert." if prefix else "") + "embeddings.position_ids"] = torch.arange(n)[None]
    return out


def write_checkpoint(folder, tensors, config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_safetensors(tensors, folder / "model.safetensors")
    return folder


def inputs_for(config, batch=3, seq=11, seed=1):
    return example_inputs(hf_bert.to_architecture(config), "fill-mask", batch, seq, torch.Generator().manual_seed(seed))


def assert_zeros_at_padding(out, attention_mask):
    if attention_mask is None:
        return
    padding = attention_mask == 0
    for name, t in [("logits", out.logits), ("last_hidden_state", out.last_hidden_state)] + [
            (f"hidden_states[{i}]", h) for i, h in enumerate(out.hidden_states or ())]:
        if t is not None:
            assert t.shape[:2] == padding.shape and bool((t[padding] == 0).all()), f"{name}: not zero at padding"


def assert_parity(loaded, ref, inputs):
    """Every output both give agrees at real positions (pooler_output whole); zeros at padding."""
    with torch.no_grad():
        ours = loaded.model(**inputs, output_hidden_states=True)
        theirs = ref(**inputs, output_hidden_states=True)
    compared = set(testing.assert_outputs_close(ours, theirs, inputs, atol=ATOL, rtol=0))
    if isinstance(ref, transformers.BertForMaskedLM):
        assert "logits" in compared and ours.pooler_output is None
    else:
        assert {"last_hidden_state", "pooler_output"} <= compared and ours.logits is None
    assert len(ours.hidden_states) == len(theirs.hidden_states) == loaded.config["num_hidden_layers"] + 1
    assert_zeros_at_padding(ours, inputs.get("attention_mask"))


def sha(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# ----------------------------------------------------------------------------- parity


def test_example_inputs_pad_and_use_two_segments():
    inp = inputs_for(tiny())
    assert not bool(inp["attention_mask"].all()) and bool(inp["attention_mask"][0].all())
    assert set(inp["token_type_ids"].unique().tolist()) == {0, 1}


# (prefix, gamma/beta, position_ids, decoder weight): every pair of choices of two flags occurs
# in some row (a pairwise covering of the 16 combinations); the first row is the Hub's layout.
LAYOUTS = [
    (True, True, False, False),
    (True, False, True, True),
    (False, True, True, True),
    (False, False, False, True),
    (False, True, False, False),
    (True, False, True, False),
]


@pytest.mark.parametrize("task", ["fill-mask", "feature-extraction"])
@pytest.mark.parametrize(
    "prefix,gamma,position_ids,decoder", LAYOUTS,
    ids=[f"{'bert.' if p else 'noprefix'}-{'gamma' if g else 'weight'}-{'posids' if i else 'noposids'}-"
         f"{'decoder' if d else 'nodecoder'}" for p, g, i, d in LAYOUTS],
)
def test_parity_in_every_key_layout(tmp_path, task, prefix, gamma, position_ids, decoder):
    config = tiny()
    pt = pretraining_model(config)
    tensors = to_layout(pt.state_dict(), config, prefix=prefix, gamma=gamma, position_ids=position_ids, decoder=decoder)
    folder = write_checkpoint(tmp_path / "ckpt", tensors, config)
    before = sha(folder)
    loaded = load_full(folder, task=task, device="cpu")
    assert sha(folder) == before  # the input files are left unchanged
    assert_parity(loaded, reference_from(pt, config, task), inputs_for(config))
    dropped = set(loaded.report.dropped.values())
    assert "next-sentence-prediction head: no zoo task uses it" in dropped
    assert (hf_bert._POOLER_UNUSED in dropped) == (task == "fill-mask")
    assert (hf_bert._MLM_UNUSED in dropped) == (task == "feature-extraction")
    assert any("position_ids" in k for k in loaded.report.dropped) == position_ids


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("task", ["fill-mask", "feature-extraction"])
def test_parity_across_configs_via_reference_and_hub_layout(tmp_path, name, task):
    """What `zoo verify` does on random weights: the converter's reference, its hub_layout,
    zoo's loading path, the architecture's example inputs."""
    config = tiny(**CONFIGS[name])
    torch.manual_seed(0)
    ref = perturb(hf_bert.reference(config, task))
    folder = write_checkpoint(tmp_path / "ckpt", hf_bert.hub_layout(ref.state_dict(), config), config)
    loaded = load_full(folder, task=task, device="cpu")
    inputs = example_inputs(hf_bert.to_architecture(config), task, 4, 13, torch.Generator().manual_seed(2))
    assert_parity(loaded, ref, inputs)


@pytest.mark.parametrize("cls,task", [(transformers.BertForMaskedLM, "fill-mask"), (transformers.BertModel, "feature-extraction")])
def test_save_pretrained_folders_load_with_their_task(tmp_path, cls, task):
    """transformers' own save_pretrained layout; the task comes from config.json `architectures`."""
    config = tiny(**CONFIGS["h48-nh3-L3-gelu_new"])
    torch.manual_seed(0)
    ref = perturb(cls(transformers.BertConfig(**config)))
    ref.save_pretrained(tmp_path / "ckpt")
    loaded = load_full(tmp_path / "ckpt", device="cpu")
    assert loaded.task == task
    assert_parity(loaded, ref, inputs_for(config))


def test_attention_mask_and_token_types_matter(tmp_path):
    """Guards against a parity test that passes because the inputs are ignored."""
    config = tiny()
    pt = pretraining_model(config)
    folder = write_checkpoint(tmp_path / "ckpt", to_layout(pt.state_dict(), config), config)
    model = load_full(folder, task="feature-extraction", device="cpu").model
    inp = inputs_for(config)
    with torch.no_grad():
        full = model(**inp).last_hidden_state
        no_mask = model(inp["input_ids"], token_type_ids=inp["token_type_ids"]).last_hidden_state
        no_types = model(inp["input_ids"], attention_mask=inp["attention_mask"]).last_hidden_state
        zero_types = model(inp["input_ids"], attention_mask=inp["attention_mask"],
                           token_type_ids=torch.zeros_like(inp["input_ids"])).last_hidden_state
    assert (full[1] - no_mask[1]).abs().max() > 1e-3  # row 1 is padded
    torch.testing.assert_close(full[0], no_mask[0])  # row 0 is not
    assert (full - no_types).abs().max() > 1e-3
    torch.testing.assert_close(no_types, zero_types)  # token types default to zeros


# ----------------------------------------------------------------------------- padding
# zoo computes only the real tokens (and position 0 of each row, for the pooler); transformers
# computes every position. Masks as strings: one row each, 1 = token, 0 = padding.

PADDINGS = {
    "right": ["111111111", "111110000", "100000000"],
    "left": ["111111111", "000011111", "000000001"],
    "a row of padding only": ["111111111", "000000000", "111000000"],
    "mixed, no complete row": ["111111110", "001111100", "000000000", "110000000"],
    "holes": ["101101011", "011111111"],
    "batch of 1": ["111100000"],
}


def padded_inputs(rows, seed=3, vocab=99):
    mask = torch.tensor([[int(c) for c in row] for row in rows])
    gen = torch.Generator().manual_seed(seed)
    # random ids and token types under the padding too: they must not leak into real tokens
    ids = torch.randint(1, vocab, mask.shape, generator=gen)
    types = torch.randint(0, 2, mask.shape, generator=gen)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types)


@pytest.fixture(scope="module")
def models_and_refs(tmp_path_factory):
    """zoo and transformers on the same weights, for both tasks."""
    config = tiny()
    pt = pretraining_model(config)
    folder = write_checkpoint(tmp_path_factory.mktemp("padding") / "ckpt", to_layout(pt.state_dict(), config), config)
    return folder, {task: (load_full(folder, task=task, device="cpu"), reference_from(pt, config, task))
                    for task in TASK_CLASS}


@pytest.mark.parametrize("task", sorted(TASK_CLASS))
@pytest.mark.parametrize("padding", sorted(PADDINGS))
def test_parity_at_real_positions_and_zeros_at_padding(models_and_refs, task, padding):
    loaded, ref = models_and_refs[1][task]
    assert_parity(loaded, ref, padded_inputs(PADDINGS[padding]))


@pytest.mark.parametrize("task", sorted(TASK_CLASS))
def test_a_padded_batch_gives_what_each_row_gives_alone(models_and_refs, task):
    """The unpadded path (gather, attention in the padded layout, scatter back) against the
    plain one: each row alone, its real tokens only, no mask at all."""
    model = models_and_refs[1][task][0].model
    inputs = padded_inputs(PADDINGS["right"] + ["111111100"])
    with torch.no_grad():
        batch = model(**inputs, output_hidden_states=True)
        for b, n in enumerate(inputs["attention_mask"].sum(1).tolist()):
            alone = model(inputs["input_ids"][b:b + 1, :n], token_type_ids=inputs["token_type_ids"][b:b + 1, :n],
                          output_hidden_states=True)
            for name in ("logits", "last_hidden_state"):
                if getattr(alone, name) is not None:
                    torch.testing.assert_close(getattr(batch, name)[b, :n], getattr(alone, name)[0], atol=ATOL, rtol=0)
            for x, y in zip(batch.hidden_states, alone.hidden_states, strict=True):
                torch.testing.assert_close(x[b, :n], y[0], atol=ATOL, rtol=0)
            if alone.pooler_output is not None:
                torch.testing.assert_close(batch.pooler_output[b], alone.pooler_output[0], atol=ATOL, rtol=0)


def test_gradients_through_the_unpadded_path_match_transformers(models_and_refs):
    """Autograd through gather/scatter (each layer its own q/k/v buffer while recording): the
    gradients of a loss on real positions equal transformers'."""
    loaded, ref = models_and_refs[1]["fill-mask"]
    inputs = padded_inputs(PADDINGS["mixed, no complete row"])
    real = inputs["attention_mask"].bool()
    weights = torch.randn(int(real.sum()), 99, generator=torch.Generator().manual_seed(5))
    grads = []
    for model in (loaded.model, ref):
        model = copy.deepcopy(model).requires_grad_(True)  # zoo loads for inference (no grad)
        with torch.enable_grad():
            (model(**inputs).logits[real] * weights).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if n.endswith("attention.self.query.weight")})
    assert len(grads[0]) == len(grads[1]) == 2
    for (a, ga), (b, gb) in zip(sorted(grads[0].items()), sorted(grads[1].items())):
        torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-4, msg=lambda m: f"{a} vs {b}: {m}")


@pytest.mark.parametrize("task", sorted(TASK_CLASS))
def test_packed_weights_give_what_the_plain_ones_give(models_and_refs, task):
    """On CPU float32 the loader packs q|k|v as one product (zoo.accel.ops.Packed); without the
    packed copies the same outputs come from the plain weights."""
    from zoo.accel import unpack_all
    from zoo.accel.ops import packing_available

    model = copy.deepcopy(models_and_refs[1][task][0].model)
    if packing_available():
        original = models_and_refs[1][task][0].model
        assert original.encoder.layer[0].attention.self._qkv is not None
    inputs = padded_inputs(PADDINGS["left"])
    with torch.no_grad():
        packed = models_and_refs[1][task][0].model(**inputs)
        unpack_all(model)
        plain = model(**inputs)
    testing.assert_outputs_close(plain, packed, inputs, atol=ATOL)


def test_no_padding_takes_the_plain_path(models_and_refs):
    """A mask of ones computes exactly what no mask computes (no gather, no scatter)."""
    model = models_and_refs[1]["fill-mask"][0].model
    inputs = padded_inputs(["111111111", "111111111"])
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, model(inputs["input_ids"], token_type_ids=inputs["token_type_ids"]).logits,
                                   atol=0, rtol=0)


# ----------------------------------------------------------------------------- broken mappings


@pytest.mark.parametrize("padding", ["left", "right", "a row of padding only"])
def test_swapped_keys_are_caught_by_parity_with_padding(models_and_refs, padding):
    """Comparing real positions only still catches a broken mapping: query and key weights
    swapped, on padded batches; verify (whose example inputs pad) fails and names the block."""
    folder, pairs = models_and_refs
    swap = {"encoder.layer.{}.attention.self.query.weight": "encoder.layer.{}.attention.self.key.weight",
            "encoder.layer.{}.attention.self.key.weight": "encoder.layer.{}.attention.self.query.weight"}
    broken = dataclasses.replace(
        hf_bert.CONVERTER,
        key_map=tuple(dataclasses.replace(m, target=swap.get(m.target, m.target)) for m in hf_bert.KEY_MAP),
    )
    loaded = load_full(folder, task="fill-mask", device="cpu", converter=broken)
    inputs = padded_inputs(PADDINGS[padding])
    assert_parity(pairs["fill-mask"][0], pairs["fill-mask"][1], inputs)  # the intact mapping passes
    with pytest.raises(AssertionError, match=r"logits|hidden_states\[1\]"):
        assert_parity(loaded, pairs["fill-mask"][1], inputs)
    report = verify(str(folder), device="cpu", converter=broken)
    assert not report.passed and report.first_divergence.startswith("hidden_states[1] (output of block 0)")


def test_missing_gamma_rename_raises_naming_the_key(tmp_path):
    config = tiny()
    pt = pretraining_model(config)
    folder = write_checkpoint(tmp_path / "ckpt", to_layout(pt.state_dict(), config, gamma=True), config)
    broken = dataclasses.replace(hf_bert.CONVERTER, renames=hf_bert.RENAMES[:1])
    with pytest.raises(ConversionError, match=r"bert\.embeddings\.LayerNorm\.gamma"):
        load_full(folder, task="fill-mask", device="cpu", converter=broken)


def test_gamma_outside_layernorm_is_not_renamed():
    compiled = compile_key_map(hf_bert.CONVERTER)
    assert compiled.rename("bert.encoder.layer.0.output.LayerNorm.gamma") == "bert.encoder.layer.0.output.LayerNorm.weight"
    assert compiled.rename("bert.encoder.layer.0.output.layer_scale.gamma") == "bert.encoder.layer.0.output.layer_scale.gamma"
    assert compiled.rename("embeddings.LayerNorm.beta") == "bert.embeddings.LayerNorm.bias"


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "field,value",
    [
        ("position_embedding_type", "relative_key"),
        ("position_embedding_type", "relative_key_query"),
        ("hidden_act", "gelu_10"),
        ("is_decoder", True),
        ("add_cross_attention", True),
        ("num_attention_heads", 5),
        ("tie_word_embeddings", False),
    ],
)
def test_unsupported_config_values_are_refused(tmp_path, field, value):
    config = tiny()
    pt = pretraining_model(config)
    folder = write_checkpoint(tmp_path / "ckpt", to_layout(pt.state_dict(), config), {**config, field: value})
    with pytest.raises(ConfigError, match=rf"{field}={value!r}"):
        load_full(folder, task="fill-mask", device="cpu")


def test_a_config_of_another_family_is_refused_by_the_converter():
    with pytest.raises(ConfigError, match=r"model_type='roberta'"):
        hf_bert.CONVERTER.architecture_config(tiny(model_type="roberta"))


def test_an_untied_mlm_decoder_is_refused_unless_the_mlm_head_is_left_out():
    """The MLM decoder reuses the word embeddings: a config whose decoder is its own matrix
    builds only without the MLM head."""
    with pytest.raises(ConfigError, match=r"tie_word_embeddings=False"):
        hf_bert.to_architecture(tiny(tie_word_embeddings=False, add_mlm_head=True))
    arch = hf_bert.to_architecture(tiny(tie_word_embeddings=False, add_mlm_head=False))
    assert from_config(arch, "feature-extraction").config.add_mlm_head is False


@pytest.mark.parametrize("field,value,message", [
    ("num_attention_heads", 0, r"num_attention_heads=0 must be a positive integer"),
    ("hidden_act", "swish_9", r"hidden_act='swish_9' is not supported"),
    ("hidden_size", 30, r"hidden_size=30 is not divisible by num_attention_heads=4"),
    ("position_embedding_type", "absolute", r"unknown config field\(s\) position_embedding_type"),
    ("pad_token_id", 99, r"pad_token_id=99 must be a token id below vocab_size=99"),
])
def test_the_architecture_checks_its_own_config(field, value, message):
    """What the architecture itself does not compute is refused there, in its own names."""
    with pytest.raises(ConfigError, match=message):
        from_config({**hf_bert.to_architecture(tiny()), field: value}, "fill-mask")


def test_config_translation_keeps_the_names_and_fills_transformers_defaults():
    arch = hf_bert.to_architecture({"model_type": "bert", "hidden_size": 64, "hidden_act": None,
                                    "add_pooling_layer": False, "pad_token_id": 0})
    assert arch["hidden_size"] == 64 and arch["hidden_act"] == "gelu" and arch["layer_norm_eps"] == 1e-12
    assert arch["add_pooling_layer"] is False and arch["add_mlm_head"] is None and arch["pad_token_id"] == 0
    assert hf_bert.to_architecture({"pad_token_id": None})["pad_token_id"] is None  # no padding row
    assert hf_bert.to_architecture(hf_bert.from_architecture(arch)) == arch


def test_wrong_vocab_size_in_a_tensor(tmp_path):
    config = tiny()
    pt = pretraining_model(config)
    tensors = to_layout(pt.state_dict(), config, gamma=True)
    key = "bert.embeddings.word_embeddings.weight"
    tensors[key] = torch.cat([tensors[key], tensors[key][:1]])  # one row too many
    folder = write_checkpoint(tmp_path / "ckpt", tensors, config)
    with pytest.raises(ConversionError, match=rf"{re.escape(key)}: checkpoint \[100, 32\].*expects \[99, 32\]"):
        load_full(folder, task="fill-mask", device="cpu")


def test_missing_pooler_when_asked_for_pooler_output(tmp_path):
    """A BertForMaskedLM checkpoint has no pooler: asking for one (add_pooling_layer=True)
    fails naming the pooler keys; by default feature-extraction builds without it and gives no
    pooler_output (so `zoo run --embed` works on MLM-only checkpoints)."""
    config = tiny(architectures=["BertForMaskedLM"])
    torch.manual_seed(0)
    perturb(transformers.BertForMaskedLM(transformers.BertConfig(**config))).save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ConversionError, match=r"missing from the checkpoint: pooler\.dense\.bias \(source key bert\.pooler\.dense\.bias\), pooler\.dense\.weight"):
        load_full(tmp_path / "ckpt", task="feature-extraction", device="cpu", config_overrides={"add_pooling_layer": True})
    loaded = load_full(tmp_path / "ckpt", task="feature-extraction", device="cpu")
    out = loaded.model(**inputs_for(config))
    assert out.pooler_output is None and out.logits is None and out.last_hidden_state.shape == (3, 11, 32)


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    config = tiny()
    pt = pretraining_model(config)
    folder = write_checkpoint(tmp_path_factory.mktemp("bert") / "ckpt", to_layout(pt.state_dict(), config), config)
    return folder, pt, config


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(input_ids=torch.tensor([[1, 99]])), r"token ids must be in \[0, 99\)"),
        (dict(input_ids=torch.tensor([[1, 2]]), token_type_ids=torch.tensor([[0, 2]])), r"token_type_ids must be in \[0, 2\)"),
        (dict(input_ids=torch.tensor([[1, 2]]), attention_mask=torch.tensor([[1, 1, 0]])), r"attention_mask has shape \[1, 3\]"),
        (dict(input_ids=torch.tensor([[1, 2]]), attention_mask=torch.tensor([[1, 2]])), r"0 \(padding\) and 1"),
        (dict(input_ids=torch.zeros(1, 65, dtype=torch.long)), r"65 tokens exceed the 64 positions"),
        (dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), r"empty input"),
        (dict(input_ids=torch.zeros(2, dtype=torch.long)), r"shape \[B, T\]"),
    ],
)
def test_bad_runtime_input(tiny_mlm, kwargs, message):
    model = load_full(tiny_mlm[0], task="fill-mask", device="cpu").model
    with pytest.raises(InputError, match=message):
        model(**kwargs)


# ----------------------------------------------------------------------------- registry


BERT_ENTRIES = [e for e in get_catalog().list() if e.architecture == "bert"]


def test_registry_has_the_four_bert_checkpoints():
    names = {e.name for e in BERT_ENTRIES}
    assert names == {"bert-base-uncased", "bert-base-cased", "bert-large-uncased", "bert-large-cased"}
    for e in BERT_ENTRIES:
        assert get_catalog().find(e.repo) is e or get_catalog().find(e.repo).name == e.name


@pytest.mark.parametrize("entry", BERT_ENTRIES, ids=[e.name for e in BERT_ENTRIES])
def test_registry_entry_builds_on_meta_with_its_param_count(entry):
    arch = get_catalog().architecture(entry.architecture)
    model = build_model(arch, hf_bert.CONVERTER.architecture_config(entry.config), entry.task)
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == entry.params
    with torch.device("meta"):
        ref = hf_bert.reference(entry.config, entry.task)
    # the reference counts the tied decoder once too (parameters() deduplicates)
    assert sum(p.numel() for p in ref.parameters()) == entry.params


# ----------------------------------------------------------------------------- zoo run


VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "paris", "is", "the", "capital", "of",
         "france", ".", "city", "some", "text", "a", "berlin"]


@pytest.fixture(scope="module")
def with_tokenizer(tiny_mlm, tmp_path_factory):
    folder, pt, config = tiny_mlm
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(VOCAB + [f"w{i}" for i in range(config["vocab_size"] - len(VOCAB))]) + "\n")
    # transformers 5 reads a vocab.txt through from_pretrained (its __init__ takes `vocab=`)
    transformers.BertTokenizerFast.from_pretrained(str(vocab.parent)).save_pretrained(folder)
    return folder, pt, config


def test_fill_mask_runner(with_tokenizer):
    folder, pt, config = with_tokenizer
    loaded = load_full(folder, task="fill-mask", device="cpu")
    lines = []
    result = fill_mask.run(loaded, ["Paris is the [MASK] of France."], RunOptions(top=3), lines.append)
    ids = [2, 5, 6, 7, 4, 9, 10, 11, 3]  # [CLS] paris is the [MASK] of france . [SEP]
    assert result["input_ids"] == ids
    (mask,) = result["masks"]
    assert mask["position"] == 4 and len(mask["candidates"]) == 3
    with torch.no_grad():
        logits = reference_from(pt, config, "fill-mask")(torch.tensor([ids])).logits[0, 4]
    probs = logits.softmax(-1)
    top = probs.topk(3)
    assert [c["token_id"] for c in mask["candidates"]] == top.indices.tolist()
    assert [c["score"] for c in mask["candidates"]] == pytest.approx(top.values.tolist(), abs=1e-5)
    first = mask["candidates"][0]
    assert first["token"] == (VOCAB[first["token_id"]] if first["token_id"] < len(VOCAB) else f"w{first['token_id'] - len(VOCAB)}")
    assert len(lines) == 3 and first["token"] in lines[0]


def test_fill_mask_runner_refuses_input_without_a_mask(with_tokenizer):
    loaded = load_full(with_tokenizer[0], task="fill-mask", device="cpu")
    with pytest.raises(InputError, match=r"no \[MASK\] in the input"):
        fill_mask.run(loaded, ["Paris is the city"], RunOptions(), lambda s: None)


def test_fill_mask_runner_needs_the_mlm_head(with_tokenizer):
    loaded = load_full(with_tokenizer[0], task="feature-extraction", device="cpu")
    with pytest.raises(InputError, match="without the MLM head"):
        fill_mask.run(loaded, ["the [MASK] ."], RunOptions(), lambda s: None)


@pytest.mark.parametrize("task", ["fill-mask", "feature-extraction"])
def test_embed_runner(with_tokenizer, task):
    """`zoo run NAME --embed TEXT`: the fill-mask runner hands over to feature-extraction;
    the embedding is the mean of the reference's last hidden states."""
    folder, pt, config = with_tokenizer
    loaded = load_full(folder, task=task, device="cpu")
    lines = []
    runner = fill_mask.run if task == "fill-mask" else feature_extraction.run
    result = runner(loaded, ["some text"], RunOptions(embed=True, json=True), lines.append)
    assert lines == []  # --json: nothing but the returned dict
    ids = [2, 13, 14, 3]
    assert result["input_ids"] == ids and result["pooling"] == "mean" and result["dim"] == 32
    with torch.no_grad():
        ref = reference_from(pt, config, "feature-extraction")(torch.tensor([ids]))
    expected = ref.last_hidden_state[0].mean(0)
    assert result["embedding"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert result["norm"] == pytest.approx(float(expected.norm()), abs=1e-4)
    if task == "feature-extraction":
        assert result["pooler_output"] == pytest.approx(ref.pooler_output[0].tolist(), abs=1e-5)
    else:
        assert "pooler_output" not in result
    printed = []
    feature_extraction.run(loaded, ["some text"], RunOptions(embed=True), printed.append)
    assert printed[0].startswith("sentence embedding: mean of 4 token states, dim 32")
    assert len(printed[1].split()) == 32


def test_embed_runner_with_ids_and_no_tokenizer(tiny_mlm, tmp_path):
    folder, pt, config = tiny_mlm
    bare = write_checkpoint(tmp_path / "bare", to_layout(pt.state_dict(), config), config)
    loaded = load_full(bare, task="fill-mask", device="cpu")
    result = feature_extraction.run(loaded, [], RunOptions(embed=True, ids=[2, 13, 3], json=True), lambda s: None)
    assert result["input_ids"] == [2, 13, 3] and result["dim"] == 32 and "tokens" not in result
    with pytest.raises(InputError, match="no tokenizer files"):
        feature_extraction.run(loaded, ["some text"], RunOptions(embed=True), lambda s: None)


def test_zoo_run_command_line(with_tokenizer):
    """`zoo run FOLDER "... [MASK] ..."` and `zoo run FOLDER --embed TEXT`, with --json."""
    from click.testing import CliRunner

    from zoo.cli import cli

    folder = str(with_tokenizer[0])
    result = CliRunner().invoke(cli, ["run", folder, "Paris is the [MASK] of France.", "--top", "2", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["masks"][0]["position"] == 4 and len(data["masks"][0]["candidates"]) == 2
    result = CliRunner().invoke(cli, ["run", folder, "--embed", "some text", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["dim"] == 32 and len(data["pooler_output"]) == 32


def test_embed_on_a_checkpoint_without_pooler(with_tokenizer, tmp_path):
    """`zoo run FOLDER --embed TEXT` on a BertForMaskedLM checkpoint (no pooler weights): the
    mean-pooled embedding, and no pooler_output."""
    from click.testing import CliRunner

    from zoo.cli import cli

    folder, pt, config = with_tokenizer
    mlm = tmp_path / "mlm"
    torch.manual_seed(0)
    transformers.BertForMaskedLM(transformers.BertConfig(**tiny(architectures=["BertForMaskedLM"]))).save_pretrained(mlm)
    for f in folder.iterdir():
        if "token" in f.name or f.name == "vocab.txt":
            (mlm / f.name).write_bytes(f.read_bytes())
    result = CliRunner().invoke(cli, ["run", str(mlm), "--embed", "some text", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["dim"] == 32 and "pooler_output" not in data



def test_the_padding_rows_gradient_is_transformers(tmp_path):
    """The word embeddings' padding row takes no gradient from the lookup (transformers'
    padding_idx), only from the tied MLM decoder: the pad id among real tokens trains as there."""
    conv = hf_bert.CONVERTER
    from conftest import write_checkpoint as write_reference

    ref = write_reference(conv, tmp_path).eval().requires_grad_(True)
    model = load_full(str(tmp_path), device="cpu").model.eval().requires_grad_(True)
    ids = torch.tensor([[0, 5, 0, 7, 9, 0]])
    model(input_ids=ids, labels=ids).loss.backward()
    ref(input_ids=ids, labels=ids).loss.backward()
    torch.testing.assert_close(model.embeddings.word_embeddings.weight.grad,
                               ref.bert.embeddings.word_embeddings.weight.grad, atol=1e-6, rtol=1e-5)
