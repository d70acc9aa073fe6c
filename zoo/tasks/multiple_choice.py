"""``zoo run NAME PROMPT CHOICE CHOICE...`` for multiple-choice models (SWAG-style): each choice
scored as a continuation of the prompt.

Each ``(prompt, choice)`` pair is tokenized as a sentence pair, the pairs padded to one length
and run as one example of C choices ([1, C, T]); the scores are the softmax of the C logits, as
transformers' ``BertForMultipleChoice`` is trained to give them.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from . import load_tokenizer


def run(loaded, inputs, opts, emit):
    if len(inputs) < 3:
        raise InputError("multiple choice takes a prompt and at least two choices: zoo run MODEL PROMPT CHOICE CHOICE...")
    prompt, choices = inputs[0], list(inputs[1:])
    tok = load_tokenizer(loaded)
    if tok is None:
        raise InputError(f"{loaded.entry.name}: multiple choice needs the checkpoint's tokenizer (tokenizer.json / vocab.txt)")
    enc = tok([prompt] * len(choices), choices, padding="longest", truncation=True, return_token_type_ids=True,
              return_tensors="pt")
    with torch.inference_mode():
        logits = loaded.model(enc["input_ids"][None].to(loaded.device),
                              attention_mask=enc["attention_mask"][None].to(loaded.device),
                              token_type_ids=enc["token_type_ids"][None].to(loaded.device)).logits
    if logits is None or tuple(logits.shape) != (1, len(choices)):
        raise InputError(f"{loaded.entry.name} was loaded for {loaded.task!r}: it gives no score per choice")
    scores = logits[0].float().softmax(-1).cpu()
    ranked = [{"choice": choices[i], "index": i, "score": float(scores[i])}
              for i in scores.argsort(descending=True).tolist()]
    if not opts.json:
        for item in ranked:
            emit(f"{item['score']:8.4f}  {item['choice']}\n")
    return {"model": loaded.entry.name, "prompt": prompt, "choices": ranked, "best": ranked[0]["choice"]}
