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


def next_token(
    logits: torch.Tensor,
    temperature: Optional[float] = None,
    top_k: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Pick one token per row of ``logits`` [B, V]: argmax when ``temperature`` is 0/None,
    else a sample from ``softmax(logits / temperature)`` restricted to the ``top_k`` best."""
    if not temperature:
        return logits.argmax(dim=-1)
    logits = logits.float() / float(temperature)
    if top_k:
        k = min(int(top_k), logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
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
