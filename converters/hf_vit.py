"""Hugging Face ViT checkpoints -> zoo's ``vit`` architecture.

Layouts read (all 1:1 apart from names; no tensor changes shape):

* the files on the Hub and what transformers 5.x ``save_pretrained`` writes (it converts its
  module names back to this layout on save)::

      ViTForImageClassification      ViTModel (e.g. google/vit-base-patch32-224-in21k)
      vit.embeddings.cls_token       embeddings.cls_token
      vit.encoder.layer.N.attention.attention.{query,key,value}.{weight,bias}
      vit.encoder.layer.N.attention.output.dense.*
      vit.encoder.layer.N.{layernorm_before,layernorm_after}.*
      vit.encoder.layer.N.intermediate.dense.*     (MLP up)
      vit.encoder.layer.N.output.dense.*           (MLP down)
      vit.layernorm.*                layernorm.*
      classifier.*                   pooler.dense.*  (when built with a pooler)

* transformers 5.x module names, i.e. ``model.state_dict()`` written as is
  (``vit.layers.N.attention.{q,k,v,o}_proj``, ``vit.layers.N.mlp.fc1/fc2``): renamed below.

Its config.json (transformers' ``ViTConfig``) is translated into the architecture's own config
(``ViTConfig`` in plugins/vit.py: the original ViT code's names) by :func:`to_architecture`, and
back by :func:`from_architecture`.

This module imports no torch.
"""
from zoo import Drop, Map, Rename, fields, hookimpl
from zoo.errors import ConfigError
from zoo.types import Converter

_L = "encoder.layer.{}."

KEY_MAP = (
    Map("embeddings.cls_token", "embeddings.cls_token"),
    Map("embeddings.position_embeddings", "embeddings.position_embeddings"),
    Map("embeddings.patch_embeddings.projection.weight", "embeddings.patch_embeddings.projection.weight"),
    Map("embeddings.patch_embeddings.projection.bias", "embeddings.patch_embeddings.projection.bias"),
    *(
        Map(_L + name + suffix, _L + name + suffix)
        for name in (
            "layernorm_before",
            "attention.attention.query",
            "attention.attention.key",
            "attention.attention.value",
            "attention.output.dense",
            "layernorm_after",
            "intermediate.dense",
            "output.dense",
        )
        for suffix in (".weight", ".bias")
    ),
    Map("layernorm.weight", "layernorm.weight"),
    Map("layernorm.bias", "layernorm.bias"),
    Map("pooler.dense.weight", "pooler.dense.weight", unused="pooler; a classifier reads the class token instead"),
    Map("pooler.dense.bias", "pooler.dense.bias", unused="pooler; a classifier reads the class token instead"),
    Map("classifier.weight", "classifier.weight", unused="classification head; the model was built as an encoder"),
    Map("classifier.bias", "classifier.bias", unused="classification head; the model was built as an encoder"),
    Drop("embeddings.mask_token", "mask token of masked image modeling (SimMIM); not used for inference"),
    Drop("decoder.{}.weight", "pixel decoder of masked image modeling (SimMIM); not part of the encoder"),
    Drop("decoder.{}.bias", "pixel decoder of masked image modeling (SimMIM); not part of the encoder"),
)

_NEW_NAMES = "transformers 5.x module names (a state_dict saved as is)"
RENAMES = (
    Rename(r"^vit\.", "", "ViTFor* checkpoints keep the encoder under 'vit.'; ViTModel has no prefix"),
    Rename(r"^layers\.(\d+)\.attention\.q_proj\.", r"encoder.layer.\1.attention.attention.query.", _NEW_NAMES),
    Rename(r"^layers\.(\d+)\.attention\.k_proj\.", r"encoder.layer.\1.attention.attention.key.", _NEW_NAMES),
    Rename(r"^layers\.(\d+)\.attention\.v_proj\.", r"encoder.layer.\1.attention.attention.value.", _NEW_NAMES),
    Rename(r"^layers\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense.", _NEW_NAMES),
    Rename(r"^layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense.", _NEW_NAMES),
    Rename(r"^layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense.", _NEW_NAMES),
    Rename(r"^layers\.(\d+)\.(layernorm_before|layernorm_after)\.", r"encoder.layer.\1.\2.", _NEW_NAMES),
)

