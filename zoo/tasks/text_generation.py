"""``zoo run`` for language models: stream a continuation of the prompt.

Without ``--max-new-tokens`` the length is the checkpoint's (``max_new_tokens``, or
``max_length`` counting the prompt, from its generation_config.json), else 32 tokens. Text
input stops at the checkpoint's ``eos_token_id``; ``--ids`` input runs the full length.
Greedy unless ``--temperature`` is given or the checkpoint's ``do_sample`` is true (then its
``temperature``, ``top_k`` and ``top_p``, each overridable by its option). ``--beams N`` (or
the checkpoint's ``num_beams``) searches with N beams, as transformers' ``generate(num_beams=N)``,
and prints the best hypothesis when the search ends.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from ..generation import default_new_tokens
from . import DEFAULT_NEW_TOKENS, prompt_ids


def sampling(config, opts) -> dict:
    """temperature / top_k / top_p for ``generate``: the options given, else, when the
    checkpoint samples (``do_sample``), its values with transformers' defaults (temperature 1,
    top_k 50, top_p 1); else greedy. ``--temperature 0`` is greedy whatever the checkpoint says."""
    if opts.temperature is not None or not config.get("do_sample"):
        return {"temperature": opts.temperature, "top_k": opts.top_k, "top_p": opts.top_p}
    return {
        "temperature": config.get("temperature", 1.0),
        "top_k": opts.top_k if opts.top_k is not None else config.get("top_k", 50),
        "top_p": opts.top_p if opts.top_p is not None else config.get("top_p", 1.0),
    }


def run(loaded, inputs, opts, emit):
    model = loaded.model
    ids, tok = prompt_ids(loaded, inputs, opts, "prompt", "that has tokenizer.json")
    input_ids = torch.tensor([ids], dtype=torch.long, device=loaded.device)

    generated = []
    shown = ""
    if tok is not None:
        emit(tok.decode(ids))

    def on_token(nxt):
        nonlocal shown
        generated.append(int(nxt[0]))
        if opts.json:
            return
        if tok is None:
            emit(("" if len(generated) == 1 else ",") + str(generated[-1]))
        else:
            text = tok.decode(generated)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                emit(text[len(shown):])
                shown = text

    eos = loaded.config.get("eos_token_id") if tok is not None else None  # --ids: exactly N tokens
    n = opts.max_new_tokens
    if n is None:
        n = default_new_tokens(loaded.config, len(ids), DEFAULT_NEW_TOKENS)
    beams = int(loaded.config.get("num_beams", 1)) if opts.beams is None else opts.beams
    if beams > 1:  # the best hypothesis is known only at the end: shown whole, not streamed
        if opts.temperature or opts.top_k is not None or opts.top_p is not None or opts.seed is not None:
            raise InputError("--beams searches, it does not sample: drop --temperature/--top-k/--top-p/--seed")
        out = model.generate(input_ids, max_new_tokens=n, num_beams=beams, eos_token_id=eos,
                             pad_token_id=loaded.config.get("pad_token_id"))
        stops = {eos} if isinstance(eos, int) else set(eos or ())
        for token in out[0, len(ids):].tolist():
            on_token(torch.tensor([token]))
            if token in stops:
                break  # what follows is padding
    else:
        model.generate(
            input_ids,
            max_new_tokens=n,
            seed=opts.seed,
            eos_token_id=eos,
            callback=on_token,
            **sampling(loaded.config, opts),
        )
    emit("\n")
    result = {"model": loaded.entry.name, "input_ids": ids, "generated_ids": generated, "beams": beams}
    if tok is not None:
        result["text"] = tok.decode(generated)
    return result
