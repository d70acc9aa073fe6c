"""A preallocated key/value cache for incremental decoding, shared by the architectures.

Keys and values of every layer live in two tensors of shape ``(n_layer, B, nh, max_len, hs)``,
allocated once; ``length`` positions are filled. Each decoding step writes its new positions in
place and attends over views of the filled part: no recomputation, no reallocation per step.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .errors import InputError


class KVCache:
    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_size: int, device, dtype):
        shape = (n_layer, batch, n_head, max_len, head_size)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0
        self._spare: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store this step's keys/values (B, nh, T, hs); return all so far (views, no copy).

        ``length`` is advanced by the model once every layer has written its step."""
        end = self.length + k.size(2)
        if end > self.k.size(3):
            raise InputError(f"KV cache holds {self.k.size(3)} positions; {end} needed")
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i of the cache becomes old row ``rows[i]`` (beam search): gathered into a second
        preallocated buffer, then the two are swapped."""
        if self._spare is None:
            self._spare = (torch.empty_like(self.k), torch.empty_like(self.v))
        k2, v2 = self._spare
        torch.index_select(self.k, 1, rows, out=k2)
        torch.index_select(self.v, 1, rows, out=v2)
        self._spare = (self.k, self.v)
        self.k, self.v = k2, v2
