"""Hugging Face BERT checkpoints -> zoo's ``bert`` architecture.

The key map is written in the layout of the pretraining checkpoints on the Hub
(``google-bert/bert-base-uncased`` and friends)::

    bert.embeddings.{word,position,token_type}_embeddings.weight
    bert.embeddings.LayerNorm.{weight,bias}
    bert.encoder.layer.N.attention.self.{query,key,value}.{weight,bias}
    bert.encoder.layer.N.attention.output.{dense,LayerNorm}.*
    bert.encoder.layer.N.{intermediate,output}.dense.*, .output.LayerNorm.*
    bert.pooler.dense.*
    cls.predictions.transform.{dense,LayerNorm}.*, cls.predictions.bias
    cls.predictions.decoder.weight (tied to the word embeddings; may be absent)
    cls.seq_relationship.*            (next-sentence head)

Other real files differ, and are brought to that layout by named renames first:

* no ``bert.`` prefix (``BertModel.save_pretrained``, many fine-tuned encoders);
* LayerNorm parameters called ``gamma``/``beta`` (files converted from TensorFlow) — renamed
  only under a ``LayerNorm`` module, since "gamma" is a real parameter name elsewhere;
* a legacy ``embeddings.position_ids`` buffer (dropped: positions are computed in code).

zoo's module names are the same keys without the ``bert.`` prefix. Which heads a build has
depends on the task: ``fill-mask`` has the MLM head and no pooler (as ``BertForMaskedLM``),
``feature-extraction`` has the pooler and no MLM head (as ``BertModel``); the head a build lacks
is dropped by a named ``unused`` reason.

The config: the architecture's fields are those of Google's ``bert_config.json``, whose names
transformers kept, so :func:`to_architecture` copies them (transformers' defaults where one is
left out) and refuses transformers' options that compute something else (relative positions,
a decoder, cross-attention, factorized embeddings, an MLM decoder of its own, another
``model_type``); :func:`from_architecture` gives them back. This module imports no torch at
import time.
"""
from zoo import Drop, Map, Rename, fields, hookimpl
from zoo.errors import ConfigError
from zoo.types import Converter

_POOLER_UNUSED = "pooler: the fill-mask model has none (as BertForMaskedLM)"
_MLM_UNUSED = "MLM head: not part of the feature-extraction model (as BertModel)"


def _same(key: str, unused: str = "") -> Map:
    """``bert.<key>`` (or ``<key>`` for the heads under ``cls.``) -> zoo's ``<key>``."""
    source = key if key.startswith("cls.") else "bert." + key
    return Map(source, key, unused=unused)


_LAYER = "encoder.layer.{}."

KEY_MAP = (
    _same("embeddings.word_embeddings.weight"),
    _same("embeddings.position_embeddings.weight"),
    _same("embeddings.token_type_embeddings.weight"),
    _same("embeddings.LayerNorm.weight"),
    _same("embeddings.LayerNorm.bias"),
    *(
        _same(_LAYER + part + suffix)
        for part in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "attention.output.LayerNorm",
            "intermediate.dense",
            "output.dense",
            "output.LayerNorm",
        )
        for suffix in (".weight", ".bias")
    ),
    _same("pooler.dense.weight", unused=_POOLER_UNUSED),
    _same("pooler.dense.bias", unused=_POOLER_UNUSED),
    _same("cls.predictions.transform.dense.weight", unused=_MLM_UNUSED),
    _same("cls.predictions.transform.dense.bias", unused=_MLM_UNUSED),
    _same("cls.predictions.transform.LayerNorm.weight", unused=_MLM_UNUSED),
    _same("cls.predictions.transform.LayerNorm.bias", unused=_MLM_UNUSED),
    _same("cls.predictions.bias", unused=_MLM_UNUSED),
    Drop("cls.predictions.decoder.weight", "MLM decoder weight: tied to bert.embeddings.word_embeddings.weight"),
    Drop("cls.predictions.decoder.bias", "MLM decoder bias: tied to cls.predictions.bias"),
    Drop("cls.seq_relationship.weight", "next-sentence-prediction head: no zoo task uses it"),
    Drop("cls.seq_relationship.bias", "next-sentence-prediction head: no zoo task uses it"),
    Drop("bert.embeddings.position_ids", "legacy buffer arange(max_position_embeddings): computed in code"),
)

