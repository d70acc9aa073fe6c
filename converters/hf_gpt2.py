"""Hugging Face GPT-2 checkpoints -> zoo's ``gpt2`` architecture.

Three layouts are read:

* the files on the Hub (``openai-community/gpt2`` and friends): keys without a prefix
  (``wte.weight``, ``h.0.attn.c_attn.weight``), a causal-mask buffer ``h.N.attn.bias``
  [1, 1, 1024, 1024] per block (and ``h.N.attn.masked_bias`` in some), no ``lm_head.weight``;
* what transformers ``save_pretrained`` writes today: the same keys under ``transformer.``;
* sequence classifiers (``GPT2ForSequenceClassification``, task ``text-classification``): the
  body under ``transformer.`` (with the causal-mask buffers in files that transformers 4 wrote,
  and ``masked_bias`` in older ones) and the head ``score.weight`` [num_labels, n_embd]; no
  language-model head. Loaded for ``text-generation``, the classifier's head is dropped by a
  named rule; a language model's files lack ``score.weight``, which ``text-classification``
  then names as missing.

Its config.json (transformers' ``GPT2Config``) is translated into the architecture's own config
(``GPT2Config`` in plugins/gpt2.py: OpenAI's names where it has them) by :func:`to_architecture`, and back by
:func:`from_architecture`.

This module imports no torch: transforms use tensor methods only.
"""
from zoo import Drop, Map, Rename, Transform, fields, hookimpl
from zoo.errors import ConfigError
from zoo.types import Converter


def _t(w):
    """Swap the two dimensions of a 2-D weight (a view, no copy).

    GPT-2's Conv1D keeps ``W`` as [in, out] and computes ``x @ W``; ``nn.Linear`` keeps
    [out, in] and computes ``x @ W.T``::

        Conv1D  [in, out]  --t-->  Linear [out, in]
    """
    return w.t()


conv1d_to_linear = Transform("transpose", _t, _t, _t.__doc__)

KEY_MAP = (
    Map("wte.weight", "wte.weight"),
    Map("wpe.weight", "wpe.weight"),
    Map("h.{}.ln_1.weight", "h.{}.ln_1.weight"),
    Map("h.{}.ln_1.bias", "h.{}.ln_1.bias"),
    Map("h.{}.attn.c_attn.weight", "h.{}.attn.c_attn.weight", conv1d_to_linear),  # q | k | v
    Map("h.{}.attn.c_attn.bias", "h.{}.attn.c_attn.bias"),
    Map("h.{}.attn.c_proj.weight", "h.{}.attn.c_proj.weight", conv1d_to_linear),
    Map("h.{}.attn.c_proj.bias", "h.{}.attn.c_proj.bias"),
    Map("h.{}.ln_2.weight", "h.{}.ln_2.weight"),
    Map("h.{}.ln_2.bias", "h.{}.ln_2.bias"),
    Map("h.{}.mlp.c_fc.weight", "h.{}.mlp.c_fc.weight", conv1d_to_linear),
    Map("h.{}.mlp.c_fc.bias", "h.{}.mlp.c_fc.bias"),
    Map("h.{}.mlp.c_proj.weight", "h.{}.mlp.c_proj.weight", conv1d_to_linear),
    Map("h.{}.mlp.c_proj.bias", "h.{}.mlp.c_proj.bias"),
    Map("ln_f.weight", "ln_f.weight"),
    Map("ln_f.bias", "ln_f.bias"),
    Drop("h.{}.attn.bias", "causal-mask buffer; the mask is computed in code",
         fill="zoo.converters.hf_gpt2:causal_mask"),
    Drop("h.{}.attn.masked_bias", "masking constant buffer; not a weight"),
    Drop("lm_head.weight", "output head tied to wte.weight"),
    Map("score.weight", "score.weight",
        unused="the sequence classifier's head; a language model's head is the token embedding (tied)"),
)

RENAMES = (
    Rename(r"^transformer\.", "", "transformers save_pretrained prefixes keys with 'transformer.'"),
)


