"""Hugging Face Marian (``Helsinki-NLP/opus-mt-*``) checkpoints -> zoo's ``encoder_decoder``.

Layouts read:

* what transformers 5.x ``save_pretrained`` writes for ``MarianMTModel``: ``model.shared.weight``,
  ``final_logits_bias`` [1, V] and the layers; no ``embed_tokens``/``embed_positions``/``lm_head``
  (ties and computed tables are not saved);
* the older files on the Hub (``pytorch_model.bin``, and safetensors converted from them), which
  also store the aliases of the shared table (``model.encoder.embed_tokens.weight``,
  ``model.decoder.embed_tokens.weight``, ``lm_head.weight``) and the sinusoid tables
  ``model.{encoder,decoder}.embed_positions.weight``: read, and dropped by the named rules below.

Every weight maps 1:1 (no tensor transform): Marian's ``q/k/v/out_proj`` are the Annotated
Transformer's ``linears.0..3``; its post-norm LayerNorms are the ``sublayer.N.norm`` of the
sublayer they follow.

This module imports no torch at import time.
"""
from zoo import Drop, Map, fields, hookimpl
from zoo.types import Converter

_PROJ = (("q_proj", 0), ("k_proj", 1), ("v_proj", 2), ("out_proj", 3))


def _attention(src: str, dst: str):
    return tuple(
        Map(f"{src}.{name}.{p}", f"{dst}.linears.{i}.{p}") for name, i in _PROJ for p in ("weight", "bias")
    )


def _norm(src: str, dst: str):
    return (Map(f"{src}.weight", f"{dst}.a_2"), Map(f"{src}.bias", f"{dst}.b_2"))


def _linear(src: str, dst: str):
    return (Map(f"{src}.weight", f"{dst}.weight"), Map(f"{src}.bias", f"{dst}.bias"))


E, D = "model.encoder.layers.{}", "model.decoder.layers.{}"
KEY_MAP = (
    Map("model.shared.weight", "src_embed.lut.weight"),  # one table: source, target and output
    Map("final_logits_bias", "generator.final_logits_bias"),
    # encoder layer: self-attention, then feed-forward (post-norm: each followed by its norm)
    *_attention(f"{E}.self_attn", "encoder.layers.{}.self_attn"),
    *_norm(f"{E}.self_attn_layer_norm", "encoder.layers.{}.sublayer.0.norm"),
    *_linear(f"{E}.fc1", "encoder.layers.{}.feed_forward.w_1"),
    *_linear(f"{E}.fc2", "encoder.layers.{}.feed_forward.w_2"),
    *_norm(f"{E}.final_layer_norm", "encoder.layers.{}.sublayer.1.norm"),
    # decoder layer: self-attention, cross-attention (encoder_attn = src_attn), feed-forward
    *_attention(f"{D}.self_attn", "decoder.layers.{}.self_attn"),
    *_norm(f"{D}.self_attn_layer_norm", "decoder.layers.{}.sublayer.0.norm"),
    *_attention(f"{D}.encoder_attn", "decoder.layers.{}.src_attn"),
    *_norm(f"{D}.encoder_attn_layer_norm", "decoder.layers.{}.sublayer.1.norm"),
    *_linear(f"{D}.fc1", "decoder.layers.{}.feed_forward.w_1"),
    *_linear(f"{D}.fc2", "decoder.layers.{}.feed_forward.w_2"),
    *_norm(f"{D}.final_layer_norm", "decoder.layers.{}.sublayer.2.norm"),
    Drop("model.encoder.embed_positions.weight", "sinusoid table; computed in code"),
    Drop("model.decoder.embed_positions.weight", "sinusoid table; computed in code"),
    Drop("model.encoder.embed_tokens.weight", "alias of model.shared.weight (shared embeddings)"),
    Drop("model.decoder.embed_tokens.weight", "alias of model.shared.weight (shared embeddings)"),
    Drop("lm_head.weight", "output projection tied to model.shared.weight"),
)


