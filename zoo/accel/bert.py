"""BERT's fast paths: padding skipped ("unpadding"), and q, k and v as one product.

When ``attention_mask`` has zeros, :class:`UnpaddedBert` (the model's class swapped by
:func:`zoo.accel.accelerate`) gathers the batch's tokens into one flat ``[N, H]`` tensor, and
every linear layer, LayerNorm and activation (and the heads that read every token: the MLM
head, the token classifier, the answer-span scores) runs on those N tokens only;
attention alone puts them back into the padded ``[B, nh, T, hs]`` layout for SDPA. A padded
batch costs about what its real tokens cost. What that changes for callers: outputs hold zeros
at padding positions (per-token logits, start and end scores too), where the plain model (as
transformers) computes values that no real token ever reads. Real positions, ``pooler_output``,
the sentence and choice classifiers' logits and gradients match the plain model.

It runs each layer's arithmetic itself (through the layer's own submodules, so the fused q|k|v
product, the packed weights and, in training mode, every dropout still apply), and steps aside
(the plain forward runs) where hooks are set (they would miss the layers it does not call) and
when the loss asked for reads a padding position: the answer-span loss (``start_positions``,
``end_positions``) is a softmax over every position of a row, and a per-token label at padding
that is not -100 counts. The other losses read real tokens only (the sentence classifiers the
pooler's position 0), so a training step computes them, and their gradients, from the real
tokens alone (:func:`reads_padding`).
"""
from __future__ import annotations

import contextvars
from typing import Optional

import torch
import torch.nn.functional as F

from .. import losses
from ..activations import activate_
from ..plugins import bert
from . import class_swap, fused_qkv, ops


