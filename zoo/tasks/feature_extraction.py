"""``zoo run NAME --embed TEXT`` (and ``zoo run`` for feature-extraction models): a sentence
embedding.

The embedding is the mean of the last hidden states over the real (non-padding) tokens, which
every encoder has whatever head it was loaded with; a model built with a pooler also reports
its ``pooler_output`` (BERT: tanh over the [CLS] state).
"""
from __future__ import annotations

import math

import torch

from ..errors import InputError
from . import load_tokenizer


def encode(loaded, inputs, opts):
    """(token ids, tokenizer or None) for the text in ``inputs`` or the ids in ``opts.ids``."""
    tok = load_tokenizer(loaded)
    if opts.ids is not None:
        return list(opts.ids), tok
    if tok is None:
        raise InputError(
            f"{loaded.entry.name}: the checkpoint has no tokenizer files; pass token ids with "
            f"--ids 101,2054,102 (or a --checkpoint folder that has vocab.txt / tokenizer.json)"
        )
    text = " ".join(inputs).strip()
    if not text:
        raise InputError("empty input: give some text (or --ids)")
    return list(tok(text)["input_ids"]), tok


def run(loaded, inputs, opts, emit):
    ids, tok = encode(loaded, inputs, opts)
    input_ids = torch.tensor([ids], dtype=torch.long, device=loaded.device)
    with torch.inference_mode():
        out = loaded.model(input_ids, attention_mask=torch.ones_like(input_ids))
    if out.last_hidden_state is None:
        raise InputError(f"{loaded.entry.name}: the model gives no hidden states to embed")
    states = out.last_hidden_state[0].float()  # (T, H); one sentence, nothing padded
    embedding = states.mean(dim=0)
    values = [float(v) for v in embedding.cpu()]
    result = {
        "model": loaded.entry.name,
        "input_ids": ids,
        "pooling": "mean",
        "dim": len(values),
        "norm": math.sqrt(sum(v * v for v in values)),
        "embedding": values,
    }
    if tok is not None:
        result["tokens"] = tok.convert_ids_to_tokens(ids)
    if out.pooler_output is not None:
        result["pooler_output"] = [float(v) for v in out.pooler_output[0].float().cpu()]
    if not opts.json:
        emit(
            f"sentence embedding: mean of {len(ids)} token states, dim {result['dim']}, "
            f"L2 norm {result['norm']:.4f}\n"
        )
        emit(" ".join(f"{v:.6f}" for v in values) + "\n")
    return result