def reference(config, task, folder=None):
    """The transformers model zoo is checked against: ``MarianMTModel``.

    With random weights, the generation settings that the Hub repos keep in
    generation_config.json and that change the chosen tokens (``bad_words_ids``,
    ``renormalize_logits``) are taken from ``config`` as well, so greedy and beam search are
    compared under the same rules the real checkpoint uses.
    """
    from transformers import MarianConfig, MarianMTModel

    if folder is not None:
        return MarianMTModel.from_pretrained(folder)
    model = MarianMTModel(MarianConfig(**config))
    for key in ("bad_words_ids", "renormalize_logits", "forced_eos_token_id", "length_penalty", "early_stopping"):
        if config.get(key) is not None:
            setattr(model.generation_config, key, config[key])
    return model


def hub_layout(state_dict, config):
    """``MarianMTModel.state_dict()`` -> the key layout of the opus-mt files on the Hub:
    ``model.shared.weight`` plus its stored aliases (``model.{encoder,decoder}.embed_tokens``,
    ``lm_head``), the sinusoid tables ``model.{encoder,decoder}.embed_positions.weight`` and
    ``final_logits_bias``."""
    out = dict(state_dict)
    shared = out["model.shared.weight"]
    for alias in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"):
        out.setdefault(alias, shared)
    return {k: v.clone() for k, v in out.items()}  # no shared storage: each key its own tensor


# A few-kilobyte MarianConfig for tests and zoo.testing. No bad_words_ids: transformers 5 keeps
# them only in generation_config.json, not config.json, so a random checkpoint written from this
# config would carry them on one side only.
TINY_CONFIG = {
    "model_type": "marian", "architectures": ["MarianMTModel"], "vocab_size": 64, "d_model": 32,
    "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
    "encoder_ffn_dim": 48, "decoder_ffn_dim": 48, "max_position_embeddings": 64,
    "activation_function": "swish", "scale_embedding": True, "pad_token_id": 63,
    "decoder_start_token_id": 63, "eos_token_id": 0, "forced_eos_token_id": 0, "renormalize_logits": True,
    "init_std": 0.3,  # peaked attention: a swapped q/k projection shows in the outputs
}

# the config.json fields the architecture reads, and what each must be
CONFIG_FIELDS = {
    "vocab_size": fields.SIZE, "decoder_vocab_size": fields.SIZE, "d_model": fields.SIZE,
    "encoder_layers": fields.SIZE, "decoder_layers": fields.SIZE, "encoder_attention_heads": fields.SIZE,
    "decoder_attention_heads": fields.SIZE, "encoder_ffn_dim": fields.SIZE, "decoder_ffn_dim": fields.SIZE,
    "max_position_embeddings": fields.SIZE, "activation_function": fields.NAME, "scale_embedding": fields.FLAG,
    "dropout": fields.PROBABILITY, "attention_dropout": fields.PROBABILITY, "activation_dropout": fields.PROBABILITY,
    "pad_token_id": fields.TOKEN_ID, "eos_token_id": fields.TOKEN_ID, "decoder_start_token_id": fields.TOKEN_ID,
    "forced_eos_token_id": fields.TOKEN_ID, "num_beams": fields.COUNT, "max_length": fields.COUNT,
    "length_penalty": fields.NUMBER,
}

CONVERTER = Converter(
    name="hf_marian",
    architecture="encoder_decoder",
    model_types=("marian",),
    key_map=KEY_MAP,
    tasks={"MarianMTModel": "translation"},
    reference="zoo.converters.hf_marian:reference",
    hub_layout="zoo.converters.hf_marian:hub_layout",
    tiny_config=TINY_CONFIG,
    description="Hugging Face Marian / opus-mt (Hub files and transformers save_pretrained)",
    config_fields=CONFIG_FIELDS,
)


@hookimpl
def register_converters(register):
    register(CONVERTER)
