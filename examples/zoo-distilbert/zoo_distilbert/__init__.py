"""zoo-distilbert: a zoo plugin providing DistilBERT.

Declared in this package's pyproject as ``[project.entry-points.zoo] distilbert =
"zoo_distilbert"``; zoo finds it there, exactly as it finds its own built-in plugins. Importing
this module stays cheap (no torch): model code is named by ``"module:attribute"`` strings.
"""
from zoo import Architecture, hookimpl

from .converter import CONVERTER

__version__ = "0.1.0"

ARCHITECTURE = Architecture(
    name="distilbert",
    factory="zoo_distilbert.model:from_config",
    example_inputs="zoo_distilbert.model:example_inputs",
    tasks=("fill-mask", "feature-extraction"),
    description="DistilBERT: a 6-layer BERT distilled from bert-base (MLM head or encoder)",
)

# One catalog entry, shaped like a [models.NAME] table of zoo's registry.toml.
MODELS = (
    {
        "name": "distilbert-base-uncased",
        "architecture": "distilbert",
        "converter": "hf_distilbert",
        "task": "fill-mask",
        "repo": "distilbert/distilbert-base-uncased",
        # head of main seen on the Hub tree page ('Updates incorrect tokenizer configuration file (#12)')
        "revision": "12040accade4e8a0f71eabdb258fecc2e7e948be",
        "aliases": ["distilbert/distilbert-base-uncased"],
        "description": "DistilBERT base uncased, 67M, distilled from bert-base-uncased (zoo-distilbert plugin)",
        "params": 66985530,
        "config": {
            "model_type": "distilbert",
            "architectures": ["DistilBertForMaskedLM"],
            "activation": "gelu",
            "attention_dropout": 0.1,
            "dim": 768,
            "dropout": 0.1,
            "hidden_dim": 3072,
            "initializer_range": 0.02,
            "max_position_embeddings": 512,
            "n_heads": 12,
            "n_layers": 6,
            "pad_token_id": 0,
            "qa_dropout": 0.1,
            "seq_classif_dropout": 0.2,
            "sinusoidal_pos_embds": False,
            "tie_weights_": True,
            "vocab_size": 30522,
        },
    },
)


@hookimpl
def register_architectures(register):
    register(ARCHITECTURE)


@hookimpl
def register_converters(register):
    register(CONVERTER)


@hookimpl
def register_models(register):
    for entry in MODELS:
        register(dict(entry))
