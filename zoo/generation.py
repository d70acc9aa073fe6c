"""Token selection shared by generative architectures (greedy, temperature, top-k), and the
default length of a generation."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from .errors import InputError


def make_generator(seed: Optional[int], device: torch.device) -> Optional[torch.Generator]:
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def sampling_logits(
    logits: torch.Tensor, temperature: float, top_k: Optional[int] = None, top_p: Optional[float] = None
) -> torch.Tensor:
    """``logits`` [B, V] as sampling sees them, in transformers' order: divided by
    ``temperature``, then all but the ``top_k`` best set to -inf, then all but the smallest set
    of best tokens whose probabilities sum past ``top_p`` (nucleus; at least one token kept)."""
    logits = logits.float() / float(temperature)
    if top_k:
        k = min(int(top_k), logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ascending, order = torch.sort(logits, dim=-1)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - float(top_p)
        drop[..., -1] = False  # the best token always stays
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def next_token(
    logits: torch.Tensor,
    temperature: Optional[float] = None,
    top_k: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    top_p: Optional[float] = None,
) -> torch.Tensor:
    """Pick one token per row of ``logits`` [B, V]: argmax when ``temperature`` is 0/None,
    else a sample from the softmax of :func:`sampling_logits`."""
    if not temperature:
        return logits.argmax(dim=-1)
    probs = torch.softmax(sampling_logits(logits, temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def default_new_tokens(config: Mapping[str, Any], start_length: int, fallback: int) -> int:
    """How many tokens transformers' ``generate`` adds when not told: the config's
    ``max_new_tokens``, else its ``max_length`` less the ``start_length`` tokens the output
    starts with (the prompt; an encoder-decoder's decoder start token), else ``fallback``."""
    if config.get("max_new_tokens") is not None:
        return int(config["max_new_tokens"])
    if config.get("max_length") is not None:
        room = int(config["max_length"]) - start_length
        if room <= 0:
            raise InputError(
                f"the checkpoint's max_length={config['max_length']} leaves no room for new tokens after "
                f"{start_length} input tokens; pass --max-new-tokens"
            )
        return room
    return fallback