RENAMES = (
    Rename(
        r"^(embeddings|encoder|pooler)\.",
        r"bert.\1.",
        "BertModel.save_pretrained and many Hub files store the encoder without the 'bert.' prefix",
    ),
    Rename(
        r"(^|\.)LayerNorm\.gamma$",
        r"\1LayerNorm.weight",
        "files converted from TensorFlow (bert-base-uncased) call the LayerNorm scale 'gamma'",
    ),
    Rename(
        r"(^|\.)LayerNorm\.beta$",
        r"\1LayerNorm.bias",
        "files converted from TensorFlow (bert-base-uncased) call the LayerNorm shift 'beta'",
    ),
)

# Hugging Face `architectures` class name -> zoo task.
TASKS = {
    "BertForMaskedLM": "fill-mask",
    "BertForPreTraining": "fill-mask",
    "BertModel": "feature-extraction",
}


def _reference_class(task):
    import transformers

    if task == "fill-mask":
        return transformers.BertForMaskedLM
    if task == "feature-extraction":
        return transformers.BertModel
    raise ValueError(f"hf_bert: no reference for task {task!r}")


def reference(config, task, folder=None):
    """The transformers model zoo is checked against: ``BertForMaskedLM`` for fill-mask,
    ``BertModel`` (with its pooler) for feature-extraction."""
    from transformers import BertConfig

    cls = _reference_class(task)
    if folder is not None:
        return cls.from_pretrained(folder)
    return cls(BertConfig(**config))


def hub_layout(state_dict, config):
    """A reference model's ``state_dict()`` -> the layout of the pretraining files on the Hub
    (bert-base-uncased): ``bert.`` prefix, LayerNorm ``gamma``/``beta``, no decoder weight/bias
    (tied), and every head present — the pooler, the MLM head and the next-sentence head. Heads
    the reference lacks (BertModel has no MLM head, BertForMaskedLM no pooler) are filled with
    seeded random values, so loading exercises the rules that drop them."""
    import torch

    H = int(config.get("hidden_size", 768))
    V = int(config.get("vocab_size", 30522))
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * 0.02

    out = {}
    for key, tensor in state_dict.items():
        if key in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias"):
            continue
        if key.startswith(("embeddings.", "encoder.", "pooler.")):
            key = "bert." + key
        if key.endswith("LayerNorm.weight"):
            key = key[: -len("weight")] + "gamma"
        elif key.endswith("LayerNorm.bias"):
            key = key[: -len("bias")] + "beta"
        out[key] = tensor
    extra = {
        "bert.pooler.dense.weight": rand(H, H),
        "bert.pooler.dense.bias": rand(H),
        "cls.predictions.transform.dense.weight": rand(H, H),
        "cls.predictions.transform.dense.bias": rand(H),
        "cls.predictions.transform.LayerNorm.gamma": 1 + rand(H),
        "cls.predictions.transform.LayerNorm.beta": rand(H),
        "cls.predictions.bias": rand(V),
        "cls.seq_relationship.weight": rand(2, H),
        "cls.seq_relationship.bias": rand(2),
    }
    for key, tensor in extra.items():
        out.setdefault(key, tensor)
    return out


def config_from_weights(config, keys):
    """A checkpoint without pooler weights (e.g. saved from BertForMaskedLM) builds without the
    pooler for every task, unless the caller asked for one (``add_pooling_layer``)."""
    if "add_pooling_layer" not in config and not any(".pooler." in f".{k}" for k in keys):
        return {**config, "add_pooling_layer": False}
    return config


# the config.json fields zoo checks on reading a BERT file, and what each must be
CONFIG_FIELDS = {
    "vocab_size": fields.SIZE, "hidden_size": fields.SIZE, "num_hidden_layers": fields.SIZE,
    "num_attention_heads": fields.SIZE, "intermediate_size": fields.SIZE, "hidden_act": fields.NAME,
    "layer_norm_eps": fields.POSITIVE, "max_position_embeddings": fields.SIZE, "type_vocab_size": fields.SIZE,
    "pad_token_id": fields.TOKEN_ID, "hidden_dropout_prob": fields.PROBABILITY,
    "attention_probs_dropout_prob": fields.PROBABILITY,
}

