"""A small tokenizer trained in code, written beside seeded random weights.

Random weights (``--random-weights``, :mod:`zoo.randomweights`) let every command run without
the Hub; a tokenizer lets them take text, as with the real checkpoint. The tokenizer is trained
with the ``tokenizers`` library on :data:`CORPUS` (a few sentences), in the kind of model the
format uses, and saved as ``tokenizer.json`` + ``tokenizer_config.json``, which transformers'
``AutoTokenizer`` reads. Its ids then cover the model's whole vocabulary:

* the special tokens sit at the ids the model's config gives them (``eos_token_id`` ...), or at
  the format's usual ids (BERT's ``[CLS]`` at 101) when the config names none;
* the trained tokens take the lowest free ids;
* every other id is a filler token ``<unused{id}>`` (``[unused{id}]`` for WordPiece), so any id
  the random model picks decodes to something visible.

A converter describes its format's tokenizer as data (``Converter.tokenizer``)::

    {"kind": "byte-bpe" | "wordpiece" | "metaspace-bpe",
     "class": "GPT2Tokenizer",              # tokenizer_config.json's tokenizer_class
     "vocab_size": "vocab_size",            # the config field holding the model's vocabulary size
     "specials": {"eos_token": ["<|endoftext|>", "eos_token_id", 50256], ...},
                                            # role: [text, config field or None, usual id]
     "template": "[CLS] $A [SEP]",          # tokens added around a text (optional)
     "pair": "[CLS] $A [SEP] $B:1 [SEP]:1", # ... around a pair of texts (optional)
     "max_length": "n_positions"}           # the config field of the longest input
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

CORPUS = (
    "The zoo opens at nine in the morning.",
    "Paris is the capital of France.",
    "The house is wonderful.",
    "A small model can be checked against a large one, token by token.",
    "Every weight is read from the file, converted, and checked.",
    "The cat sat on the mat while the dog slept in the garden.",
    "Translation, classification and generation all start with tokens.",
    "Numbers like 1, 2, 3 and 2024 are words too.",
)

KINDS = ("byte-bpe", "wordpiece", "metaspace-bpe")
TRAINED_MAX = 400  # tokens learnt from the corpus at most (it has few more to learn)


def _trained(kind: str, budget: int):
    """A tokenizer of ``kind`` trained on the corpus with at most ``budget`` tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if kind == "byte-bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=budget, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=budget, show_progress=False)
    elif kind == "metaspace-bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=budget, show_progress=False)
    else:
        raise ValueError(f"tokenizer kind {kind!r} (kinds: {', '.join(KINDS)})")
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def special_ids(spec: Mapping[str, Any], config: Mapping[str, Any], vocab_size: int) -> Dict[str, int]:
    """Each special token's id: the config field's value, else the usual id, else (when that
    does not fit the vocabulary) the highest free id. Roles sharing a text share the id."""
    ids: Dict[str, int] = {}
    for role, (text, field, usual) in spec.get("specials", {}).items():
        if text in ids:
            continue
        value = config.get(field) if field else None
        if isinstance(value, list):
            value = value[0] if value else None
        if value is None or not 0 <= int(value) < vocab_size:
            value = usual if usual is not None and 0 <= usual < vocab_size else None
        if value is None or int(value) in ids.values():
            value = max(set(range(vocab_size)) - set(ids.values()))
        ids[text] = int(value)
    return ids


def build(spec: Mapping[str, Any], config: Mapping[str, Any]):
    """The ``tokenizers.Tokenizer`` for a model of this config: trained tokens and fillers at
    free ids, specials at theirs. ``None`` when the vocabulary is too small to hold the
    trained tokens (a tiny test config)."""
    from tokenizers import Tokenizer, processors

    vocab_size = int(config.get(spec.get("vocab_size", "vocab_size")) or 0)
    specials = special_ids(spec, config, vocab_size) if vocab_size else {}
    room = vocab_size - len(specials)
    minimum = 300 if spec["kind"] == "byte-bpe" else 100  # the byte alphabet alone is 256
    if room < minimum:
        return None
    tok = _trained(spec["kind"], min(TRAINED_MAX, room))
    data = json.loads(tok.to_str())
    trained = sorted(tok.get_vocab().items(), key=lambda item: item[1])
    vocab: Dict[str, int] = dict(specials)
    free = (i for i in range(vocab_size) if i not in set(specials.values()))
    for text, _ in trained:
        if text not in vocab:
            vocab[text] = next(free)
    filler = "[unused{}]" if spec["kind"] == "wordpiece" else "<unused{}>"
    for i in free:
        vocab[filler.format(i)] = i
    data["model"]["vocab"] = vocab
    data["added_tokens"] = [
        {"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for text, i in sorted(specials.items(), key=lambda item: item[1])
    ]
    tok = Tokenizer.from_str(json.dumps(data))
    template = spec.get("template")
    if template:
        used = [t for t in template.split() if t in specials]
        tok.post_processor = processors.TemplateProcessing(
            single=template, pair=spec.get("pair"), special_tokens=[(t, specials[t]) for t in dict.fromkeys(used)])
    return tok


def write(folder: Path, spec: Mapping[str, Any], config: Mapping[str, Any]) -> Optional[Path]:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``folder``; returns the
    tokenizer.json path, or ``None`` when the vocabulary is too small for one."""
    tok = build(spec, config)
    if tok is None:
        return None
    folder = Path(folder)
    tok.save(str(folder / "tokenizer.json"))
    settings: Dict[str, Any] = {"tokenizer_class": spec.get("class", "PreTrainedTokenizerFast"),
                                "model_max_length": int(config.get(spec.get("max_length", ""), 512))}
    for role, (text, _field, _usual) in spec.get("specials", {}).items():
        settings[role] = text
    if spec["kind"] == "wordpiece":
        settings["do_lower_case"] = True
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return folder / "tokenizer.json"
