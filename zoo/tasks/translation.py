"""``zoo run`` for encoder-decoder translation models: translate the input text.

The text is encoded with the checkpoint's tokenizer (Marian: its sentencepiece ``source.spm``)
and decoded greedily, or with beam search when ``--beams N`` > 1, for up to
``--max-new-tokens`` tokens. A checkpoint without tokenizer files (an Annotated Transformer
state dict, a fresh model) takes source token ids with ``--ids`` and prints target ids.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from . import prompt_ids


def run(loaded, inputs, opts, emit):
    model = loaded.model
    ids, tok = prompt_ids(loaded, inputs, opts, "source", "with its tokenizer, e.g. source.spm")
    if opts.beams < 1:
        raise InputError(f"--beams must be >= 1, got {opts.beams}")
    input_ids = torch.tensor([ids], dtype=torch.long, device=loaded.device)
    out = model.generate(input_ids, max_new_tokens=opts.max_new_tokens, num_beams=opts.beams)
    out_ids = [int(t) for t in out[0]]
    result = {"model": loaded.entry.name, "input_ids": ids, "output_ids": out_ids, "beams": opts.beams}
    if tok is not None:
        result["text"] = tok.decode(out_ids, skip_special_tokens=True)
        if not opts.json:
            emit(result["text"] + "\n")
    elif not opts.json:
        emit(",".join(str(t) for t in out_ids) + "\n")
    return result
