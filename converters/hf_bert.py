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

and of the fine-tuned checkpoints (``BertFor*.state_dict()``: the encoder under ``bert.``, the
task's head at the top level, no ``cls.*``)::

    classifier.{weight,bias}          BertForSequenceClassification [num_labels, H] (+ the pooler),
                                      BertForTokenClassification [num_labels, H],
                                      BertForMultipleChoice [1, H] (+ the pooler)
    qa_outputs.{weight,bias}          BertForQuestionAnswering [2, H]: start and end scores

Other real files differ, and are brought to that layout by named renames first:

* no ``bert.`` prefix (``BertModel.save_pretrained``, many fine-tuned encoders);
* LayerNorm parameters called ``gamma``/``beta`` (files converted from TensorFlow) — renamed
  only under a ``LayerNorm`` module, since "gamma" is a real parameter name elsewhere;
* a legacy ``embeddings.position_ids`` buffer (dropped: positions are computed in code).

zoo's module names are the same keys without the ``bert.`` prefix. Which heads a build has
depends on the task, as in transformers' class of the task (:data:`TASKS`): ``fill-mask`` has
the MLM head and no pooler, ``feature-extraction`` the pooler only, ``text-classification``
and ``multiple-choice`` the pooler and ``classifier``, ``token-classification`` ``classifier``
only, ``question-answering`` ``qa_outputs`` only. A head of the file that the build lacks is
dropped by a named ``unused`` reason; a head the build needs that the file lacks is an error
naming its keys (``classifier.weight``, ...).

The config: the architecture's fields are those of Google's ``bert_config.json``, whose names
transformers kept, so :func:`to_architecture` copies them (transformers' defaults where one is
left out), adds the classifier's outputs (:func:`num_labels`), its dropout
(``classifier_dropout``, transformers' ``hidden_dropout_prob`` when null) and its training loss
(``problem_type`` -> ``classifier_loss``: mean squared error, cross-entropy or binary
cross-entropy; null: transformers' rule by the number of labels and the labels' dtype), and
refuses transformers' options that compute something else (relative positions, a decoder,
cross-attention, factorized embeddings, an MLM decoder of its own, another ``model_type``);
:func:`from_architecture` gives them back. ``id2label`` (the label names) does not change the
model and ``problem_type`` only its loss; a runner reads both to turn logits into scores
(softmax, sigmoid or the value itself). This module imports no torch at import time.
"""
from zoo import Drop, Map, Rename, fields, hookimpl
from zoo.errors import ConfigError
from zoo.types import Converter

_POOLER_UNUSED = ("pooler: the fill-mask, token-classification and question-answering models have none "
                  "(as BertForMaskedLM, BertForTokenClassification, BertForQuestionAnswering)")
_MLM_UNUSED = "MLM head (cls.predictions.*): only the fill-mask model has it (as BertForMaskedLM)"
_CLASSIFIER_UNUSED = ("classifier head (classifier.*): only the text-classification, token-classification and "
                      "multiple-choice models have it")
_QA_UNUSED = "answer-span head (qa_outputs.*): only the question-answering model has it"
_NSP = "next-sentence-prediction head: no zoo task uses it"

# the task heads, stored at the top level of a file (the encoder is under "bert.")
_HEADS = ("cls.", "classifier.", "qa_outputs.")


def _same(key: str, unused: str = "") -> Map:
    """``bert.<key>`` (or ``<key>`` for a task head) -> zoo's ``<key>``."""
    source = key if key.startswith(_HEADS) else "bert." + key
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
    Drop("cls.seq_relationship.weight", _NSP),
    Drop("cls.seq_relationship.bias", _NSP),
    _same("classifier.weight", unused=_CLASSIFIER_UNUSED),
    _same("classifier.bias", unused=_CLASSIFIER_UNUSED),
    _same("qa_outputs.weight", unused=_QA_UNUSED),
    _same("qa_outputs.bias", unused=_QA_UNUSED),
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

# Hugging Face `architectures` class name -> zoo task (the first: what tests build by default).
TASKS = {
    "BertForMaskedLM": "fill-mask",
    "BertForPreTraining": "fill-mask",
    "BertModel": "feature-extraction",
    "BertForSequenceClassification": "text-classification",
    "BertForTokenClassification": "token-classification",
    "BertForQuestionAnswering": "question-answering",
    "BertForMultipleChoice": "multiple-choice",
}

# zoo task -> the transformers class zoo's model of that task is checked against
REFERENCES = {
    "fill-mask": "BertForMaskedLM",
    "feature-extraction": "BertModel",
    "text-classification": "BertForSequenceClassification",
    "token-classification": "BertForTokenClassification",
    "question-answering": "BertForQuestionAnswering",
    "multiple-choice": "BertForMultipleChoice",
}


def reference(config, task, folder=None):
    """The transformers model zoo is checked against, the class of the task
    (:data:`REFERENCES`: ``BertForMaskedLM`` for fill-mask, ``BertModel`` with its pooler for
    feature-extraction, ``BertForSequenceClassification`` for text-classification, ...): from
    ``folder``'s files, else with random weights for ``config``."""
    import transformers

    if task not in REFERENCES:
        raise ValueError(f"hf_bert: no reference for task {task!r}")
    cls = getattr(transformers, REFERENCES[task])
    if folder is not None:
        return cls.from_pretrained(folder)
    return cls(transformers.BertConfig(**config))


def hub_layout(state_dict, config):
    """A reference model's ``state_dict()`` -> the layout of the files on the Hub: ``bert.``
    prefix, LayerNorm ``gamma``/``beta`` (as the older files have), no decoder weight/bias
    (tied). A fine-tuned model's files (a reference with ``classifier.*`` or ``qa_outputs.*``)
    hold what the model holds and no more. The pretraining files (bert-base-uncased) hold every
    pretraining head — the pooler, the MLM head and the next-sentence head: those the reference
    lacks (BertModel has no MLM head, BertForMaskedLM no pooler) are filled with seeded random
    values, so loading exercises the rules that drop them."""
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
    if any(key.startswith(("classifier.", "qa_outputs.")) for key in out):
        return out
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
    pooler, unless the caller asked for one (``add_pooling_layer``). text-classification and
    multiple-choice build it whatever this says (their classifier reads it): on such a
    checkpoint they fail naming the pooler's keys."""
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
    "num_labels": fields.COUNT, "classifier_dropout": fields.PROBABILITY,
    "add_pooling_layer": fields.FLAG, "add_mlm_head": fields.FLAG,  # zoo's switches (see SWITCHES)
    # the classifier's training loss (the architecture's classifier_loss), and how a runner turns
    # its logits into scores (softmax, sigmoid, the value itself)
    "problem_type": fields.PROBLEM_TYPE,
}