# transformers' GPT2Config defaults, for the fields a config.json leaves out
HF_DEFAULTS = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
               "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
               "pad_token_id": None, "embd_pdrop": 0.1, "attn_pdrop": 0.1, "resid_pdrop": 0.1,
               "problem_type": None}

# config.json field -> the architecture's field (plugins/gpt2.py GPT2Config); the label count
# (n_labels) comes from num_labels or id2label (:func:`zoo.fields.label_count`)
NAMES = {"vocab_size": "n_vocab", "n_positions": "n_ctx", "n_embd": "n_embd", "n_layer": "n_layer",
         "n_head": "n_head", "n_inner": "mlp_width", "activation_function": "activation",
         "layer_norm_epsilon": "norm_eps", "pad_token_id": "pad_id", "embd_pdrop": "embd_pdrop",
         "attn_pdrop": "attn_pdrop", "resid_pdrop": "resid_pdrop", "problem_type": "problem_type"}

# the classifier's losses (transformers' problem_type; null: chosen from the labels' dtype)

# transformers' GPT-2 switches: the value the architecture implements, and what the other means
FIXED = {
    "scale_attn_weights": (True, "unscaled attention"),
    "scale_attn_by_inverse_layer_idx": (False, "attention scaled by 1/layer"),
    "add_cross_attention": (False, "cross-attention"),
    "tie_word_embeddings": (True, "an output head of its own, not the token embedding"),
}


def to_architecture(config):
    """A GPT2Config (config.json) in the ``gpt2`` architecture's names, with transformers'
    defaults for absent (or null) fields (dropout 0.1 on embeddings, attention probabilities
    and sublayer outputs); refuses the switches the architecture does not implement, an
    activation it does not know and a problem type transformers does not, naming the
    config.json field."""
    from zoo.activations import ACTIVATIONS  # imports torch: only when a model is configured

    for key, (implemented, what) in FIXED.items():
        value = config.get(key)
        if value is not None and value != implemented:
            raise ConfigError(f"gpt2: config field {key}={value!r} ({what}) is not supported")
    hf = {**HF_DEFAULTS, **{k: v for k, v in config.items() if k in NAMES and v is not None}}
    if hf["activation_function"] not in ACTIVATIONS:
        raise ConfigError(
            f"gpt2: config field activation_function={hf['activation_function']!r} is not "
            f"supported (supported: {', '.join(sorted(ACTIVATIONS))})"
        )
    if hf["problem_type"] is not None and hf["problem_type"] not in fields.PROBLEM_TYPES:
        raise ConfigError(f"gpt2: config field problem_type={hf['problem_type']!r} is not one of "
                          f"{', '.join(fields.PROBLEM_TYPES)}")
    return {**{ours: hf[theirs] for theirs, ours in NAMES.items()},
            "n_labels": fields.label_count(config, "gpt2", ConfigError)}


def from_architecture(arch_config):
    """The GPT2Config fields a ``gpt2`` architecture config determines: its sizes and numerics,
    the dropout probabilities, the classifier's label count, pad id and problem type, and the
    switches it implements (tied head, attention scaled by 1/sqrt(head width)). ``num_labels``
    keeps the names of a config's ``id2label`` of that length (transformers renames the labels
    only when the counts differ)."""
    return {**{theirs: arch_config[ours] for theirs, ours in NAMES.items()},
            "num_labels": arch_config["n_labels"],
            **{key: implemented for key, (implemented, _) in FIXED.items()}}


def causal_mask(config, key):
    """The ``h.N.attn.bias`` buffer of the Hub files, for export: a lower-triangular float
    mask [1, 1, n_positions, n_positions] (1 = may attend)."""
    import torch

    n = int(config.get("n_positions", HF_DEFAULTS["n_positions"]))
    return torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n).float()


# task -> the transformers class zoo's model is checked against
REFERENCES = {"text-generation": "GPT2LMHeadModel", "text-classification": "GPT2ForSequenceClassification"}


