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
is dropped by a named ``unused`` reason. This module imports no torch at import time.
"""
from zoo import Drop, Map, Rename, fields, hookimpl
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


# the config.json fields the architecture reads, and what each must be
CONFIG_FIELDS = {
    "vocab_size": fields.SIZE, "hidden_size": fields.SIZE, "num_hidden_layers": fields.SIZE,
    "num_attention_heads": fields.SIZE, "intermediate_size": fields.SIZE, "hidden_act": fields.NAME,
    "layer_norm_eps": fields.POSITIVE, "max_position_embeddings": fields.SIZE, "type_vocab_size": fields.SIZE,
    "pad_token_id": fields.TOKEN_ID, "hidden_dropout_prob": fields.PROBABILITY,
    "attention_probs_dropout_prob": fields.PROBABILITY,
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
    tiny_config={"model_type": "bert", "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "intermediate_size": 37, "max_position_embeddings": 64,
                 "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0},
    description="Hugging Face BERT (Hub pretraining files, BertModel/BertForMaskedLM save_pretrained)",
    config_fields=CONFIG_FIELDS,
)


@hookimpl
def register_converters(register):
    register(CONVERTER)
