"""Built-in architecture plugins.

Model code lives in one file per architecture (``gpt2.py``, ...) and imports torch; this module
only describes them, so that discovering plugins (``zoo list``, ``zoo --help``) stays torch-free.
It is an ordinary plugin, declared in the ``zoo`` entry-point group like any third-party one.
"""
from zoo import Architecture, hookimpl

ARCHITECTURES = (
    Architecture(
        name="gpt2",
        factory="zoo.plugins.gpt2:from_config",
        example_inputs="zoo.plugins.gpt2:example_inputs",
        parameter_count="zoo.plugins.gpt2:parameter_count",
        fast_paths="zoo.accel.gpt2:FAST_PATHS",
        tasks=("text-generation", "text-classification"),
        description="GPT-2 decoder-only language model (KV-cache generation)",
    ),
    Architecture(
        name="bert",
        factory="zoo.plugins.bert:from_config",
        example_inputs="zoo.plugins.bert:example_inputs",
        parameter_count="zoo.plugins.bert:parameter_count",
        fast_paths="zoo.accel.bert:FAST_PATHS",
        tasks=("fill-mask", "feature-extraction", "text-classification", "token-classification",
               "question-answering", "multiple-choice"),
        description="BERT bidirectional encoder (MLM head, pooler, or a classifier / QA head), sized from its config",
    ),
    Architecture(
        name="vit",
        factory="zoo.plugins.vit:from_config",
        example_inputs="zoo.plugins.vit:example_inputs",
        parameter_count="zoo.plugins.vit:parameter_count",
        fast_paths="zoo.accel.vit:FAST_PATHS",
        tasks=("image-classification", "image-feature-extraction"),
        description="Vision Transformer: image classifier, or encoder (+ pooler)",
    ),
    Architecture(
        name="encoder_decoder",
        factory="zoo.plugins.encoder_decoder:from_config",
        example_inputs="zoo.plugins.encoder_decoder:example_inputs",
        parameter_count="zoo.plugins.encoder_decoder:parameter_count",
        fast_paths="zoo.accel.encoder_decoder:FAST_PATHS",
        tasks=("translation",),
        description="Transformer encoder-decoder (Annotated Transformer / Marian; greedy and beam search)",
    ),
)


@hookimpl
def register_architectures(register):
    for arch in ARCHITECTURES:
        register(arch)
