"""``zoo run NAME "Paris is the [MASK] of France."``: the most likely tokens for each mask.

Needs a model built with its MLM head (task fill-mask) and the checkpoint's tokenizer (which
knows the mask token). ``--embed`` hands over to the feature-extraction runner instead.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from . import feature_extraction, load_tokenizer


def run(loaded, inputs, opts, emit):
    if opts.embed:
        return feature_extraction.run(loaded, inputs, opts, emit)
    tok = load_tokenizer(loaded)
    if tok is None or tok.mask_token_id is None:  # before anything else: --ids cannot stand in for it
        raise InputError(
            f"{loaded.entry.name}: fill-mask needs the checkpoint's tokenizer, which knows the mask token; "
            f"pass a --checkpoint folder with vocab.txt / tokenizer.json (--embed works from --ids alone)"
        )
    ids, tok = feature_extraction.encode(loaded, inputs, opts)
    mask_id = tok.mask_token_id
    positions = [i for i, t in enumerate(ids) if t == mask_id]
    if not positions:
        raise InputError(f"no {tok.mask_token} in the input: write it where a word should be predicted")
    if opts.top < 1:
        raise InputError(f"--top must be >= 1, got {opts.top}")
    input_ids = torch.tensor([ids], dtype=torch.long, device=loaded.device)
    with torch.inference_mode():
        out = loaded.model(input_ids, attention_mask=torch.ones_like(input_ids))
    if out.logits is None:
        raise InputError(
            f"{loaded.entry.name} was loaded for {loaded.task!r}, without the MLM head: "
            f"load it for fill-mask, or use --embed"
        )
    probs = out.logits[0, positions].float().softmax(dim=-1)  # (masks, vocab)
    scores, best = probs.topk(min(opts.top, probs.size(-1)), dim=-1)
    masks = []
    for n, pos in enumerate(positions):
        candidates = []
        for score, token_id in zip(scores[n].tolist(), best[n].tolist()):
            filled = list(ids)
            filled[pos] = token_id
            candidates.append({
                "token_id": token_id,
                # a model's vocabulary may be larger than its tokenizer's (padded)
                "token": tok.convert_ids_to_tokens(token_id) or f"[{token_id}]",
                "score": score,
                "sequence": tok.decode(filled, skip_special_tokens=True),
            })
        masks.append({"position": pos, "candidates": candidates})
    if not opts.json:
        for m in masks:
            if len(masks) > 1:
                emit(f"mask at token {m['position']}:\n")
            for c in m["candidates"]:
                emit(f"{c['score']:8.4f}  {c['token']:<16} {c['sequence']}\n")
    return {"model": loaded.entry.name, "input_ids": ids, "masks": masks}