class Padding:
    """Which positions of a padded batch are computed, and the moves between the padded layout
    ``(B, T, ...)`` and the flat layout ``(N, ...)`` of those N positions.

    Computed are the real tokens and, in every row, position 0 even where it is padding (a
    left-padded or an empty row): the pooler reads position 0, and transformers computes it.
    No real token attends to padding (``key_mask``), so nothing else of it is ever read.
    """

    def __init__(self, attention_mask: torch.Tensor):
        real = attention_mask.bool()  # (B, T)
        computed = real.clone()
        computed[:, 0] = True
        self.shape = tuple(real.shape)
        self.rows, self.cols = computed.nonzero(as_tuple=True)  # (N,) each, row by row
        per_row = computed.sum(1)
        self.first = per_row.cumsum(0) - per_row  # (B,) where each row's position 0 sits in N
        self.padding = (~real).nonzero(as_tuple=True)  # ((P,), (P,)): position 0 included
        # (B, 1, 1, T): every query (and every head) sees the real tokens of its row only.
        # A row of padding only sees nothing: SDPA then gives zeros, as transformers' does.
        self.key_mask = real[:, None, None, :]
        self._qkv: Optional[torch.Tensor] = None

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (N, ...); takes a strided view (attention's transposed output) as is."""
        return x[self.rows, self.cols]

    def pad_qkv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """The flat (N, H) q, k, v in the padded layout SDPA wants: three (B, T, H) views of
        one (B, T, 3, H) buffer, zeros at padding. The buffer is zeroed once and serves every
        layer: only computed positions are ever written, and SDPA of the layer before has read
        it. (When autograd records, each layer gets its own: backward reads them again.)"""
        if self._qkv is None or q.requires_grad:
            self._qkv = q.new_zeros(*self.shape, 3, q.shape[-1])
        for i, t in enumerate((q, k, v)):
            self._qkv[self.rows, self.cols, i] = t
        return self._qkv.unbind(2)

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (B, T, ...) for the caller, zeros at every padding position (position 0
        of a row that starts with padding too: computed for the pooler only). Written once:
        the computed positions, then zeros over the padding (MLM logits are large)."""
        out = x.new_empty(*self.shape, *x.shape[1:])
        out[self.rows, self.cols] = x
        out[self.padding] = 0
        return out


def _attend(sa: bert.SelfAttention, x: torch.Tensor, padding: Padding) -> torch.Tensor:
    """``SelfAttention`` on the flat (N, H) tokens: q, k, v projected flat, attention in the
    padded layout, the result flat again."""
    q, k, v = padding.pad_qkv(*sa.project_qkv(x))  # (B, T, H) each, zeros at padding
    B, T, H = q.shape
    hs = H // sa.n_head
    q, k, v = (t.view(B, T, sa.n_head, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
    p = sa.dropout_p if sa.training else 0.0  # on the attention probabilities, as SelfAttention
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=padding.key_mask, dropout_p=p)
    return padding.unpad(y.transpose(1, 2)).reshape(-1, H)  # (N, H): the computed rows again


def _layer(layer: bert.Layer, x: torch.Tensor, padding: Padding) -> torch.Tensor:
    """``Layer.forward`` on the flat tokens (everything but attention works token by token)."""
    x = layer.attention.output(_attend(layer.attention.self, x, padding), x)
    return layer.output(layer.intermediate(x), x)


# set while a forward computes a loss that reads padding: every position is computed then
_EVERY_POSITION = contextvars.ContextVar("zoo_bert_every_position", default=False)


def reads_padding(task: str, attention_mask: Optional[torch.Tensor], labels: Optional[torch.Tensor],
                  spans: bool) -> bool:
    """Whether the loss of ``task`` reads a position that ``attention_mask`` marks as padding:
    the answer-span loss (``spans``) always does; a per-token loss where a label at padding is
    not -100."""
    if spans:
        return True
    if attention_mask is None or labels is None or task not in ("fill-mask", "token-classification"):
        return False
    if not isinstance(labels, torch.Tensor) or labels.shape != attention_mask.shape:
        return True  # the plain forward checks them and says what is wrong
    return bool((labels.to(attention_mask.device)[attention_mask == 0] != losses.IGNORE).any())


class UnpaddedBert(bert.Bert):
    """``bert.Bert`` that computes only the real tokens of a padded batch (module docstring):
    the encoder and every head that works token by token (``Bert.heads``) run on them."""

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False,
                labels=None, start_positions=None, end_positions=None):
        targets = dict(labels=labels, start_positions=start_positions, end_positions=end_positions)
        spans = start_positions is not None or end_positions is not None
        if not reads_padding(self.task, attention_mask, labels, spans):
            return super().forward(input_ids, attention_mask, token_type_ids, output_hidden_states, **targets)
        token = _EVERY_POSITION.set(True)
        try:
            return super().forward(input_ids, attention_mask, token_type_ids, output_hidden_states, **targets)
        finally:
            _EVERY_POSITION.reset(token)

    def sequences(self, input_ids, attention_mask, token_type_ids, output_hidden_states: bool):
        if attention_mask is None or _EVERY_POSITION.get() or ops.hooks_set(self):
            return super().sequences(input_ids, attention_mask, token_type_ids, output_hidden_states)
        self._check(input_ids, attention_mask, token_type_ids)
        if bool(attention_mask.all()):
            return super().sequences(input_ids, attention_mask, token_type_ids, output_hidden_states)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        padding = Padding(attention_mask)
        x = self.embeddings(padding.unpad(input_ids), padding.unpad(token_type_ids), padding.cols)  # (N, H)
        hidden = [x] if output_hidden_states else None
        for layer in self.encoder.layer:
            x = _layer(layer, x, padding)
            if hidden is not None:
                hidden.append(x)
        return self.heads(x, x[padding.first], hidden, batched=padding.output)  # first: each row's position 0


class InPlaceIntermediate(bert.Intermediate):
    """``bert.Intermediate`` whose activation overwrites the linear layer's fresh output: one
    large buffer less per layer (``zoo.activations.activate_`` steps aside under autograd and
    where a hook may hold the output)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activate_(self.act, self.dense(x), self.dense)


FAST_PATHS = (
    *fused_qkv.BERT,
    class_swap("in-place-activation", bert.Intermediate, InPlaceIntermediate,
               "the MLP's activation over its first output", packed=False),
    class_swap("bert-unpadding", bert.Bert, UnpaddedBert, "padding tokens skipped: work on the real tokens only",
               packed=False),
)