def reference(config, task, folder=None):
    """The transformers model zoo is checked against: ``GPT2LMHeadModel``, or for
    ``text-classification`` ``GPT2ForSequenceClassification``."""
    import transformers

    if task not in REFERENCES:
        raise ConfigError(f"gpt2: task {task!r} has no transformers reference (tasks: {', '.join(REFERENCES)})")
    cls = getattr(transformers, REFERENCES[task])
    if folder is not None:
        return cls.from_pretrained(folder)
    return cls(transformers.GPT2Config(**config))


def hub_layout(state_dict, config):
    """A reference's ``state_dict()`` -> the key layout of the files on the Hub, a
    causal-mask buffer per block in both:

    * ``GPT2LMHeadModel``: no ``transformer.`` prefix, no ``lm_head.weight`` (tied), as in
      ``openai-community/gpt2``;
    * ``GPT2ForSequenceClassification`` (it has ``score.weight``): the keys as they are,
      ``transformer.h.N.attn.bias`` beside them, as fine-tuned classifiers saved by
      transformers 4 hold them."""
    classifier = "score.weight" in state_dict
    prefix = "transformer." if classifier else ""
    mask = causal_mask(config, "h.0.attn.bias")
    out = {}
    for key, tensor in state_dict.items():
        if key == "lm_head.weight":
            continue
        out[key if classifier else key.removeprefix("transformer.")] = tensor
    for i in range(int(config.get("n_layer", HF_DEFAULTS["n_layer"]))):
        out[f"{prefix}h.{i}.attn.bias"] = mask.clone()
    return out


# the config.json fields the architecture reads, and what each must be
CONFIG_FIELDS = {
    "vocab_size": fields.SIZE, "n_positions": fields.SIZE, "n_embd": fields.SIZE, "n_layer": fields.SIZE,
    "n_head": fields.SIZE, "n_inner": fields.SIZE, "activation_function": fields.NAME,
    "layer_norm_epsilon": fields.POSITIVE, "eos_token_id": fields.TOKEN_IDS, "bos_token_id": fields.TOKEN_IDS,
    "tie_word_embeddings": fields.FLAG, "scale_attn_weights": fields.FLAG,
    "scale_attn_by_inverse_layer_idx": fields.FLAG, "add_cross_attention": fields.FLAG,
    "pad_token_id": fields.TOKEN_ID, "num_labels": fields.COUNT, "id2label": fields.LABELS,
    "embd_pdrop": fields.PROBABILITY, "attn_pdrop": fields.PROBABILITY, "resid_pdrop": fields.PROBABILITY,
    "problem_type": fields.PROBLEM_TYPE,
}

# the tokenizer random weights get (zoo.tinytokenizer): byte-level BPE, <|endoftext|> at the eos id
TOKENIZER = {
    "kind": "byte-bpe", "class": "GPT2Tokenizer", "vocab_size": "vocab_size", "max_length": "n_positions",
    "specials": {"eos_token": ["<|endoftext|>", "eos_token_id", 50256], "bos_token": ["<|endoftext|>", "bos_token_id", 50256],
                 "unk_token": ["<|endoftext|>", None, 50256]},
}

CONVERTER = Converter(
    name="hf_gpt2",
    architecture="gpt2",
    model_types=("gpt2",),
    key_map=KEY_MAP,
    renames=RENAMES,
    tasks={"GPT2LMHeadModel": "text-generation", "GPT2Model": "text-generation",
           "GPT2ForSequenceClassification": "text-classification"},
    reference="zoo.converters.hf_gpt2:reference",
    hub_layout="zoo.converters.hf_gpt2:hub_layout",
    tiny_config={"vocab_size": 96, "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 4,
                 "bos_token_id": 0, "eos_token_id": 0},
    description="Hugging Face GPT-2 (Hub files and transformers save_pretrained)",
    config_fields=CONFIG_FIELDS,
    tokenizer=TOKENIZER,
    to_architecture="zoo.converters.hf_gpt2:to_architecture",
    from_architecture="zoo.converters.hf_gpt2:from_architecture",
    version="2",  # 2: the sequence classifier (score.weight)
)


@hookimpl
def register_converters(register):
    register(CONVERTER)
