"""GPT-2's fast decoding step.

A decoding step runs the blocks on one token per row. Its matrix products are matrix-vector
products bound by memory bandwidth; the rest is ~300 small operations, and at batch 1 calling
them through ~150 modules (each Linear re-checking its packed copy) costs ~10 % of the step.
So the step binds the weights once per ``generate`` call (:func:`plan`) and runs
``Block.forward``'s eval-mode arithmetic (no dropout) for one token as plain operations
(:func:`step`), the MLP's fresh hidden layer activated in place. A test checks that it gives
the modules' hidden states bit for bit, and one that a broken step is caught.

It steps aside (generation then calls the modules) in training mode, under autograd, with hooks
set or a ``forward`` set on a module (the plain step would bypass them), and when a module is
of another kind than plugins/gpt2.py builds (a subclass or a replacement may compute something
else).

Both fast paths are for the language model: a classifier (``gpt2.GPT2Classifier``, whose head is
``score`` on one token per row) is left as it is, to the generic packed products alone.
"""
from __future__ import annotations

import functools
from typing import Callable, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..activations import in_place
from ..plugins import gpt2
from . import FastPath, class_swap, ops

class FewRowHeadGPT2(gpt2.GPT2):
    """``gpt2.GPT2`` whose tied head computes a few rows as ``(W @ xᵀ)ᵀ`` (zoo.accel.ops.linear):
    for 4 to 32 rows on CPU float32 the vocabulary-wide product streams the matrix once."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or (torch.is_grad_enabled() and (x.requires_grad or self.wte.weight.requires_grad)):
            return super().logits(x)
        return ops.linear(x, self.wte.weight)


LANGUAGE_MODELS = (gpt2.GPT2, FewRowHeadGPT2)  # what generates; not the classifier

# the kinds of module a GPT-2 is built of (its Linears plain or packed; its Dropouts, which the
# step leaves out, change nothing in eval mode, the only mode the step runs in)
PLAIN_MODULES = (gpt2.GPT2, FewRowHeadGPT2, nn.ModuleList, gpt2.Block, gpt2.Attention, gpt2.MLP, nn.Linear, ops.Linear,
                 nn.LayerNorm, nn.Embedding, nn.Dropout)


def _product(linear: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(linear, ops.Linear):
        return linear.product()
    return functools.partial(F.linear, weight=linear.weight, bias=linear.bias)


def plan(model: gpt2.GPT2) -> Optional[List[tuple]]:
    """Per block, what a decoding step reads; None where the step must run through the modules."""
    if model.training or torch.is_grad_enabled() or ops.hooks_set(model):
        return None
    if any(type(m) not in PLAIN_MODULES or "forward" in m.__dict__ for m in model.modules()):
        return None
    return [((b.ln_1.weight, b.ln_1.bias, b.ln_1.eps), b.attn.n_head, _product(b.attn.c_attn),
             _product(b.attn.c_proj), (b.ln_2.weight, b.ln_2.bias, b.ln_2.eps), _product(b.mlp.c_fc),
             in_place(b.mlp.act), _product(b.mlp.c_proj)) for b in model.h]


def step(model: gpt2.GPT2, blocks: List[tuple], tokens: torch.Tensor, cache: gpt2.KVCache) -> torch.Tensor:
    """``model.hidden(tokens, cache)[0][:, -1]`` for ``tokens`` [B, 1], through a :func:`plan`."""
    B, C = tokens.size(0), model.config.n_embd
    x = F.embedding(tokens, model.wte.weight) + model.wpe.weight[cache.length]  # (B, 1, C)
    for layer, ((w1, b1, eps1), nh, c_attn, attn_proj, (w2, b2, eps2), c_fc, act_, mlp_proj) in enumerate(blocks):
        qkv = c_attn(F.layer_norm(x, (C,), w1, b1, eps1)).view(B, 1, 3, nh, C // nh).permute(2, 0, 3, 1, 4)
        k, v = cache.update_kv(layer, qkv[1:])
        y = F.scaled_dot_product_attention(qkv[0], k, v)  # one new token: no mask
        # (B, nh, 1, hs) -> (B, 1, C): at one position, row-major order already has the heads side by side
        x = x + attn_proj(y.reshape(B, 1, C))
        # the MLP's hidden layer is fresh and unhooked: activated in place
        x = x + mlp_proj(act_(c_fc(F.layer_norm(x, (C,), w2, b2, eps2))))
    cache.length += 1
    return F.layer_norm(x[:, 0], (C,), model.ln_f.weight, model.ln_f.bias, model.ln_f.eps)


def decode_step(model: nn.Module):
    """The step for this ``generate`` call, or None (see the module docstring)."""
    if type(model) not in LANGUAGE_MODELS:
        return None
    blocks = plan(model)
    return None if blocks is None else functools.partial(step, model, blocks)


FAST_PATHS = (
    class_swap("few-row-head", gpt2.GPT2, FewRowHeadGPT2, "a few rows times the tied head as (W @ xᵀ)ᵀ",
               packed=False),
    FastPath("gpt2-decode-step", lambda model, release: type(model) in LANGUAGE_MODELS, lambda model: None,
             "a decoding step as plain operations over weights bound once per generate call",
             decode_step=decode_step),
)
