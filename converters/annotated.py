"""Harvard NLP's *Annotated Transformer* (``make_model``) state dicts -> ``encoder_decoder``.

zoo's architecture uses the Annotated Transformer's own module names, so the key map is the
identity except for the embeddings, which ``make_model`` wraps in ``nn.Sequential(Embeddings,
PositionalEncoding)``::

    src_embed.0.lut.weight   ->  src_embed.lut.weight
    src_embed.1.pe           ->  dropped: the sinusoid table [1, max_len, d_model], computed in code
    tgt_embed.0.lut.weight   ->  tgt_embed.lut.weight
    tgt_embed.1.pe           ->  dropped

Such a checkpoint has no config.json: :func:`infer_config` reads the sizes off the tensors. The
head count cannot be read from weights (every head count gives the same [d_model, d_model]
projections); it defaults to ``make_model``'s ``h=8`` and is given with ``heads=``.

This module imports no torch at import time.
"""
import re

from zoo import Drop, Map, hookimpl
from zoo.errors import CheckpointError
from zoo.types import Converter


def _identity(*templates):
    return tuple(Map(t, t) for t in templates)


def _attention(prefix: str):
    return _identity(*(f"{prefix}.linears.{i}.{p}" for i in range(4) for p in ("weight", "bias")))


KEY_MAP = (
    *_attention("encoder.layers.{}.self_attn"),
    *_identity(
        "encoder.layers.{}.feed_forward.w_1.weight",
        "encoder.layers.{}.feed_forward.w_1.bias",
        "encoder.layers.{}.feed_forward.w_2.weight",
        "encoder.layers.{}.feed_forward.w_2.bias",
        "encoder.layers.{}.sublayer.{}.norm.a_2",
        "encoder.layers.{}.sublayer.{}.norm.b_2",
        "encoder.norm.a_2",
        "encoder.norm.b_2",
    ),
    *_attention("decoder.layers.{}.self_attn"),
    *_attention("decoder.layers.{}.src_attn"),
    *_identity(
        "decoder.layers.{}.feed_forward.w_1.weight",
        "decoder.layers.{}.feed_forward.w_1.bias",
        "decoder.layers.{}.feed_forward.w_2.weight",
        "decoder.layers.{}.feed_forward.w_2.bias",
        "decoder.layers.{}.sublayer.{}.norm.a_2",
        "decoder.layers.{}.sublayer.{}.norm.b_2",
        "decoder.norm.a_2",
        "decoder.norm.b_2",
        "generator.proj.weight",
        "generator.proj.bias",
    ),
    Map("src_embed.0.lut.weight", "src_embed.lut.weight"),
    Map("tgt_embed.0.lut.weight", "tgt_embed.lut.weight"),
    Drop("src_embed.1.pe", "sinusoid table; computed in code"),
    Drop("tgt_embed.1.pe", "sinusoid table; computed in code"),
)

MODEL_TYPE = "annotated-transformer"


def _count_layers(keys, stack: str) -> int:
    found = {int(m.group(1)) for k in keys for m in [re.match(rf"^{stack}\.layers\.(\d+)\.", k)] if m}
    if not found or found != set(range(len(found))):
        raise CheckpointError(f"annotated transformer: {stack} layers not numbered 0..N-1: {sorted(found)}")
    return len(found)


def infer_config(tensors, overrides):
    """Sizes from the tensors of a ``make_model`` state dict; ``overrides`` supplies ``heads``
    (default 8, as ``make_model``) and may set any other config field."""
    keys = list(tensors)
    n_enc, n_dec = _count_layers(keys, "encoder"), _count_layers(keys, "decoder")
    src_vocab, d_model = tensors["src_embed.0.lut.weight"].shape
    tgt_vocab = tensors["tgt_embed.0.lut.weight"].shape[0]
    d_ff = tensors["encoder.layers.0.feed_forward.w_1.weight"].shape[0]
    config = {
        "model_type": MODEL_TYPE,
        "src_vocab": int(src_vocab),
        "tgt_vocab": int(tgt_vocab),
        "d_model": int(d_model),
        "encoder_layers": n_enc,
        "decoder_layers": n_dec,
        "d_ff": int(d_ff),
        "heads": 8,
    }
    pe = tensors.get("src_embed.1.pe")
    if pe is not None:  # make_model's max_len (5000 by default) is the stored table's length
        config["max_positions"] = int(pe.shape[-2])
    config.update(overrides)
    return config


