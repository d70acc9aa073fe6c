"""``zoo run NAME TEXT`` for token classifiers (named entities): the entities with their words,
character spans and scores.

Tokens are grouped as transformers' token-classification pipeline groups them with
``aggregation_strategy="simple"``: each token takes its most likely label (softmax over the
labels); consecutive tokens form one entity while their tags agree and the next one does not
begin a new entity (``B-``); an entity's score is the mean of its tokens', its word the tokens
joined back by the tokenizer, its span from the first token's start to the last one's end;
entities tagged ``O`` are left out.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch

from ..errors import InputError
from . import load_tokenizer
from .image_classification import label_names


def tag(label: str) -> Tuple[str, str]:
    """``("B" | "I", entity type)`` of a label: ``B-PER`` -> (B, PER), ``I-PER`` -> (I, PER),
    anything else continues an entity of its own name (``O`` -> (I, O))."""
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def group(tokens: List[Dict[str, Any]], join) -> List[Dict[str, Any]]:
    """Consecutive tokens (dicts with ``entity``, ``score``, ``word``, ``start``, ``end``) into
    entities; ``join`` turns token strings back into text."""
    groups: List[List[Dict[str, Any]]] = []
    for token in tokens:
        if groups:
            bi, kind = tag(token["entity"])
            if kind == tag(groups[-1][-1]["entity"])[1] and bi != "B":
                groups[-1].append(token)
                continue
        groups.append([token])
    entities = []
    for members in groups:
        entities.append({
            "entity_group": members[0]["entity"].split("-", 1)[-1],
            "score": sum(m["score"] for m in members) / len(members),
            "word": join([m["word"] for m in members]),
            "start": members[0]["start"],
            "end": members[-1]["end"],
        })
    return [e for e in entities if e["entity_group"] != "O"]


def run(loaded, inputs, opts, emit):
    tok = load_tokenizer(loaded)
    if tok is None or not getattr(tok, "is_fast", False):
        raise InputError(f"{loaded.entry.name}: token classification needs the checkpoint's fast tokenizer "
                         f"(tokenizer.json), for the words' character spans")
    text = " ".join(inputs).strip()
    if not text:
        raise InputError("empty input: give some text")
    enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True, truncation=True)
    ids = enc["input_ids"]
    input_ids = torch.tensor([ids], dtype=torch.long, device=loaded.device)
    with torch.inference_mode():
        logits = loaded.model(input_ids, attention_mask=torch.ones_like(input_ids)).logits
    if logits is None or logits.dim() != 3:
        raise InputError(f"{loaded.entry.name} was loaded for {loaded.task!r}: it gives no per-token logits")
    probs = logits[0].float().softmax(-1).cpu()
    names = label_names(loaded.config, probs.shape[-1])
    tokens = []
    for i, (token_id, special, (start, end)) in enumerate(zip(ids, enc["special_tokens_mask"], enc["offset_mapping"])):
        if special:
            continue
        best = int(probs[i].argmax())
        word = text[start:end] if token_id == tok.unk_token_id else tok.convert_ids_to_tokens(token_id)
        tokens.append({"entity": names[best], "score": float(probs[i, best]), "index": i, "word": word,
                       "start": int(start), "end": int(end)})
    entities = group(tokens, tok.convert_tokens_to_string)
    if not opts.json:
        if not entities:
            emit("no entities\n")
        for e in entities:
            emit(f"{e['entity_group']:<8} {e['score']:.4f}  {e['word']!r} [{e['start']}:{e['end']}]\n")
    return {"model": loaded.entry.name, "input_ids": ids, "aggregation": "simple", "entities": entities}
