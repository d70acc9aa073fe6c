"""Hugging Face Marian (``Helsinki-NLP/opus-mt-*``, ``opus-mt-tc-big-*``) checkpoints -> zoo's
``encoder_decoder``.

The token tables and the output projection come in four layouts, set by two config fields,
``share_encoder_decoder_embeddings`` and ``tie_word_embeddings`` (both true by default). What
transformers 5's ``MarianMTModel`` computes with in each, and what zoo builds:

* shared, tied (every opus-mt model): ``model.shared`` [V] is both stacks' table and the output
  projection; ``model.{encoder,decoder}.embed_tokens`` and ``lm_head`` are ties of it.
  zoo: ``shared``, output tied (``tie_output``).
* shared, untied: the untied config unties ``model.shared`` from the stacks as well:
  ``model.encoder.embed_tokens`` [V], ``model.decoder.embed_tokens`` [V] and ``lm_head`` [V] are
  three tables, and no forward reads ``model.shared``.
  zoo: ``src_embed``, ``tgt_embed``, ``generator.proj``.
* separate vocabularies, tied: ``model.encoder.embed_tokens`` [V_src] and
  ``model.decoder.embed_tokens`` [V_tgt], the latter also the output projection (``lm_head`` a
  tie of it). zoo: ``src_embed``, ``tgt_embed``, output tied.
* separate vocabularies, untied: the same, and ``lm_head`` [V_tgt] a table of its own.
  zoo: ``src_embed``, ``tgt_embed``, ``generator.proj``.

``final_logits_bias`` [1, V_tgt] is added to the logits in every layout (V_tgt is
``decoder_vocab_size`` when the vocabularies are separate, else ``vocab_size``).

Files read:

* what transformers 5.x ``save_pretrained`` writes: the tables above that are not ties (with
  one shared table, ``model.shared.weight`` alone), ``final_logits_bias`` and the layers;
* the older files on the Hub (``pytorch_model.bin``, and safetensors converted from them), which
  also store the ties (``model.{encoder,decoder}.embed_tokens.weight``, ``lm_head.weight``) and
  the sinusoid tables ``model.{encoder,decoder}.embed_positions.weight``: read, and dropped by
  the named rules below.

A shared, untied config whose file stores ``model.shared.weight`` but not the per-stack tables
(as transformers 4 saved such models, its stacks still reading ``model.shared``) is refused:
transformers 5 would start those tables from random values.

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
ALIAS = "a tie of model.shared.weight (shared, tied embeddings)"
KEY_MAP = (
    # token tables and output projection: which of these the model has depends on the layout
    # (see above); a table the layout reads through a tie is dropped as that tie
    Map("model.shared.weight", "shared.lut.weight",
        unused="tie_word_embeddings false: MarianMTModel reads the per-stack tables, not model.shared"),
    Map("model.encoder.embed_tokens.weight", "src_embed.lut.weight", unused=ALIAS),
    Map("model.decoder.embed_tokens.weight", "tgt_embed.lut.weight", unused=ALIAS),
    Map("lm_head.weight", "generator.proj.weight", unused="output projection tied to the decoder's embeddings"),
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
    """``MarianMTModel.state_dict()`` -> the key layout of the opus-mt files on the Hub: every
    key the state dict names, ties included (``model.{encoder,decoder}.embed_tokens``,
    ``lm_head`` beside ``model.shared``), the sinusoid tables
    ``model.{encoder,decoder}.embed_positions.weight`` and ``final_logits_bias``, each key its
    own tensor (as a ``torch.save`` of the state dict, converted to safetensors, stores them)."""
    return {k: v.clone() for k, v in state_dict.items()}


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

# config.json fields that MarianMTModel (transformers 5) never reads, and what it does whatever
# their value: the opus-mt configs carry them from the Marian toolkit and from BART's config
IGNORED_FIELDS = {
    "normalize_before": "MarianMTModel has no pre-norm layers: post-norm whatever the value",
    "normalize_embedding": "MarianMTModel has no LayerNorm on the embeddings, whatever the value",
    "add_final_layer_norm": "MarianMTModel has no LayerNorm after either stack, whatever the value",
    "static_position_embeddings": "MarianMTModel's positions are always the fixed sinusoids",
    "extra_pos_embeddings": "MarianMTModel's sinusoid tables have max_position_embeddings rows",
    "add_bias_logits": "MarianMTModel adds final_logits_bias to the logits and no other bias",
    "scale_attention_softmax": "MarianMTModel scales attention scores by 1/sqrt(head size) only",
}

# MarianConfig.attribute_map: these names set the field they stand for (and win over it)
ALIASES = {"hidden_size": "d_model", "num_attention_heads": "encoder_attention_heads",
           "num_hidden_layers": "encoder_layers"}

# what every Marian model is, in the architecture's switches (see plugins/encoder_decoder.py)
MARIAN_NUMERICS = {
    "norm_placement": "post", "layer_norm": "torch", "layer_norm_eps": 1e-5,  # nn.LayerNorm's default
    "sinusoid_layout": "halves", "final_logits_bias": True, "final_norms": False, "log_softmax_output": False,
    "pad_embedding_gradient": False,  # every token table is nn.Embedding(..., padding_idx=pad_token_id)
}


def to_architecture(c):
    """A MarianConfig (config.json, with generation_config.json over it) in the
    ``encoder_decoder`` architecture's names, with transformers' defaults for absent fields.
    The fields of :data:`IGNORED_FIELDS` are ignored, as MarianMTModel ignores them. The three
    dropout probabilities keep their names; LayerDrop (``encoder_layerdrop``,
    ``decoder_layerdrop``: whole layers skipped at random in training) is refused."""
    from zoo.activations import ACTIVATIONS
    from zoo.errors import ConfigError
    from zoo.generation import default_new_tokens, single_tokens

    c = {**c, **{field: c[alias] for alias, field in ALIASES.items() if c.get(alias) is not None}}
    activation = c.get("activation_function", "gelu")
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"marian: config field activation_function={activation!r} is not supported "
            f"(supported: {', '.join(ACTIVATIONS)})"
        )
    for key in ("encoder_layerdrop", "decoder_layerdrop"):
        if c.get(key):
            raise ConfigError(f"marian: config field {key}={c[key]!r} (LayerDrop in training) is not supported")
    shared = bool(c.get("share_encoder_decoder_embeddings", True))
    tied = bool(c.get("tie_word_embeddings", True))
    vocab = int(c.get("vocab_size", 58101))
    decoder_vocab = int(c.get("decoder_vocab_size") or vocab)  # MarianConfig: None means vocab_size
    if shared and not tied and decoder_vocab != vocab:
        raise ConfigError(
            f"marian: config field decoder_vocab_size={decoder_vocab} with shared, untied embeddings: "
            f"a decoder table of {decoder_vocab} rows and an output of vocab_size={vocab} — not supported"
        )
    pad = int(c.get("pad_token_id", 58100))
    eos = c.get("eos_token_id", 0)
    if isinstance(eos, list):
        if len(eos) != 1:
            raise ConfigError(f"marian: config field eos_token_id={eos!r}: only one eos token is supported")
        eos = eos[0]
    return {
        "src_vocab_size": vocab,
        # one shared table has vocab_size rows, whatever decoder_vocab_size says
        "tgt_vocab_size": vocab if shared else decoder_vocab,
        "d_model": int(c.get("d_model", 1024)),
        "encoder_layers": int(c.get("encoder_layers", 12)),
        "decoder_layers": int(c.get("decoder_layers", 12)),
        "encoder_heads": int(c.get("encoder_attention_heads", 16)),
        "decoder_heads": int(c.get("decoder_attention_heads", 16)),
        "encoder_ffn_dim": int(c.get("encoder_ffn_dim", 4096)),
        "decoder_ffn_dim": int(c.get("decoder_ffn_dim", 4096)),
        "activation": activation,
        "dropout": float(c.get("dropout", 0.1)),
        "attention_dropout": float(c.get("attention_dropout", 0.0)),
        "activation_dropout": float(c.get("activation_dropout", 0.0)),
        "max_positions": int(c.get("max_position_embeddings", 1024)),
        "scale_embedding": bool(c.get("scale_embedding", False)),
        **MARIAN_NUMERICS,
        # untied, MarianMTModel unties model.shared as well: every table is its own
        "share_embeddings": shared and tied,
        "tie_output": tied,
        "pad_token_id": pad,
        "eos_token_id": None if eos is None else int(eos),
        "decoder_start_token_id": int(c.get("decoder_start_token_id", pad)),
        "forced_eos_token_id": c.get("forced_eos_token_id", eos),
        "bad_words_ids": single_tokens(c.get("bad_words_ids")),
        "renormalize_logits": bool(c.get("renormalize_logits", False)),
        "length_penalty": float(c.get("length_penalty", 1.0)),
        "early_stopping": c.get("early_stopping", False),
        "num_beams": int(c.get("num_beams", 1)),
        # transformers' default max_length is 20, counting the decoder start token
        "max_new_tokens": default_new_tokens(c, start_length=1, fallback=19),
    }


def from_architecture(a):
    """The MarianConfig fields an ``encoder_decoder`` config determines; a config that no
    Marian model has (pre-norm, a shared table with its own output projection, ...) is
    refused. Separate tables of one size come out as separate vocabularies of that size
    (``share_encoder_decoder_embeddings: false``): the same weights, none of them unused."""
    from zoo.errors import ConfigError

    for key, value in MARIAN_NUMERICS.items():
        if a.get(key, value) != value:
            raise ConfigError(f"marian: a Marian model has {key}={value!r}, not {a[key]!r}")
    if a["share_embeddings"] and not a["tie_output"]:
        raise ConfigError("marian: a Marian model with one shared table ties its output to it (tie_output=True)")
    return {
        "vocab_size": a["src_vocab_size"], "decoder_vocab_size": a["tgt_vocab_size"], "d_model": a["d_model"],
        "encoder_layers": a["encoder_layers"], "decoder_layers": a["decoder_layers"],
        "encoder_attention_heads": a["encoder_heads"], "decoder_attention_heads": a["decoder_heads"],
        "encoder_ffn_dim": a["encoder_ffn_dim"], "decoder_ffn_dim": a["decoder_ffn_dim"],
        "activation_function": a["activation"], "dropout": a["dropout"], "attention_dropout": a["attention_dropout"],
        "activation_dropout": a["activation_dropout"], "max_position_embeddings": a["max_positions"],
        "scale_embedding": a["scale_embedding"], "share_encoder_decoder_embeddings": a["share_embeddings"],
        "tie_word_embeddings": a["tie_output"],
        "pad_token_id": a["pad_token_id"], "eos_token_id": a["eos_token_id"],
        "decoder_start_token_id": a["decoder_start_token_id"], "forced_eos_token_id": a["forced_eos_token_id"],
        "bad_words_ids": [[i] for i in a["bad_words_ids"]], "renormalize_logits": a["renormalize_logits"],
        "length_penalty": a["length_penalty"], "early_stopping": a["early_stopping"], "num_beams": a["num_beams"],
        "max_length": a["max_new_tokens"] + 1,  # counts the decoder start token
    }


# the config.json fields the architecture reads, and what each must be
CONFIG_FIELDS = {
    "vocab_size": fields.SIZE, "decoder_vocab_size": fields.SIZE, "d_model": fields.SIZE,
    "encoder_layers": fields.SIZE, "decoder_layers": fields.SIZE, "encoder_attention_heads": fields.SIZE,
    "decoder_attention_heads": fields.SIZE, "encoder_ffn_dim": fields.SIZE, "decoder_ffn_dim": fields.SIZE,
    "max_position_embeddings": fields.SIZE, "activation_function": fields.NAME, "scale_embedding": fields.FLAG,
    "share_encoder_decoder_embeddings": fields.FLAG, "tie_word_embeddings": fields.FLAG,
    "hidden_size": fields.SIZE, "num_attention_heads": fields.SIZE, "num_hidden_layers": fields.SIZE,
    "encoder_layerdrop": fields.PROBABILITY, "decoder_layerdrop": fields.PROBABILITY,
    "dropout": fields.PROBABILITY, "attention_dropout": fields.PROBABILITY, "activation_dropout": fields.PROBABILITY,
    "pad_token_id": fields.TOKEN_ID, "eos_token_id": fields.TOKEN_ID, "decoder_start_token_id": fields.TOKEN_ID,
    "forced_eos_token_id": fields.TOKEN_ID, "num_beams": fields.COUNT, "max_length": fields.COUNT,
    "length_penalty": fields.NUMBER,
}

# the tokenizer random weights get (zoo.tinytokenizer): sentencepiece-like pieces, </s> after each text
TOKENIZER = {
    "kind": "metaspace-bpe", "class": "PreTrainedTokenizerFast", "vocab_size": "vocab_size",
    "max_length": "max_position_embeddings", "template": "$A </s>",
    "specials": {"eos_token": ["</s>", "eos_token_id", 0], "unk_token": ["<unk>", None, 1],
                 "pad_token": ["<pad>", "pad_token_id", 58100]},
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
    tokenizer=TOKENIZER,
    to_architecture="zoo.converters.hf_marian:to_architecture",
    from_architecture="zoo.converters.hf_marian:from_architecture",
    ignored_fields=IGNORED_FIELDS,
    version="2",  # 2: separate and untied tables; the shared table is zoo's ``shared``
)


@hookimpl
def register_converters(register):
    register(CONVERTER)
