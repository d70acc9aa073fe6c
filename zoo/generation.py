"""Token selection shared by generative architectures: greedy, temperature, top-k."""
from __future__ import annotations

from typing import Optional

import torch


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
