"""The encoder-decoder architecture, its Marian and Annotated Transformer converters, and the
translation runner.

Marian parity: tiny random ``MarianMTModel``s are written in each key layout the real files use
(transformers ``save_pretrained``; the Hub layout with stored embedding aliases and sinusoid
tables), loaded through ``zoo.loading``, and compared on padded batches: logits and hidden
states within 1e-5 (float32, absolute), greedy and beam-search token ids identical to
``generate``. The same holds for each layout of the token tables (one shared vocabulary or
separate ones, output tied or its own), each activation and embedding scale, and for configs
carrying the fields MarianMTModel ignores; ``zoo convert --to hf`` of each layout loads in
MarianMTModel with the same outputs.

The Annotated Transformer's code cannot be imported here, so its numerics are pinned by formulas
stated independently in this file (unbiased-std LayerNorm, interleaved sinusoids, pre-norm
residuals, a functional forward pass), on a state dict written in its own naming.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.accel import argmax
from zoo.checkpoint import save_safetensors
from zoo.convert import convert, export
from zoo.errors import CheckpointError, ConfigError, ConversionError, InputError
from zoo.loading import build_model, load_full
from zoo.registry import get_catalog
from zoo.tasks import RunOptions
from zoo.types import Converter, Map

from zoo.converters import annotated, hf_marian
from zoo.plugins.encoder_decoder import (
    EncoderDecoderConfig,
    KVCache,
    LayerNorm,
    SublayerConnection,
    sinusoids,
)

from conftest import leave_every_other_step

ATOL = 1e-5  # float32, absolute, on logits / hidden states
PAD = 59

# Tiny Marian configs: one like opus-mt (swish, scaled embeddings, pad banned, renormalized
# beam scores), one with the other switches (gelu, unscaled, uneven stacks, 2 heads).
MARIAN = {
    "opus-like": dict(
        vocab_size=60, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
        activation_function="swish", scale_embedding=True, bad_words_ids=[[PAD]], renormalize_logits=True,
    ),
    "gelu-uneven": dict(
        vocab_size=60, d_model=24, encoder_layers=1, decoder_layers=3, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=40, decoder_ffn_dim=40, max_position_embeddings=64,
        activation_function="gelu", scale_embedding=False,
    ),
}
COMMON = dict(
    model_type="marian", architectures=["MarianMTModel"], pad_token_id=PAD, decoder_start_token_id=PAD,
    eos_token_id=0, forced_eos_token_id=0, init_std=0.3,
)


def marian_config(name):
    return {**COMMON, **MARIAN[name]}


# seeds whose random models end some hypotheses early and make beam search differ from greedy
SEEDS = {"opus-like": 3, "gelu-uneven": 5}


def marian_reference(name, seed=None):
    """A random MarianMTModel whose greedy/beam outputs are not trivial: a spread-out shared
    table and output bias, eos made likely enough that some hypotheses end early."""
    torch.manual_seed(SEEDS[name] if seed is None else seed)
    config = marian_config(name)
    ref = hf_marian.reference(config, "translation").eval()
    with torch.no_grad():
        ref.model.shared.weight.normal_(0, 0.2)
        ref.final_logits_bias.normal_(0, 0.5)
        ref.final_logits_bias[0, 0] += 2.0
        for module in ref.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0, 0.2)
    return ref, config


def write_layout(ref, config, folder: Path, layout: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "save_pretrained":
        ref.save_pretrained(str(folder))
    else:  # the opus-mt files on the Hub: aliases and sinusoid tables stored too
        save_safetensors(hf_marian.hub_layout(ref.state_dict(), config), folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def padded_batch(vocab=58, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, vocab, (4, 7), generator=g)
    mask = torch.ones_like(x)
    for row, length in ((2, 4), (3, 2)):  # rows of different lengths, right-padded
        x[row, length:] = PAD
        mask[row, length:] = 0
    return x, mask


def assert_same_forward(model, ref, x, mask, dec):
    """zoo's logits and every hidden state (the encoder's, then the decoder's) equal the
    reference's on source ``x`` (``mask``) and decoder input ``dec``."""
    with torch.no_grad():
        want = ref(input_ids=x, attention_mask=mask, decoder_input_ids=dec, output_hidden_states=True)
        got = model(x, dec, attention_mask=mask, output_hidden_states=True)
    torch.testing.assert_close(got.logits, want.logits, atol=ATOL, rtol=0)
    for a, b in zip(got.hidden_states, want.encoder_hidden_states + want.decoder_hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def saved_and_loaded(names, reference, tmp_path_factory):
    """name -> (reference, config, folder in save_pretrained layout, loaded zoo model), the
    reference of each name built by ``reference(name)``."""
    out = {}
    for name in names:
        ref, config = reference(name)
        folder = write_layout(ref, config, tmp_path_factory.mktemp(name), "save_pretrained")
        out[name] = (ref, config, folder, load_full(folder, device="cpu").model)
    return out


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    return saved_and_loaded(MARIAN, marian_reference, tmp_path_factory)


# ---------------------------------------------------------------------------------- Marian parity


@pytest.mark.parametrize("layout", ["save_pretrained", "hub"])
@pytest.mark.parametrize("name", list(MARIAN))
def test_marian_logits_and_hidden_states_match(name, layout, tmp_path):
    ref, config = marian_reference(name)
    folder = write_layout(ref, config, tmp_path, layout)
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    loaded = load_full(folder, device="cpu")
    assert loaded.task == "translation" and loaded.converter.name == "hf_marian"
    x, mask = padded_batch()
    dec = torch.randint(1, 58, (4, 6), generator=torch.Generator().manual_seed(2))
    dec[:, 0] = PAD
    assert_same_forward(loaded.model, ref, x, mask, dec)
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == digest  # input untouched
    if layout == "hub":
        dropped = set(loaded.report.dropped)
        assert {"lm_head.weight", "model.encoder.embed_positions.weight", "model.decoder.embed_tokens.weight"} <= dropped


@pytest.mark.parametrize("beams", [1, 2, 4])
@pytest.mark.parametrize("name", list(MARIAN))
def test_marian_generate_ids_identical(marian, name, beams):
    ref, _, _, model = marian[name]
    x, mask = padded_batch()
    for n in (3, 12):
        want = ref.generate(x, attention_mask=mask, num_beams=beams, max_new_tokens=n)
        got = model.generate(x, attention_mask=mask, num_beams=beams, max_new_tokens=n)
        assert got.tolist() == want.tolist(), (n, got.tolist(), want.tolist())


def test_generation_check_is_not_vacuous(marian):
    """The random models above do end some hypotheses early (rows padded) and beam search
    chooses differently from greedy, so the identity checks exercise both."""
    ref, _, _, model = marian["opus-like"]
    x, mask = padded_batch()
    greedy = model.generate(x, attention_mask=mask, max_new_tokens=12)
    beam = model.generate(x, attention_mask=mask, max_new_tokens=12, num_beams=4)
    assert greedy.tolist() != beam.tolist()
    assert (beam == PAD)[:, 1:].any() or (greedy == PAD)[:, 1:].any()  # a finished row was padded
    assert (greedy[:, 0] == PAD).all() and (beam[:, 0] == PAD).all()  # decoder start token first


# ---------------------------------------------------------------------------------- generation_config.json


@pytest.fixture(scope="module")
def marian_generation_config(tmp_path_factory):
    """(reference, folder): the opus-like model saved with a generation_config.json that
    disagrees with its config.json (eos 1, not 0) and sets num_beams and max_length, as the
    opus-mt repos keep their decoding defaults there."""
    ref, config = marian_reference("opus-like")
    ref.generation_config.update(eos_token_id=1, forced_eos_token_id=1, num_beams=3, max_length=10)
    folder = write_layout(ref, config, tmp_path_factory.mktemp("generation-config"), "save_pretrained")
    return ref, folder


def test_generation_config_takes_precedence_over_config_json(marian_generation_config):
    _, folder = marian_generation_config
    assert json.loads((folder / "config.json").read_text())["eos_token_id"] == 0
    loaded = load_full(folder, device="cpu")
    cfg = loaded.model.config
    assert (cfg.eos_token_id, cfg.forced_eos_token_id, cfg.num_beams, cfg.max_new_tokens) == (1, 1, 3, 9)
    assert loaded.config["eos_token_id"] == 1 and "_from_model_config" not in loaded.config  # decoding defaults only


def test_export_keeps_the_decoding_defaults(marian_generation_config, tmp_path):
    """``zoo convert --to hf`` writes generation_config.json: the export decodes as its source,
    in zoo and in transformers."""
    from transformers import GenerationConfig

    from zoo.export import convert_checkpoint

    ref, folder = marian_generation_config
    convert_checkpoint(str(folder), "hf", tmp_path / "out")
    theirs = GenerationConfig.from_pretrained(str(tmp_path / "out"))
    assert (theirs.num_beams, theirs.max_length, theirs.eos_token_id, theirs.bad_words_ids) == (
        3, 10, 1, ref.generation_config.bad_words_ids)
    cfg = load_full(tmp_path / "out", device="cpu").model.config
    assert (cfg.eos_token_id, cfg.forced_eos_token_id, cfg.num_beams, cfg.max_new_tokens) == (1, 1, 3, 9)


def test_zoo_run_decodes_with_the_checkpoint_defaults(marian_generation_config):
    """No --beams, no --max-new-tokens: the ids transformers' generate() gives with the
    checkpoint's defaults (3 beams, max_length 10, eos 1), and not the greedy ones."""
    from click.testing import CliRunner

    from zoo.cli import cli

    ref, folder = marian_generation_config
    ids = [29, 22, 10, 1]
    result = CliRunner().invoke(cli, ["run", str(folder), "--ids", ",".join(map(str, ids)), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    want = ref.generate(torch.tensor([ids]))[0].tolist()
    assert data["output_ids"] == want and data["beams"] == 3 and len(want) == 10
    assert want != ref.generate(torch.tensor([ids]), num_beams=1)[0].tolist()
    # verify tells both sides every setting (greedy here), so it still compares like with like
    result = CliRunner().invoke(cli, ["verify", str(folder), "--device", "cpu"])
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------------------------- broken mappings


def _swap_q_k(conv: Converter) -> Converter:
    swap = {"linears.0": "linears.1", "linears.1": "linears.0"}

    def fix(m: Map) -> Map:
        if m.target and "encoder.layers" in m.target and ".self_attn.linears." in m.target:
            for a, b in swap.items():
                if a in m.target:
                    return Map(m.source, m.target.replace(a, b), m.transform)
        return m

    return Converter(**{**conv.__dict__, "name": "broken", "key_map": tuple(fix(m) for m in conv.key_map)})


def test_swapped_keys_are_caught(marian):
    ref, config, folder, _ = marian["opus-like"]
    broken = load_full(folder, device="cpu", converter=_swap_q_k(hf_marian.CONVERTER)).model
    x, mask = padded_batch()
    dec = torch.full((4, 3), PAD)
    with torch.no_grad():
        diff = (broken(x, dec, attention_mask=mask).logits - ref(input_ids=x, attention_mask=mask, decoder_input_ids=dec).logits).abs().max()
    assert diff > 1e-3


def test_missing_and_unknown_keys_are_named(marian):
    ref, config, _, _ = marian["opus-like"]
    config = get_catalog().converter("hf_marian").architecture_config(config)
    model = build_model(get_catalog().architecture("encoder_decoder"), config, "translation")
    state = dict(ref.state_dict())
    del state["model.decoder.layers.1.encoder_attn.v_proj.bias"]
    state["model.decoder.layers.0.mystery.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError) as err:
        convert(state, hf_marian.CONVERTER, model.state_dict())
    assert "decoder.layers.1.src_attn.linears.2.bias" in str(err.value)
    assert "model.decoder.layers.0.mystery.weight" in str(err.value)


# ---------------------------------------------------------------------------------- bad input / config


BAD_INPUTS = {
    "1-D ids": lambda m, x, a: m.generate(x[0]),
    "id out of vocab": lambda m, x, a: m.generate(x + 100),
    "negative id": lambda m, x, a: m.generate(x - 100),
    "empty": lambda m, x, a: m.generate(x[:, :0]),
    "too long": lambda m, x, a: m.generate(torch.ones(1, 65, dtype=torch.long)),
    "mask shape": lambda m, x, a: m.generate(x, attention_mask=a[:, :3]),
    "all masked": lambda m, x, a: m.generate(x, attention_mask=torch.zeros_like(a)),
    "max_new_tokens 0": lambda m, x, a: m.generate(x, max_new_tokens=0),
    "max_new_tokens too many": lambda m, x, a: m.generate(x, max_new_tokens=64),
    "num_beams 0": lambda m, x, a: m.generate(x, num_beams=0),
    "float ids": lambda m, x, a: m(x.float(), x),
    "batch mismatch": lambda m, x, a: m(x, x[:2]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_input_error(marian, case):
    model = marian["opus-like"][3]
    x, mask = padded_batch()
    with pytest.raises(InputError):
        BAD_INPUTS[case](model, x, mask)


BAD_CONFIGS = {
    "activation": {**COMMON, **MARIAN["opus-like"], "activation_function": "mish"},
    "layerdrop": {**COMMON, **MARIAN["opus-like"], "decoder_layerdrop": 0.1},
    "shared untied, two sizes": {**COMMON, **MARIAN["opus-like"], "tie_word_embeddings": False, "decoder_vocab_size": 50},
    "heads": {**COMMON, **MARIAN["opus-like"], "encoder_attention_heads": 5},
    "multi-token bad words": {**COMMON, **MARIAN["opus-like"], "bad_words_ids": [[3, 4]]},
    "unknown native field": {"model_type": "annotated-transformer", "src_vocab": 10, "tgt_vocab": 10, "nheads": 4},
    "norm placement": {"model_type": "annotated-transformer", "norm_placement": "sandwich"},
}


def test_annotated_config_takes_generation_config_fields():
    """The loader merges generation_config.json into every config: an Annotated Transformer
    config uses the decoding defaults it has (max_length, bad words) and skips the others."""
    cfg = get_catalog().converter("annotated").architecture_config({
        "model_type": "annotated-transformer", "src_vocab": 10, "tgt_vocab": 10, "N": 1, "d_model": 8, "h": 2,
        "d_ff": 16, "max_length": 12, "bad_words_ids": [[3]], "bos_token_id": 1, "do_sample": False, "top_p": 0.9,
    })
    assert cfg["max_new_tokens"] == 11  # max_length counts the decoder start token
    assert cfg["bad_words_ids"] == (3,)


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_unsupported_config_raises_config_error(case):
    with pytest.raises(ConfigError) as err:
        config = BAD_CONFIGS[case]
        conv = "hf_marian" if config.get("model_type") == "marian" else "annotated"
        EncoderDecoderConfig.from_dict(get_catalog().converter(conv).architecture_config(config))
    assert str(err.value)


# ---------------------------------------------------------------------------------- Marian layouts


# The four layouts of the token tables (share_encoder_decoder_embeddings x tie_word_embeddings),
# each with its own vocabulary sizes, activation and embedding scale.
LAYOUTS = {
    "shared-tied": dict(vocab_size=60, activation_function="swish", scale_embedding=True),
    "shared-untied": dict(vocab_size=60, tie_word_embeddings=False, activation_function="relu", scale_embedding=False),
    "separate-tied": dict(vocab_size=60, decoder_vocab_size=52, share_encoder_decoder_embeddings=False,
                          activation_function="gelu_new", scale_embedding=True),
    "separate-untied": dict(vocab_size=44, decoder_vocab_size=60, share_encoder_decoder_embeddings=False,
                            tie_word_embeddings=False, activation_function="gelu", scale_embedding=False),
}
# the token tables and output projection zoo builds for each
ZOO_TABLES = {
    "shared-tied": {"shared.lut.weight"},
    "shared-untied": {"src_embed.lut.weight", "tgt_embed.lut.weight", "generator.proj.weight"},
    "separate-tied": {"src_embed.lut.weight", "tgt_embed.lut.weight"},
    "separate-untied": {"src_embed.lut.weight", "tgt_embed.lut.weight", "generator.proj.weight"},
}
POSITIONS = {"model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight"}
# what the Hub layout (every key of the state dict) holds and zoo drops, besides the sinusoids
DROPPED = {
    "shared-tied": {"model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"},
    "shared-untied": {"model.shared.weight"},  # no forward reads it once the config unties it
    "separate-tied": {"lm_head.weight"},
    "separate-untied": set(),
}
TABLES = ("shared.weight", "embed_tokens.weight", "lm_head.weight")
# seeds whose random models end some hypotheses early and make beam search differ from greedy
LAYOUT_SEEDS = {"shared-tied": 6, "shared-untied": 3, "separate-tied": 10, "separate-untied": 4}


def layout_config(layout, **over):
    """A tiny Marian config in ``layout``; pad (also the decoder start and the banned token)
    is the last id both vocabularies have."""
    config = {**COMMON, **MARIAN["opus-like"], **LAYOUTS[layout], **over}
    pad = min(config["vocab_size"], config.get("decoder_vocab_size") or config["vocab_size"]) - 1
    config.update(pad_token_id=pad, decoder_start_token_id=pad, bad_words_ids=[[pad]])
    return config


def layout_reference(layout, seed=None, **over):
    """A random MarianMTModel in ``layout`` whose decoding is not trivial (spread-out tables and
    output bias, eos likely enough that some hypotheses end early)."""
    seed = LAYOUT_SEEDS[layout] if seed is None else seed
    torch.manual_seed(seed)
    config = layout_config(layout, **over)
    ref = hf_marian.reference(config, "translation").eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():  # a tied table once
            if name.endswith(TABLES):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        ref.final_logits_bias.copy_(torch.randn(ref.final_logits_bias.shape, generator=g) * 0.5)
        ref.final_logits_bias[0, 0] += 2.0
        for module in ref.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0, 0.2)
    return ref, config


def layout_batch(config, seed=1):
    """Padded source ids over the whole source vocabulary, and target ids over the whole target
    vocabulary starting with the decoder start token."""
    g = torch.Generator().manual_seed(seed)
    pad = config["pad_token_id"]
    src_vocab, tgt_vocab = config["vocab_size"], config.get("decoder_vocab_size") or config["vocab_size"]
    x = torch.randint(1, src_vocab, (4, 7), generator=g)
    x[x == pad] = 1
    mask = torch.ones_like(x)
    for row, length in ((2, 4), (3, 2)):
        x[row, length:] = pad
        mask[row, length:] = 0
    dec = torch.randint(1, tgt_vocab, (4, 6), generator=g)
    dec[:, 0] = pad
    return x, mask, dec


def assert_same_outputs(model, ref, config):
    assert_same_forward(model, ref, *layout_batch(config))


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return saved_and_loaded(LAYOUTS, layout_reference, tmp_path_factory)


@pytest.mark.parametrize("files", ["save_pretrained", "hub"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_marian_layout_parity_and_accounting(layout, files, tmp_path):
    from transformers import MarianConfig

    from zoo.checkpoint import read_safetensors
    from zoo.plugins.encoder_decoder import parameter_count

    ref, config = layout_reference(layout)
    folder = write_layout(ref, config, tmp_path, files)
    loaded = load_full(folder, device="cpu")
    assert_same_outputs(loaded.model, ref, config)
    # strict accounting: every key of the file loaded or dropped by its named rule
    source = set(read_safetensors(folder / "model.safetensors"))
    report, state = loaded.report, loaded.model.state_dict()
    assert set(report.consumed) | set(report.dropped) == source
    assert set(report.consumed.values()) == set(state)
    assert set(report.dropped) == (DROPPED[layout] | POSITIONS) & source
    assert all(report.dropped.values())
    if files == "hub":
        assert set(report.dropped) == DROPPED[layout] | POSITIONS
    tables = {k for k in state if k.endswith(("lut.weight", "proj.weight"))}
    assert tables == ZOO_TABLES[layout]
    # sizes: the source table has vocab_size rows; the target tables and the output, V_tgt
    cfg = MarianConfig(**config)
    tgt = cfg.vocab_size if cfg.share_encoder_decoder_embeddings else cfg.decoder_vocab_size
    assert loaded.model.generator.final_logits_bias.shape == (1, tgt)
    assert loaded.model.head()[0].shape == (tgt, cfg.d_model)
    # the exact parameter count: transformers' parameters less its sinusoid tables (and the
    # model.shared table an untied config leaves unused)
    n = sum(p.numel() for p in loaded.model.parameters())
    assert parameter_count(loaded.arch_config) == n
    unused = POSITIONS | ({"model.shared.weight"} if layout == "shared-untied" else set())
    assert n == sum(p.numel() for name, p in ref.named_parameters() if name not in unused)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_marian_layout_generate_ids_identical(layouts, layout):
    ref, config, _, model = layouts[layout]
    x, mask, _ = layout_batch(config)
    for beams in (1, 3):
        want = ref.generate(x, attention_mask=mask, num_beams=beams, max_new_tokens=12)
        got = model.generate(x, attention_mask=mask, num_beams=beams, max_new_tokens=12)
        assert got.tolist() == want.tolist(), (beams, got.tolist(), want.tolist())
    for row in range(2):  # batch 1: greedy through the screen of the head
        ids = x[row : row + 1, : int(mask[row].sum())]
        assert model.generate(ids, max_new_tokens=12).tolist() == ref.generate(ids, max_new_tokens=12).tolist()


def test_marian_layout_generation_is_not_vacuous(layouts):
    """In every layout, some hypotheses end early (rows padded) and beam search chooses
    differently from greedy: the identity checks above exercise both."""
    for layout in LAYOUTS:
        _, config, _, model = layouts[layout]
        x, mask, _ = layout_batch(config)
        greedy = model.generate(x, attention_mask=mask, max_new_tokens=12)
        beam = model.generate(x, attention_mask=mask, max_new_tokens=12, num_beams=3)
        assert greedy.tolist() != beam.tolist()
        assert (greedy == config["pad_token_id"])[:, 1:].any() or (beam == config["pad_token_id"])[:, 1:].any()


def _marian_activations():
    from transformers.activations import ACT2CLS

    from zoo.activations import ACTIVATIONS

    return sorted(set(ACTIVATIONS) & set(ACT2CLS))


def test_every_zoo_activation_is_a_transformers_name():
    from transformers.activations import ACT2CLS

    from zoo.activations import ACTIVATIONS

    assert set(ACTIVATIONS) <= set(ACT2CLS)
    assert {"gelu", "gelu_new", "relu", "swish", "silu"} <= set(ACTIVATIONS)


@pytest.mark.parametrize("activation", _marian_activations())
def test_marian_activation_and_embedding_scale(activation, tmp_path):
    """Each activation zoo implements, in turn with scaled and unscaled embeddings and in
    each layout of the tables."""
    i = _marian_activations().index(activation)
    layout = list(LAYOUTS)[i % len(LAYOUTS)]
    ref, config = layout_reference(layout, activation_function=activation, scale_embedding=bool(i % 2))
    loaded = load_full(write_layout(ref, config, tmp_path, "save_pretrained"), device="cpu")
    assert loaded.model.config.activation == activation
    assert loaded.model.config.scale_embedding == bool(i % 2)
    assert_same_outputs(loaded.model, ref, config)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_marian_layout_config_translation(layout):
    from zoo import testing

    config = layout_config(layout)
    arch = testing.check_config_translation(hf_marian.CONVERTER, config)
    shared = config.get("share_encoder_decoder_embeddings", True)
    tied = config.get("tie_word_embeddings", True)
    assert (arch["share_embeddings"], arch["tie_output"], arch["final_logits_bias"]) == (shared and tied, tied, True)
    assert arch["src_vocab_size"] == config["vocab_size"]
    assert arch["tgt_vocab_size"] == (config["vocab_size"] if shared else config["decoder_vocab_size"])
    back = hf_marian.from_architecture(arch)
    # separate tables of one size go back as separate vocabularies: the same weights, none unused
    assert back["share_encoder_decoder_embeddings"] == (shared and tied)
    assert back["tie_word_embeddings"] == tied


def test_a_shared_table_with_its_own_output_is_no_marian_model():
    arch = hf_marian.to_architecture(layout_config("shared-tied"))
    with pytest.raises(ConfigError, match="tie_output"):
        hf_marian.from_architecture({**arch, "tie_output": False})


def test_shared_decoder_vocab_size_is_ignored_as_transformers_does(tmp_path):
    """Shared and tied, MarianMTModel builds every table with vocab_size rows, whatever
    decoder_vocab_size says."""
    ref, config = layout_reference("shared-tied", decoder_vocab_size=50)
    assert ref.lm_head.weight.shape[0] == 60
    loaded = load_full(write_layout(ref, config, tmp_path, "save_pretrained"), device="cpu")
    assert loaded.model.config.tgt_vocab_size == 60
    assert_same_outputs(loaded.model, ref, config)


@pytest.mark.parametrize("files", ["save_pretrained", "hub"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_marian_layout_export_loads_in_transformers(layout, files, tmp_path):
    """``zoo convert --to hf`` of each layout: MarianMTModel loads every weight it computes
    with from the export (nothing left to random initialization) and gives the same outputs;
    so does zoo."""
    from transformers import MarianMTModel

    from zoo.export import convert_checkpoint

    ref, config = layout_reference(layout)
    folder = write_layout(ref, config, tmp_path / "source", files)
    convert_checkpoint(str(folder), "hf", tmp_path / "out")
    theirs, info = MarianMTModel.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert not set(info["missing_keys"]) - POSITIONS and not info["unexpected_keys"], info
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["tie_word_embeddings"] == config.get("tie_word_embeddings", True)
    x, mask, dec = layout_batch(config)
    with torch.no_grad():
        want = ref(input_ids=x, attention_mask=mask, decoder_input_ids=dec).logits
        got = theirs.eval()(input_ids=x, attention_mask=mask, decoder_input_ids=dec).logits
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert_same_outputs(load_full(tmp_path / "out", device="cpu").model, ref, config)


def test_untied_shared_file_without_per_stack_tables_is_refused(tmp_path):
    """Untied, MarianMTModel reads model.{encoder,decoder}.embed_tokens: a file holding only
    model.shared.weight and lm_head.weight (as transformers 4 saved such models) would leave
    them to random initialization in transformers 5. zoo refuses it, naming them."""
    ref, config = layout_reference("shared-untied")
    state = {k: v.clone() for k, v in ref.state_dict().items()
             if k not in {"model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"}}
    save_safetensors(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError) as err:
        load_full(tmp_path, device="cpu")
    assert "model.encoder.embed_tokens.weight" in str(err.value)
    assert "model.decoder.embed_tokens.weight" in str(err.value)


def _retarget(conv: Converter, swap) -> Converter:
    """``conv`` with the targets of two source keys exchanged."""
    (a, b), rules = swap, {m.source: m for m in conv.key_map}
    key_map = tuple(
        dataclasses.replace(m, target=rules[b].target) if m.source == a
        else dataclasses.replace(m, target=rules[a].target) if m.source == b else m
        for m in conv.key_map
    )
    return dataclasses.replace(conv, name="broken", key_map=key_map)


@pytest.mark.parametrize("layout, swap", [
    ("shared-untied", ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")),
    ("separate-untied", ("model.decoder.embed_tokens.weight", "lm_head.weight")),
], ids=["encoder-decoder tables", "decoder table-output"])
def test_swapped_tables_of_one_shape_are_caught_by_verify(layout, swap, tmp_path):
    from zoo.verification import verify

    ref, config = layout_reference(layout)
    folder = write_layout(ref, config, tmp_path, "hub")
    assert verify(str(folder), device="cpu").passed
    report = verify(str(folder), device="cpu", converter=_retarget(hf_marian.CONVERTER, swap))
    assert not report.passed and report.first_divergence


def test_swapped_tables_of_two_vocabularies_are_named(tmp_path):
    ref, config = layout_reference("separate-tied")
    folder = write_layout(ref, config, tmp_path, "hub")
    broken = _retarget(hf_marian.CONVERTER, ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"))
    with pytest.raises(ConversionError) as err:
        load_full(folder, device="cpu", converter=broken)
    assert "model.encoder.embed_tokens.weight: checkpoint [60, 32]" in str(err.value)


# the config.json fields the newer OPUS configs carry, each set to the value that would mean
# something else than MarianMTModel's post-norm, sinusoidal model if it were read
IGNORED = {"normalize_before": True, "normalize_embedding": True, "add_final_layer_norm": True,
           "static_position_embeddings": False, "extra_pos_embeddings": 7, "add_bias_logits": True,
           "scale_attention_softmax": True}


def test_ignored_fields_are_those_marian_never_reads():
    """Every field the converter declares ignored is named nowhere in transformers' Marian model
    and config code (so MarianMTModel cannot read it); the fields the newer OPUS configs carry
    are all declared."""
    import transformers.models.marian.configuration_marian as configuration
    import transformers.models.marian.modeling_marian as modeling

    source = Path(modeling.__file__).read_text() + Path(configuration.__file__).read_text()
    assert set(IGNORED) == set(hf_marian.CONVERTER.ignored_fields)
    for field, why in hf_marian.CONVERTER.ignored_fields.items():
        assert field not in source, field
        assert why and field not in hf_marian.CONVERTER.config_fields


@pytest.mark.parametrize("layout", ["shared-tied", "separate-untied"])
def test_ignored_fields_load_as_transformers_loads_them(layout, tmp_path):
    ref, config = layout_reference(layout, **IGNORED)
    folder = write_layout(ref, config, tmp_path, "save_pretrained")
    assert json.loads((folder / "config.json").read_text())["normalize_before"] is True
    loaded = load_full(folder, device="cpu")
    cfg = loaded.model.config
    assert (cfg.norm_placement, cfg.final_norms, cfg.sinusoid_layout) == ("post", False, "halves")
    assert_same_outputs(loaded.model, ref, config)


def test_marian_attribute_aliases_set_their_fields():
    """MarianConfig's attribute_map: num_hidden_layers, hidden_size and num_attention_heads set
    encoder_layers, d_model and encoder_attention_heads, over those fields' own values."""
    from transformers import MarianConfig

    config = {**layout_config("shared-tied"), "num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2}
    arch = hf_marian.to_architecture(config)
    theirs = MarianConfig(**config)
    assert (arch["encoder_layers"], arch["d_model"], arch["encoder_heads"]) == (
        theirs.encoder_layers, theirs.d_model, theirs.encoder_attention_heads) == (1, 16, 2)


@pytest.mark.parametrize("config, field", [
    (BAD_CONFIGS["activation"], "activation_function='mish'"),
    (BAD_CONFIGS["layerdrop"], "decoder_layerdrop=0.1"),
    (BAD_CONFIGS["shared untied, two sizes"], "decoder_vocab_size=50"),
], ids=["activation", "layerdrop", "decoder_vocab_size"])
def test_refusals_name_the_config_json_field(config, field):
    with pytest.raises(ConfigError) as err:
        hf_marian.to_architecture(config)
    assert field in str(err.value) and "\n" not in str(err.value)


MARIAN_ENTRIES = [e for e in get_catalog().list() if e.converter == "hf_marian"]


@pytest.mark.parametrize("entry", MARIAN_ENTRIES, ids=[e.name for e in MARIAN_ENTRIES])
def test_marian_entry_params_are_transformers_count(entry):
    """The catalog's params, against MarianMTModel built (on the meta device) from the entry's
    config: its parameters less the sinusoid tables zoo computes."""
    from transformers import MarianConfig, MarianMTModel

    with torch.device("meta"):
        ref = MarianMTModel(MarianConfig(**entry.config))
    assert entry.params == sum(p.numel() for name, p in ref.named_parameters() if name not in POSITIONS)


# ---------------------------------------------------------------------------------- registry


ENTRIES = [e for e in get_catalog().list() if e.architecture == "encoder_decoder"]


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_registry_entry_builds_with_exact_param_count(entry):
    config = get_catalog().converter(entry.converter).architecture_config(entry.config)
    model = build_model(get_catalog().architecture(entry.architecture), config, entry.task)
    assert next(model.parameters()).is_meta
    assert sum(p.numel() for p in model.parameters()) == entry.params
    if entry.converter == "hf_marian":  # the config values also build the reference class
        from transformers import MarianConfig

        ref = MarianConfig(**entry.config)
        assert (ref.vocab_size, ref.d_model, ref.pad_token_id) == (
            model.config.src_vocab_size, model.config.d_model, model.config.pad_token_id)


def test_catalog_has_the_family():
    names = {e.name for e in ENTRIES}
    assert {"opus-mt-en-de", "opus-mt-de-en", "opus-mt-en-fr", "opus-mt-fr-en", "opus-mt-tc-big-en-fr",
            "transformer-base"} <= names
    assert get_catalog().get("Helsinki-NLP/opus-mt-en-de").name == "opus-mt-en-de"


def test_transformer_base_fresh_initialization():
    loaded = load_full("transformer-base", device="cpu", config_overrides={"src_vocab": 100, "tgt_vocab": 120})
    model = loaded.model
    cfg = model.config
    assert (cfg.encoder_layers, cfg.decoder_layers, cfg.d_model, cfg.encoder_ffn_dim, cfg.encoder_heads) == (6, 6, 512, 2048, 8)
    assert loaded.files == [] and not any(p.is_meta for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # ready to train
    for name, p in model.named_parameters():
        if p.dim() > 1:  # xavier-uniform, as make_model
            bound = math.sqrt(6.0 / (p.shape[0] + p.shape[1]))
            assert p.abs().max() <= bound, name
            assert abs(p.std().item() - bound / math.sqrt(3)) < 0.1 * bound, name
        elif name.endswith("a_2"):
            assert torch.equal(p, torch.ones_like(p))
    src = torch.randint(0, 100, (2, 5))
    tgt = torch.randint(0, 120, (2, 4))
    with torch.no_grad():
        logp = model(src, tgt).logits
    assert logp.shape == (2, 4, 120)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2, 4))  # log-probabilities


# ---------------------------------------------------------------------------------- the Annotated Transformer numerics


def test_layer_norm_unbiased_std_formula():
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    ln = LayerNorm(16, 1e-6, "unbiased_std").double()
    with torch.no_grad():
        ln.a_2.normal_()
        ln.b_2.normal_()
    n = x.shape[-1]
    mean = x.sum(-1, keepdim=True) / n
    std = (((x - mean) ** 2).sum(-1, keepdim=True) / (n - 1)).sqrt()  # unbiased
    want = ln.a_2 * (x - mean) / (std + 1e-6) + ln.b_2
    torch.testing.assert_close(ln(x), want)
    torch_ln = LayerNorm(16, 1e-6, "torch").double()
    torch_ln.load_state_dict(ln.state_dict())
    assert (torch_ln(x) - ln(x)).abs().max() > 1e-3  # the two formulas really differ


def test_sinusoid_layouts():
    d, n = 10, 7
    table = sinusoids(n, d, "interleaved")
    for pos in range(n):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

    marian = MarianSinusoidalPositionalEmbedding(n, d).create_weight()
    assert torch.equal(sinusoids(n, d, "halves"), marian)


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_sublayer_connection_residuals(placement):
    cfg = EncoderDecoderConfig(d_model=8, norm_placement=placement, dropout=0.0)
    sub = SublayerConnection(cfg)
    x = torch.randn(2, 3, 8)
    f = torch.nn.Linear(8, 8)
    want = x + f(sub.norm(x)) if placement == "pre" else sub.norm(x + f(x))
    torch.testing.assert_close(sub(x, f), want)


def annotated_state_dict(src_vocab=23, tgt_vocab=19, n=2, d=32, d_ff=40, max_len=50, seed=0):
    """A state dict in the naming of the Annotated Transformer's make_model, written out here
    from its module tree (not from zoo's key map). ``pe`` buffers hold its float32 formula."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    sd = {}

    def attention(prefix):
        for i in range(4):
            sd[f"{prefix}.linears.{i}.weight"] = r(d, d)
            sd[f"{prefix}.linears.{i}.bias"] = r(d, scale=0.1)

    def layer(prefix, n_sub):
        sd[f"{prefix}.feed_forward.w_1.weight"] = r(d_ff, d)
        sd[f"{prefix}.feed_forward.w_1.bias"] = r(d_ff, scale=0.1)
        sd[f"{prefix}.feed_forward.w_2.weight"] = r(d, d_ff)
        sd[f"{prefix}.feed_forward.w_2.bias"] = r(d, scale=0.1)
        for s in range(n_sub):
            sd[f"{prefix}.sublayer.{s}.norm.a_2"] = 1 + r(d, scale=0.1)
            sd[f"{prefix}.sublayer.{s}.norm.b_2"] = r(d, scale=0.1)

    for i in range(n):
        attention(f"encoder.layers.{i}.self_attn")
        layer(f"encoder.layers.{i}", 2)
        attention(f"decoder.layers.{i}.self_attn")
        attention(f"decoder.layers.{i}.src_attn")
        layer(f"decoder.layers.{i}", 3)
    for stack in ("encoder", "decoder"):
        sd[f"{stack}.norm.a_2"] = 1 + r(d, scale=0.1)
        sd[f"{stack}.norm.b_2"] = r(d, scale=0.1)
    pe = torch.zeros(max_len, d)
    position = torch.arange(0, max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d, 2) * -(math.log(10000.0) / d))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    sd["src_embed.0.lut.weight"] = r(src_vocab, d)
    sd["src_embed.1.pe"] = pe.unsqueeze(0)
    sd["tgt_embed.0.lut.weight"] = r(tgt_vocab, d)
    sd["tgt_embed.1.pe"] = pe.unsqueeze(0).clone()
    sd["generator.proj.weight"] = r(tgt_vocab, d)
    sd["generator.proj.bias"] = r(tgt_vocab, scale=0.1)
    return sd


def annotated_log_probs(sd, src, tgt, src_mask, h):
    """The Annotated Transformer's forward pass, stated directly from its formulas: pre-norm
    sublayers x + sublayer(LN(x)) with LN = a_2 (x - mean) / (std + 1e-6) + b_2 (unbiased std),
    masked_fill(-1e9) softmax attention, ReLU feed-forward, final stack norms, embeddings
    scaled by sqrt(d_model) plus its stored ``pe`` table, log_softmax generator."""
    d = sd["src_embed.0.lut.weight"].shape[1]

    def ln(x, p):
        return sd[p + ".a_2"] * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-6) + sd[p + ".b_2"]

    def lin(x, p):
        return x @ sd[p + ".weight"].T + sd[p + ".bias"]

    def mha(q_in, kv_in, p, mask):
        B, dk = q_in.shape[0], d // h
        q, k, v = (lin(t, f"{p}.linears.{i}").view(B, -1, h, dk).transpose(1, 2) for i, t in enumerate((q_in, kv_in, kv_in)))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(dk)
        scores = scores.masked_fill(mask.unsqueeze(1) == 0, -1e9)
        return lin((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, -1, d), f"{p}.linears.3")

    def ff(x, p):
        return lin(F.relu(lin(x, p + ".w_1")), p + ".w_2")

    def embed(ids, p):
        return sd[p + ".0.lut.weight"][ids] * math.sqrt(d) + sd[p + ".1.pe"][:, : ids.shape[1]]

    n_layers = len({k.split(".")[2] for k in sd if k.startswith("encoder.layers.")})
    x = embed(src, "src_embed")
    for i in range(n_layers):
        p = f"encoder.layers.{i}"
        x = x + mha(ln(x, p + ".sublayer.0.norm"), ln(x, p + ".sublayer.0.norm"), p + ".self_attn", src_mask)
        x = x + ff(ln(x, p + ".sublayer.1.norm"), p + ".feed_forward")
    memory = ln(x, "encoder.norm")
    T = tgt.shape[1]
    tgt_mask = torch.tril(torch.ones(1, T, T, dtype=torch.bool))  # subsequent_mask
    y = embed(tgt, "tgt_embed")
    for i in range(n_layers):
        p = f"decoder.layers.{i}"
        z = ln(y, p + ".sublayer.0.norm")
        y = y + mha(z, z, p + ".self_attn", tgt_mask)
        y = y + mha(ln(y, p + ".sublayer.1.norm"), memory, p + ".src_attn", src_mask)
        y = y + ff(ln(y, p + ".sublayer.2.norm"), p + ".feed_forward")
    y = ln(y, "decoder.norm")
    return F.log_softmax(lin(y, "generator.proj"), dim=-1)


@pytest.fixture(scope="module")
def annotated_files(tmp_path_factory):
    sd = annotated_state_dict()
    root = tmp_path_factory.mktemp("annotated")
    save_safetensors(sd, root / "weights.safetensors")
    (root / "folder").mkdir()
    save_safetensors(sd, root / "folder" / "model.safetensors")
    return sd, root


@pytest.mark.parametrize("where", ["file", "folder"])
def test_annotated_checkpoint_matches_its_formulas(annotated_files, where):
    sd, root = annotated_files
    path = root / "weights.safetensors" if where == "file" else root / "folder"
    digest = hashlib.sha256(Path(path if where == "file" else path / "model.safetensors").read_bytes()).hexdigest()
    loaded = load_full(str(path), device="cpu", config_overrides={"heads": 4})
    model = loaded.model
    assert loaded.converter.name == "annotated" and loaded.task == "translation"
    cfg = model.config
    assert (cfg.encoder_layers, cfg.d_model, cfg.encoder_ffn_dim, cfg.src_vocab_size, cfg.tgt_vocab_size, cfg.encoder_heads) == (2, 32, 40, 23, 19, 4)
    src = torch.randint(0, 23, (3, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    tgt = torch.randint(0, 19, (3, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = model(src, tgt, attention_mask=mask).logits
    want = annotated_log_probs(sd, src, tgt, mask[:, None, :], h=4)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)  # 1e-4: the stored float32 pe vs zoo's float64-rounded table
    # the head count is not in the weights: the default (8, make_model's) gives other numbers
    default = zoo.load(str(path), device="cpu")
    assert default.config.encoder_heads == 8
    with torch.no_grad():
        assert (default(src, tgt, attention_mask=mask).logits - want).abs().max() > 1e-3
    assert hashlib.sha256(Path(path if where == "file" else path / "model.safetensors").read_bytes()).hexdigest() == digest


def test_annotated_state_dict_round_trip(annotated_files):
    sd, root = annotated_files
    model = zoo.load(str(root / "weights.safetensors"), device="cpu", heads=4)
    back = export(model.state_dict(), annotated.CONVERTER)
    assert set(back) == {k for k in sd if not k.endswith(".pe")}
    for key, tensor in back.items():
        assert torch.equal(tensor, sd[key]), key


def test_unrecognised_checkpoint_without_config(tmp_path):
    sd = annotated_state_dict()
    sd["encoder.extra.weight"] = torch.zeros(2)
    save_safetensors(sd, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError):
        zoo.load(str(tmp_path / "x.safetensors"), device="cpu")


def test_cached_decoding_matches_teacher_forcing(annotated_files):
    """Greedy ids from the KV-cached decoder equal the argmax of a full forward pass over the
    same prefix at every step (pre-norm model, no transformers reference)."""
    sd, root = annotated_files
    model = zoo.load(str(root / "weights.safetensors"), device="cpu", heads=4)
    src = torch.randint(0, 23, (3, 8), generator=torch.Generator().manual_seed(5))
    out = model.generate(src, max_new_tokens=10)
    assert out.shape == (3, 11)  # no eos configured: runs the full length
    with torch.no_grad():
        scores = model(src, out[:, :-1]).logits
    assert torch.equal(scores.argmax(-1), out[:, 1:])


def test_kv_cache_reorder_reuses_its_buffers():
    cfg = EncoderDecoderConfig(d_model=8, decoder_layers=2, decoder_heads=2)
    cache = KVCache(cfg, batch=3, max_len=5, device="cpu", dtype=torch.float32)
    cache.update(0, torch.arange(3.0).view(3, 1, 1, 1).expand(3, 2, 1, 4), torch.zeros(3, 2, 1, 4))
    cache.length = 1
    ptrs = set()
    for _ in range(3):
        cache.reorder(torch.tensor([2, 2, 0]))
        ptrs.add(cache.k.data_ptr())
    assert len(ptrs) == 2  # two preallocated buffers, swapped; nothing new per step
    assert cache.k[0, :, 0, 0, 0].tolist() == [2.0, 2.0, 0.0]  # [0,1,2] -> [2,2,0] -> [0,0,2] -> [2,2,0]


# ---------------------------------------------------------------------------------- training


def test_copy_task_is_learned():
    """The classic copy task (the Annotated Transformer's first example): random integer
    sequences starting with the start token 1; a 1-layer model built fresh through the
    ``transformer-base`` entry learns to copy, and greedy decoding reproduces held-out
    sequences."""
    V, T = 10, 8
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster than two on this machine
    try:
        torch.manual_seed(0)
        model = zoo.load(
            "transformer-base", device="cpu", N=1, d_model=32, d_ff=64, heads=4, src_vocab=V, tgt_vocab=V,
            dropout=0.0, decoder_start_token_id=1,
        ).train()
        g = torch.Generator().manual_seed(1)

        def batch(n):
            x = torch.randint(2, V, (n, T), generator=g)
            x[:, 0] = 1
            return x

        held_out = batch(50)
        before = (model.generate(held_out, max_new_tokens=T - 1)[:, 1:] == held_out[:, 1:]).float().mean()
        opt = torch.optim.Adam(model.parameters(), lr=5e-3, betas=(0.9, 0.98))
        for _ in range(150):
            x = batch(64)
            logp = model(x, x[:, :-1]).logits  # teacher forcing: predict x[t + 1] from x[:t + 1]
            loss = F.nll_loss(logp.reshape(-1, V), x[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        out = model.generate(held_out, max_new_tokens=T - 1)
    finally:
        torch.set_num_threads(threads)
    accuracy = (out[:, 1:] == held_out[:, 1:]).float().mean()
    assert before < 0.5 and accuracy > 0.95, (float(before), float(accuracy))
    assert (out == held_out).all(dim=1).float().mean() > 0.8  # whole sequences copied


# ---------------------------------------------------------------------------------- zoo run translation


def _write_marian_tokenizer(folder: Path, vocab_size=60):
    """A tiny sentencepiece model with a Marian vocab.json (</s>=0, <unk>=1, <pad>=last)."""
    import sentencepiece as spm
    from transformers import MarianTokenizer

    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(["the house is wonderful", "the cat sat on the mat", "a wonderful day"] * 20))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "sp"), vocab_size=25, model_type="unigram", bos_id=-1,
        eos_id=2, unk_id=1, pad_id=-1, hard_vocab_limit=False, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(folder / "sp.model"))
    vocab = {"</s>": 0, "<unk>": 1}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    while len(vocab) < vocab_size - 1:
        vocab[f"<extra{len(vocab)}>"] = len(vocab)
    vocab["<pad>"] = vocab_size - 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tok = MarianTokenizer(str(folder / "sp.model"), str(folder / "sp.model"), str(folder / "vocab.json"))
    for leftover in ("corpus.txt", "sp.model", "sp.vocab", "vocab.json"):
        (folder / leftover).unlink()
    tok.save_pretrained(str(folder))
    return tok


@pytest.mark.parametrize("beams", [1, 3])
def test_translation_runner_with_ids(marian, beams):
    from zoo.tasks.translation import run

    ref, _, folder, _ = marian["opus-like"]
    loaded = load_full(folder, device="cpu")
    shown = []
    ids = [5, 17, 3, 0]
    result = run(loaded, [], RunOptions(ids=ids, max_new_tokens=8, beams=beams), shown.append)
    want = ref.generate(torch.tensor([ids]), num_beams=beams, max_new_tokens=8)[0].tolist()
    assert result["output_ids"] == want
    assert "".join(shown).strip() == ",".join(map(str, want))
    with pytest.raises(InputError):  # no tokenizer files and no --ids
        run(loaded, ["The house is wonderful."], RunOptions(), shown.append)


@pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")
def test_translation_runner_uses_the_sentencepiece_tokenizer(tmp_path):
    from zoo.tasks.translation import run

    ref, config = marian_reference("opus-like")
    folder = write_layout(ref, config, tmp_path / "ckpt", "save_pretrained")
    tok = _write_marian_tokenizer(folder)
    loaded = load_full(folder, device="cpu")
    shown = []
    result = run(loaded, ["The house is", "wonderful."], RunOptions(max_new_tokens=6, beams=2), shown.append)
    src = tok("The house is wonderful.", return_tensors="pt")
    want = ref.generate(**src, num_beams=2, max_new_tokens=6)[0]
    assert result["input_ids"] == src["input_ids"][0].tolist()
    assert result["output_ids"] == want.tolist()
    assert result["text"] == tok.decode(want, skip_special_tokens=True)
    assert "".join(shown) == result["text"] + "\n"


@pytest.mark.parametrize("left", [False, True], ids=["screened", "every other step left"])
@pytest.mark.parametrize("name", list(MARIAN))
def test_marian_batch_1_greedy_through_the_screen_of_the_head(name, left, tmp_path, monkeypatch):
    # at batch 1, greedy takes its token from zoo.accel.argmax's bfloat16 screen of the tied head, with
    # final_logits_bias as one more column and the banned tokens excluded: the same ids. Left:
    # every other step goes to the plain path (bias, ban, renormalization), as the steps the
    # screen cannot tell do
    steps_left = leave_every_other_step(monkeypatch) if left else [0]
    ref, config = marian_reference(name)
    with torch.no_grad():
        ref.final_logits_bias.normal_(generator=torch.Generator().manual_seed(5))
        ref.final_logits_bias[0, PAD] += 20  # the padding token would win but for its ban (opus-like)
    model = load_full(write_layout(ref, config, tmp_path, "save_pretrained"), device="cpu").model
    monkeypatch.setattr(argmax, "BUILD_AT_TOKENS", 4)  # the screen is built for calls this long
    x, mask = padded_batch()
    for row in range(x.shape[0]):
        ids = x[row : row + 1, : int(mask[row].sum())]
        want = ref.generate(ids, num_beams=1, max_new_tokens=12)
        got = model.generate(ids, num_beams=1, max_new_tokens=12)
        assert got.tolist() == want.tolist()
    screen = argmax.screen_of(model)
    assert screen is not None and screen.calls > 0 and screen.bias is model.generator.final_logits_bias
    assert (steps_left[0] > 0) == left
    assert argmax.screen_of(copy.deepcopy(model)) is None