# transformers 5.x state_dict names -> Hub names (the inverse of the layer renames above)
_TO_HUB = (
    (r"layers\.(\d+)\.attention\.q_proj\.", r"encoder.layer.\1.attention.attention.query."),
    (r"layers\.(\d+)\.attention\.k_proj\.", r"encoder.layer.\1.attention.attention.key."),
    (r"layers\.(\d+)\.attention\.v_proj\.", r"encoder.layer.\1.attention.attention.value."),
    (r"layers\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
    (r"layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
    (r"layers\.(\d+)\.(layernorm_before|layernorm_after)\.", r"encoder.layer.\1.\2."),
)

# a tiny config for verify/tests on random weights: 4x4 patch grid, 5 labels
TINY_CONFIG = {
    "model_type": "vit",
    "architectures": ["ViTForImageClassification"],
    "image_size": 32,
    "patch_size": 8,
    "num_channels": 3,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "qkv_bias": True,
    "num_labels": 5,
}

_PRIVATE = ("add_pooling_layer",)  # zoo's own config keys, unknown to transformers


def has_pooler(keys) -> bool:
    return any(k.endswith("pooler.dense.weight") for k in keys)


def config_from_weights(config, keys):
    """Whether to build a pooler: a ViTModel config.json does not say, its weights do
    (:func:`to_architecture` makes it the pre-logits layer, ``representation_size``)."""
    return {**config, "add_pooling_layer": has_pooler(keys)}


def reference(config, task, folder=None):
    """The transformers model zoo is checked against: ``ViTForImageClassification`` for
    image-classification, ``ViTModel`` (with a pooler when the checkpoint has one) otherwise."""
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    if task == "image-classification":
        if folder is not None:
            return ViTForImageClassification.from_pretrained(folder)
        return ViTForImageClassification(ViTConfig(**{k: v for k, v in config.items() if k not in _PRIVATE}))
    if folder is not None:
        from pathlib import Path

        from zoo import checkpoint as ckpt

        keys = ckpt.read_weights(ckpt.find_weights(Path(folder)))
        return ViTModel.from_pretrained(folder, add_pooling_layer=has_pooler(keys))
    pool = bool(config.get("add_pooling_layer", True))
    return ViTModel(ViTConfig(**{k: v for k, v in config.items() if k not in _PRIVATE}), add_pooling_layer=pool)


def hub_layout(state_dict, config):
    """The reference model's ``state_dict()`` (transformers 5.x module names) -> the key layout
    of the files on the Hub (``vit.encoder.layer.N.attention.attention.query.weight``, ...);
    the ``vit.`` prefix stays where the reference has it (classifiers), as on the Hub."""
    import re

    out = {}
    for key, tensor in state_dict.items():
        prefix = "vit." if key.startswith("vit.") else ""
        rest = key[len(prefix):]
        for pattern, repl in _TO_HUB:
            rest = re.sub("^" + pattern, repl, rest)
        out[prefix + rest] = tensor
    return out


# transformers' ViTConfig defaults, for the fields a config.json leaves out (or null); and zoo's
# add_pooling_layer (config_from_weights): a pooler unless the checkpoint's keys say otherwise
HF_DEFAULTS = {"image_size": 224, "patch_size": 16, "num_channels": 3, "hidden_size": 768,
               "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
               "hidden_act": "gelu", "layer_norm_eps": 1e-12, "qkv_bias": True, "pooler_act": "tanh",
               "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "problem_type": None,
               "add_pooling_layer": True}

# config.json field -> the architecture's field (plugins/vit.py ViTConfig), value as it is
NAMES = {"num_channels": "channels", "hidden_size": "hidden_size", "num_hidden_layers": "num_layers",
         "num_attention_heads": "num_heads", "intermediate_size": "mlp_dim", "hidden_act": "activation",
         "pooler_act": "representation_activation", "hidden_dropout_prob": "dropout_rate",
         "attention_probs_dropout_prob": "attention_dropout_rate", "problem_type": "problem_type"}

# transformers' ViT switches: the value the architecture implements
FIXED = {"use_mask_token": False, "use_absolute_position_embeddings": True}

# the losses of ViTForImageClassification (transformers' problem_type), as zoo.losses names them


def _pair(value, name):
    """``224`` or ``[224, 320]`` -> ``(224, 224)`` / ``(224, 320)`` (height, width)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ConfigError(f"vit: config field {name}={value!r} must be an int or [height, width]")


def _unpair(size):
    """``(224, 224)`` -> ``224`` (as config.json writes a square), ``(224, 320)`` -> ``[224, 320]``."""
    height, width = size
    return height if height == width else [height, width]


def to_architecture(config):
    """A ViTConfig (config.json, with zoo's ``add_pooling_layer`` from the checkpoint's keys) in
    the ``vit`` architecture's names, with transformers' defaults for absent (or null) fields;
    refuses the switches the architecture does not implement, an activation it does not know, a
    ``problem_type`` other than ViTForImageClassification's three and a ``head_dim`` other than
    ``hidden_size / num_attention_heads``, naming the config.json field. The dropout
    probabilities (``hidden_dropout_prob``, ``attention_probs_dropout_prob``) and the loss
    (``problem_type``) are the architecture's ``dropout_rate``, ``attention_dropout_rate`` and
    ``problem_type``."""
    from zoo.activations import ACTIVATIONS  # imports torch: only when a model is configured

    for key, implemented in FIXED.items():
        value = config.get(key)
        if value is not None and value != implemented:
            raise ConfigError(f"vit: config field {key}={value!r} is not supported")
    hf = {**HF_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    for key in ("hidden_act", "pooler_act"):
        if hf[key] not in ACTIVATIONS:
            raise ConfigError(
                f"vit: config field {key}={hf[key]!r} is not supported (supported: {', '.join(sorted(ACTIVATIONS))})"
            )
    if hf["problem_type"] is not None and hf["problem_type"] not in fields.PROBLEM_TYPES:
        raise ConfigError(
            f"vit: config field problem_type={hf['problem_type']!r} is not supported "
            f"(supported: {', '.join(fields.PROBLEM_TYPES)})"
        )
    head_dim, width, heads = hf.get("head_dim"), hf["hidden_size"], hf["num_attention_heads"]
    if head_dim is not None and head_dim * heads != width:
        raise ConfigError(
            f"vit: config field head_dim={head_dim!r} != hidden_size / num_attention_heads is not supported"
        )
    num_labels = fields.label_count(hf, "vit", ConfigError)  # the label names are the task runner's
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ConfigError(f"vit: config field num_labels={num_labels!r} must be a positive integer")
    return {
        **{ours: hf[theirs] for theirs, ours in NAMES.items()},
        "image_size": _pair(hf["image_size"], "image_size"),
        "patch_size": _pair(hf["patch_size"], "patch_size"),
        "norm_eps": float(hf["layer_norm_eps"]),
        "dropout_rate": float(hf["hidden_dropout_prob"]),
        "attention_dropout_rate": float(hf["attention_probs_dropout_prob"]),
        "qkv_bias": bool(hf["qkv_bias"]),
        "num_classes": num_labels,
        # a pooler (the pre-logits layer) when the checkpoint has one: config_from_weights says
        "representation_size": (hf.get("pooler_output_size") or width) if hf["add_pooling_layer"] else None,
    }


def from_architecture(arch_config):
    """The ViTConfig fields (and zoo's ``add_pooling_layer``) a ``vit`` architecture config
    determines."""
    pooler = arch_config["representation_size"]
    return {
        **{theirs: arch_config[ours] for theirs, ours in NAMES.items() if arch_config[ours] is not None},
        "image_size": _unpair(arch_config["image_size"]),
        "patch_size": _unpair(arch_config["patch_size"]),
        "layer_norm_eps": arch_config["norm_eps"],
        "qkv_bias": arch_config["qkv_bias"],
        "num_labels": arch_config["num_classes"],
        "add_pooling_layer": pooler is not None,
        **({"pooler_output_size": pooler} if pooler is not None else {}),
    }


# the config.json fields the converter reads, and what each must be
CONFIG_FIELDS = {
    "image_size": fields.SIZE_2D, "patch_size": fields.SIZE_2D, "num_channels": fields.SIZE,
    "hidden_size": fields.SIZE, "num_hidden_layers": fields.SIZE, "num_attention_heads": fields.SIZE,
    "intermediate_size": fields.SIZE, "hidden_act": fields.NAME, "layer_norm_eps": fields.POSITIVE,
    "qkv_bias": fields.FLAG, "num_labels": fields.SIZE, "pooler_output_size": fields.SIZE,
    "pooler_act": fields.NAME, "hidden_dropout_prob": fields.PROBABILITY,
    "attention_probs_dropout_prob": fields.PROBABILITY,
    "problem_type": fields.PROBLEM_TYPE,
}

CONVERTER = Converter(
    name="hf_vit",
    architecture="vit",
    model_types=("vit",),
    key_map=KEY_MAP,
    renames=RENAMES,
    tasks={
        "ViTForImageClassification": "image-classification",
        "ViTModel": "image-feature-extraction",
        "ViTForMaskedImageModeling": "image-feature-extraction",
    },
    reference="zoo.converters.hf_vit:reference",
    hub_layout="zoo.converters.hf_vit:hub_layout",
    config_from_weights="zoo.converters.hf_vit:config_from_weights",
    tiny_config=TINY_CONFIG,
    description="Hugging Face ViT (Hub files, transformers save_pretrained, transformers 5.x module names)",
    config_fields=CONFIG_FIELDS,
    to_architecture="zoo.converters.hf_vit:to_architecture",
    from_architecture="zoo.converters.hf_vit:from_architecture",
)


@hookimpl
def register_converters(register):
    register(CONVERTER)
