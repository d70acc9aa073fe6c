"""Hugging Face DistilBERT checkpoints -> the ``distilbert`` architecture of this plugin.

The key map is written in the layout of ``distilbert/distilbert-base-uncased`` on the Hub
(``DistilBertForMaskedLM``)::

    distilbert.embeddings.{word,position}_embeddings.weight
    distilbert.embeddings.LayerNorm.{weight,bias}
    distilbert.transformer.layer.N.attention.{q,k,v,out}_lin.{weight,bias}
    distilbert.transformer.layer.N.sa_layer_norm.*, .ffn.lin{1,2}.*, .output_layer_norm.*
    vocab_transform.*, vocab_layer_norm.*, vocab_projector.bias
    vocab_projector.weight            (tied to the word embeddings; may be absent)

``DistilBertModel.save_pretrained`` (and many fine-tuned encoders) write the same keys without
the ``distilbert.`` prefix: a rename adds it. No tensor changes layout. Torch-free at import.
"""
from zoo import Drop, Map, Rename
from zoo.types import Converter

_MLM_UNUSED = "MLM head: not part of the feature-extraction model (as DistilBertModel)"
_L = "transformer.layer.{}."


def _body(key: str) -> Map:
    return Map("distilbert." + key, key)


def _head(key: str) -> Map:
    return Map(key, key, unused=_MLM_UNUSED)


KEY_MAP = (
    _body("embeddings.word_embeddings.weight"),
    _body("embeddings.position_embeddings.weight"),
    _body("embeddings.LayerNorm.weight"),
    _body("embeddings.LayerNorm.bias"),
    *(
        _body(_L + module + suffix)
        for module in (
            "attention.q_lin",
            "attention.k_lin",
            "attention.v_lin",
            "attention.out_lin",
            "sa_layer_norm",
            "ffn.lin1",
            "ffn.lin2",
            "output_layer_norm",
        )
        for suffix in (".weight", ".bias")
    ),
    _head("vocab_transform.weight"),
    _head("vocab_transform.bias"),
    _head("vocab_layer_norm.weight"),
    _head("vocab_layer_norm.bias"),
    _head("vocab_projector.bias"),
    Drop("vocab_projector.weight", "MLM projection weight: tied to distilbert.embeddings.word_embeddings.weight"),
    Drop("distilbert.embeddings.position_ids", "legacy buffer arange(max_position_embeddings): computed in code"),
)

RENAMES = (
    Rename(
        r"^(embeddings|transformer)\.",
        r"distilbert.\1.",
        "DistilBertModel.save_pretrained and fine-tuned encoders store keys without 'distilbert.'",
    ),
)

TASKS = {
    "DistilBertForMaskedLM": "fill-mask",
    "DistilBertModel": "feature-extraction",
}

TINY_CONFIG = {
    "model_type": "distilbert",
    "vocab_size": 99,
    "dim": 32,
    "n_layers": 2,
    "n_heads": 4,
    "hidden_dim": 37,
    "max_position_embeddings": 64,
    "activation": "gelu",
    "pad_token_id": 0,
}


def reference(config, task, folder=None):
    """The transformers model this plugin is checked against: ``DistilBertForMaskedLM`` for
    fill-mask, ``DistilBertModel`` for feature-extraction."""
    import transformers

    cls = {"fill-mask": transformers.DistilBertForMaskedLM,
           "feature-extraction": transformers.DistilBertModel}.get(task)
    if cls is None:
        raise ValueError(f"distilbert: no reference for task {task!r}")
    if folder is not None:
        return cls.from_pretrained(folder)
    return cls(transformers.DistilBertConfig(**config))


def hub_layout(state_dict, config):
    """A reference model's ``state_dict()`` -> the layout of the Hub file: ``distilbert.``
    prefix on the body (``DistilBertModel`` has none), no ``vocab_projector.weight`` (tied: a
    safetensors file stores a shared tensor once), no ``position_ids`` buffer."""
    out = {}
    for key, tensor in state_dict.items():
        if key in ("vocab_projector.weight", "embeddings.position_ids", "distilbert.embeddings.position_ids"):
            continue
        if key.startswith(("embeddings.", "transformer.")):
            key = "distilbert." + key
        out[key] = tensor
    return out


CONVERTER = Converter(
    name="hf_distilbert",
    architecture="distilbert",
    model_types=("distilbert",),
    key_map=KEY_MAP,
    renames=RENAMES,
    tasks=TASKS,
    reference="zoo_distilbert.converter:reference",
    hub_layout="zoo_distilbert.converter:hub_layout",
    tiny_config=TINY_CONFIG,
    description="Hugging Face DistilBERT (Hub file, DistilBertModel/ForMaskedLM save_pretrained)",
    version="1",
)