# config.json field -> transformers' default (a field left out or null): each is the field of
# the same name of the architecture (Google's bert_config.json names, which transformers kept;
# pad_token_id: the row of the word embeddings that gets no gradient, transformers' padding_idx).
ARCHITECTURE_FIELDS = {
    "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
    "layer_norm_eps": 1e-12, "pad_token_id": 0,
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
    # MLM head; the task is not known here, so only an explicit add_mlm_head=False is certain
    if config.get("tie_word_embeddings") is False and config.get("add_mlm_head") is not False:
        raise ConfigError(
            "bert: config field tie_word_embeddings=False is not supported: the MLM decoder "
            "reuses the word embeddings (for the body alone, load with add_mlm_head=False)"
        )
    arch = {key: default if config.get(key) is None else config[key] for key, default in ARCHITECTURE_FIELDS.items()}
    if "pad_token_id" in config and config["pad_token_id"] is None:  # no padding row, as transformers
        arch["pad_token_id"] = None
    dropout = config.get("classifier_dropout")  # transformers: hidden_dropout_prob when null
    arch["num_labels"] = fields.label_count(config, "bert", ConfigError)
    arch["classifier_dropout_prob"] = arch["hidden_dropout_prob"] if dropout is None else dropout
    arch["classifier_loss"] = config.get("problem_type")  # None: by the labels, as transformers
    return {**arch, **{key: config.get(key) for key in SWITCHES}}


def from_architecture(arch_config):
    """The ``bert`` architecture's config -> the config.json fields it determines (the
    switches only when set; ``classifier_dropout`` null when it is ``hidden_dropout_prob``,
    ``problem_type`` null when the loss goes by the labels)."""
    out = {key: arch_config[key] for key in ARCHITECTURE_FIELDS}
    dropout = arch_config["classifier_dropout_prob"]
    out["num_labels"] = arch_config["num_labels"]
    out["classifier_dropout"] = None if dropout == arch_config["hidden_dropout_prob"] else dropout
    out["problem_type"] = arch_config.get("classifier_loss")
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
    description="Hugging Face BERT (Hub pretraining and fine-tuned files, BertModel/BertFor* save_pretrained)",
    version="2",
    config_fields=CONFIG_FIELDS,
)


@hookimpl
def register_converters(register):
    register(CONVERTER)