# config.json field -> transformers' default (a field left out or null): each is the field of
# the same name of the architecture (Google's bert_config.json names, which transformers kept).
# pad_token_id is not among them: the model does not read it (transformers only keeps that row
# of the word embeddings out of training; here attention_mask alone masks padding).
ARCHITECTURE_FIELDS = {
    "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}
# zoo's own switches, carried as they are when a config has them (None: what the task implies)
SWITCHES = ("add_pooling_layer", "add_mlm_head")

# transformers' BertConfig options that change the computation, and the values zoo's BERT
# computes (None: left out); another value is refused rather than loaded as something else
SUPPORTED = {
    "position_embedding_type": ("absolute", None),
    "is_decoder": (False, None),
    "add_cross_attention": (False, None),
}


def to_architecture(config):
    """A BERT config.json (with zoo's switches) -> the ``bert`` architecture's config; refuses,
    naming the field, what the architecture does not compute."""
    model_type = config.get("model_type", "bert")
    if model_type != "bert":
        raise ConfigError(f"bert: config field model_type={model_type!r} is not a plain BERT ('bert')")
    for key, ok in SUPPORTED.items():
        if key in config and config[key] not in ok:
            raise ConfigError(
                f"bert: config field {key}={config[key]!r} is not supported "
                f"(supported: {', '.join(repr(v) for v in ok if v is not None)})"
            )
    if config.get("embedding_size") not in (None, config.get("hidden_size", 768)):
        raise ConfigError(f"bert: config field embedding_size={config['embedding_size']!r} (factorized embeddings) is not supported")
    # the MLM decoder is the word embedding matrix: a file with one of its own cannot have the
    # MLM head, which every task but an explicit add_mlm_head=False may build
    if config.get("tie_word_embeddings") is False and config.get("add_mlm_head") is not False:
        raise ConfigError(
            "bert: config field tie_word_embeddings=False is not supported: the MLM decoder "
            "reuses the word embeddings (for the body alone, load with add_mlm_head=False)"
        )
    arch = {key: default if config.get(key) is None else config[key] for key, default in ARCHITECTURE_FIELDS.items()}
    return {**arch, **{key: config.get(key) for key in SWITCHES}}


def from_architecture(arch_config):
    """The ``bert`` architecture's config -> the config.json fields it determines (the
    switches only when set)."""
    out = {key: arch_config[key] for key in ARCHITECTURE_FIELDS}
    out.update({key: arch_config[key] for key in SWITCHES if arch_config.get(key) is not None})
    return out


# the tokenizer random weights get (zoo.tinytokenizer): lower-cased WordPiece, BERT's special ids
TOKENIZER = {
    "kind": "wordpiece", "class": "BertTokenizer", "vocab_size": "vocab_size", "max_length": "max_position_embeddings",
    "template": "[CLS] $A [SEP]", "pair": "[CLS] $A [SEP] $B:1 [SEP]:1",
    "specials": {"pad_token": ["[PAD]", "pad_token_id", 0], "unk_token": ["[UNK]", None, 100],
                 "cls_token": ["[CLS]", None, 101], "sep_token": ["[SEP]", None, 102], "mask_token": ["[MASK]", None, 103]},
}

CONVERTER = Converter(
    name="hf_bert",
    architecture="bert",
    model_types=("bert",),
    key_map=KEY_MAP,
    renames=RENAMES,
    tasks=TASKS,
    reference="zoo.converters.hf_bert:reference",
    hub_layout="zoo.converters.hf_bert:hub_layout",
    config_from_weights="zoo.converters.hf_bert:config_from_weights",
    tokenizer=TOKENIZER,
    to_architecture="zoo.converters.hf_bert:to_architecture",
    from_architecture="zoo.converters.hf_bert:from_architecture",
    tiny_config={"model_type": "bert", "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "intermediate_size": 37, "max_position_embeddings": 64,
                 "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0},
    description="Hugging Face BERT (Hub pretraining files, BertModel/BertForMaskedLM save_pretrained)",
    config_fields=CONFIG_FIELDS,
)


@hookimpl
def register_converters(register):
    register(CONVERTER)
