"""``zoo run`` for encoder-decoder translation models: translate the input text.

The text is encoded with the checkpoint's tokenizer (Marian: its sentencepiece ``source.spm``)
and decoded greedily, or with beam search when ``--beams N`` > 1, for up to
``--max-new-tokens`` tokens. Both default to the checkpoint's own, as in transformers'
``generate``: ``num_beams`` and ``max_length`` (or ``max_new_tokens``) of its config, where
generation_config.json's values take precedence; a checkpoint that sets no length gets 32
tokens. A checkpoint without tokenizer files (an Annotated Transformer state dict, a fresh
model) takes source token ids with ``--ids`` and prints target ids.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from ..generation import default_new_tokens
from . import DEFAULT_NEW_TOKENS, prompt_ids


def run(loaded, inputs, opts, emit):
    model = loaded.model
    ids, tok = prompt_ids(loaded, inputs, opts, "source", "with its tokenizer, e.g. source.spm")
    beams = int(loaded.config.get("num_beams", 1)) if opts.beams is None else opts.beams
    if beams < 1:
        raise InputError(f"--beams must be >= 1, got {beams}")
    input_ids = torch.tensor([ids], dtype=torch.long, device=loaded.device)
    n = opts.max_new_tokens
    if n is None:  # max_length counts the decoder start token
        n = default_new_tokens(loaded.config, 1, DEFAULT_NEW_TOKENS)
    out = model.generate(input_ids, max_new_tokens=n, num_beams=beams)
    out_ids = [int(t) for t in out[0]]
    result = {"model": loaded.entry.name, "input_ids": ids, "output_ids": out_ids, "beams": beams}
    if tok is not None:
        result["text"] = tok.decode(out_ids, skip_special_tokens=True)
        if not opts.json:
            emit(result["text"] + "\n")
    elif not opts.json:
        emit(",".join(str(t) for t in out_ids) + "\n")
    return result
