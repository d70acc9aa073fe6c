"""A preallocated key/value cache for incremental decoding, shared by the architectures.

Keys and values of every layer live in one tensor ``kv`` of shape
``(n_layer, 2, B, nh, capacity, hs)`` (``k`` and ``v`` are its two halves); ``length``
positions are filled. Each decoding step writes its new positions in place and attends over
views of the filled part: no recomputation, no reallocation per step. A step's keys and values
go in with one copy (:meth:`KVCache.update_kv`) when the model computes them side by side, as
GPT-2's fused q|k|v projection does.

The capacity starts at what the first step needs (at least ``INITIAL_POSITIONS``) and doubles
when full, up to ``max_len``: a translation model whose checkpoint allows 512 tokens but stops
after 30 holds 64 positions, not 512 (times beams, times batch). Growing copies the filled
positions once per doubling.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from . import memory
from .errors import InputError

INITIAL_POSITIONS = 64


class KVCache:
    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_size: int, device, dtype):
        # what the cache may grow to must fit in what is free now (zoo.memory), before any of it
        need = n_layer * 2 * batch * n_head * max_len * head_size * torch.empty(0, dtype=dtype).element_size()
        memory.check(need, f"a key/value cache of {batch} rows x {max_len} positions",
                     f"rows = batch x beams = {batch}, {n_layer} layers", torch.device(device), available=True)
        self.max_len = max_len
        self.kv = torch.empty((n_layer, 2, batch, n_head, min(max_len, INITIAL_POSITIONS), head_size),
                              device=device, dtype=dtype)
        self.length = 0
        self._spare: Optional[torch.Tensor] = None
        self._views()

    def _views(self) -> None:
        # per-layer views made once: a decoding step pays for a few tensor ops per layer, so
        # indexing the 6-D tensor afresh at every step would be a measurable share of it
        self._layer: List[torch.Tensor] = list(self.kv.unbind(0))  # each (2, B, nh, capacity, hs)

    def _reserve(self, steps: int) -> int:
        """Make room for ``steps`` more positions; returns the length after them."""
        end = self.length + steps
        capacity = self.kv.size(4)
        if end > capacity:
            if end > self.max_len:
                raise InputError(f"KV cache holds {self.max_len} positions; {end} needed")
            shape = list(self.kv.shape)
            shape[4] = min(self.max_len, max(end, 2 * capacity))
            grown = self.kv.new_empty(shape)
            grown.narrow(4, 0, self.length).copy_(self.kv.narrow(4, 0, self.length))
            self.kv, self._spare = grown, None
            self._views()
        return end

    @property
    def k(self) -> torch.Tensor:
        """Keys of every layer, (n_layer, B, nh, capacity, hs) (a view)."""
        return self.kv[:, 0]

    @property
    def v(self) -> torch.Tensor:
        """Values of every layer, (n_layer, B, nh, capacity, hs) (a view)."""
        return self.kv[:, 1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys/values (B, nh, T, hs); return all so far (views, no copy).

        ``length`` is advanced by the model once every layer has written its step."""
        end = self._reserve(k.size(2))
        keys, values = self._layer[layer].unbind(0)
        keys.narrow(2, self.length, k.size(2)).copy_(k)
        values.narrow(2, self.length, v.size(2)).copy_(v)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)

    def update_kv(self, layer: int, kv: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`update` with keys and values stacked, (2, B, nh, T, hs): one copy."""
        end = self._reserve(kv.size(3))
        cached = self._layer[layer]
        cached.narrow(3, self.length, kv.size(3)).copy_(kv)
        keys, values = cached.narrow(3, 0, end).unbind(0)
        return keys, values

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i of the cache becomes old row ``rows[i]`` (beam search): the filled positions
        are gathered into a second preallocated buffer, then the two are swapped (a step costs
        the positions filled so far, not the capacity)."""
        if self._spare is None:
            self._spare = torch.empty_like(self.kv)
        filled = self.length
        torch.index_select(self.kv.narrow(4, 0, filled), 2, rows, out=self._spare.narrow(4, 0, filled))
        self.kv, self._spare = self._spare, self.kv
        self._views()
