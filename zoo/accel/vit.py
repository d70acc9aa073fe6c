"""A ViT classifier's fast path: the last block for the class token alone.

A classifier reads the class token only, so its last block need compute only that row (every
token is still a key and a value there): most of a block's work saved, the same logits up to
float rounding (about 6 % of a ViT-base forward). :class:`ClassTokenViT` (the model's class
swapped by :func:`zoo.accel.accelerate`) runs the blocks as ``ViT.blocks`` does, the last one
for the class token's row (:func:`class_token_block`). It steps aside (every row computed, as
transformers does) when hidden states are asked for, for the feature-extraction task, and where
hooks are set, as they may read the other rows. It runs under autograd and in training mode:
the class token's row is all the logits and the loss read, so the gradients are the plain
model's, and the last block's dropout falls on that row as it would in the whole block.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..activations import activate_
from ..plugins import vit
from . import class_swap, fused_qkv, ops


class ClassTokenViT(vit.ViT):
    """``vit.ViT`` whose classifier computes the last block for the class token alone."""

    def blocks(self, x: torch.Tensor, hidden: Optional[list] = None) -> torch.Tensor:
        if hidden is not None or self.task != "image-classification" or ops.hooks_set(self):
            return super().blocks(x, hidden)
        *first, last = self.encoder.layer
        for block in first:
            x = block(x)
        return class_token_block(last, x)  # (B, 1, hidden): the class token, having read every token


def class_token_block(layer: vit.Layer, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)[:, :1]`` computed for the class token's row alone: its query attends to every
    token's key and value (all computed), and only its row goes through the rest of the block,
    dropout included in training mode."""
    sa = layer.attention.attention
    B, T, C = x.shape
    hs = C // sa.n_head
    q, k, v = sa.project_qkv(layer.layernorm_before(x))
    q = q[:, :1].reshape(B, 1, sa.n_head, hs).transpose(1, 2)  # (B, nh, 1, hs)
    k, v = (t.view(B, T, sa.n_head, hs).transpose(1, 2) for t in (k, v))  # (B, nh, T, hs)
    p = sa.dropout if sa.training else 0.0  # on the attention probabilities, as SelfAttention
    y = F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2).reshape(B, 1, C)
    x = x[:, :1] + layer.dropout(layer.attention.output(y))
    return x + layer.dropout(layer.mlp(layer.layernorm_after(x)))


class InPlaceLayer(vit.Layer):
    """``vit.Layer`` whose MLP activation overwrites its first output: one large buffer less per
    block (``zoo.activations.activate_`` steps aside under autograd and where a hook may hold it)."""

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(activate_(self.act, self.intermediate(x), self.intermediate, self.intermediate.dense))


FAST_PATHS = (
    *fused_qkv.VIT,
    class_swap("in-place-activation", vit.Layer, InPlaceLayer, "the MLP's activation over its first output",
               packed=False),
    class_swap("vit-class-token-block", vit.ViT, ClassTokenViT,
               "a classifier's last block computes the class token's row alone", packed=False),
)