# make_model(src_vocab, tgt_vocab, N, d_model, d_ff, h, dropout)'s names -> the architecture's
# (one value of N, h or d_ff sets both stacks)
MAKE_MODEL_NAMES = {"src_vocab": ("src_vocab_size",), "tgt_vocab": ("tgt_vocab_size",),
                    "N": ("encoder_layers", "decoder_layers"), "layers": ("encoder_layers", "decoder_layers"),
                    "h": ("encoder_heads", "decoder_heads"), "heads": ("encoder_heads", "decoder_heads"),
                    "d_ff": ("encoder_ffn_dim", "decoder_ffn_dim"), "ffn_dim": ("encoder_ffn_dim", "decoder_ffn_dim")}
IGNORED = {"model_type", "architectures", "transformers_version", "dtype", "torch_dtype"}
# the dropout on attention probabilities: MultiHeadedAttention's default, which make_model keeps
MULTI_HEADED_ATTENTION_DROPOUT = 0.1


def to_architecture(config):
    """An Annotated Transformer config: the architecture's own field names, plus ``make_model``'s
    (``N``, ``h``/``heads``, ``d_ff``, ``src_vocab``, ``tgt_vocab``) and the decoding settings of
    a generation_config.json (``max_length`` counts the decoder start token; settings the
    architecture has no use for are skipped). Every architecture field comes out, defaults
    filled in; an unknown field is refused by the architecture.

    Dropout as ``make_model(..., dropout)`` applies it: ``dropout`` on the embeddings, on every
    sublayer's output and inside the feed-forward (``activation_dropout``); the attention
    probabilities get 0.1 whatever ``dropout`` says (``MultiHeadedAttention``'s default, which
    make_model does not override), unless ``attention_dropout`` is given."""
    from dataclasses import asdict

    from zoo.checkpoint import GENERATION_FIELDS
    from zoo.generation import default_new_tokens, single_tokens
    from zoo.plugins.encoder_decoder import EncoderDecoderConfig

    known = set(asdict(EncoderDecoderConfig()))
    values = {}
    for key, value in config.items():
        if key in IGNORED or (key in GENERATION_FIELDS and key not in known and key != "max_length"):
            continue
        if key == "max_length":
            if "max_new_tokens" not in config:
                values["max_new_tokens"] = default_new_tokens(config, start_length=1, fallback=64)
        elif key in MAKE_MODEL_NAMES:
            values.update(dict.fromkeys(MAKE_MODEL_NAMES[key], value))
        else:
            values[key] = value
    if "dropout" in config:  # make_model's rate is also the feed-forward's, after its activation
        values.setdefault("activation_dropout", config["dropout"])
    # make_model builds MultiHeadedAttention(h, d_model) without its rate: attention
    # probabilities always get that class's default, 0.1
    values.setdefault("attention_dropout", MULTI_HEADED_ATTENTION_DROPOUT)
    if "bad_words_ids" in values:  # single token ids, or generation_config.json's [[id], ...]
        values["bad_words_ids"] = single_tokens(values["bad_words_ids"])
    return asdict(EncoderDecoderConfig.from_dict(values))


def from_architecture(arch_config):
    """The architecture's own names are this format's: the config as it is."""
    return {"model_type": MODEL_TYPE, **arch_config, "bad_words_ids": list(arch_config.get("bad_words_ids", ()))}


CONVERTER = Converter(
    name="annotated",
    architecture="encoder_decoder",
    model_types=(MODEL_TYPE,),
    key_map=KEY_MAP,
    tasks={},
    infer_config="zoo.converters.annotated:infer_config",
    to_architecture="zoo.converters.annotated:to_architecture",
    from_architecture="zoo.converters.annotated:from_architecture",
    description="Harvard NLP Annotated Transformer make_model state dicts (no config.json)",
)


@hookimpl
def register_converters(register):
    register(CONVERTER)
