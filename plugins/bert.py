"""BERT (Devlin et al., 2018), readable top to bottom.

A bidirectional transformer encoder: word + learned position + token-type embeddings and a
LayerNorm, then ``num_hidden_layers`` *post-norm* layers (self-attention -> residual ->
LayerNorm, MLP -> residual -> LayerNorm). On top, optionally:

* a pooler: ``tanh(W h_[CLS] + b)``, the sentence vector BERT was pretrained to produce
  (``feature-extraction``, as transformers' ``BertModel``);
* a masked-language-model head: dense -> activation -> LayerNorm -> a decoder that reuses the
  word embedding matrix (tied) plus its own bias (``fill-mask``, as ``BertForMaskedLM``, which
  has no pooler).

Submodules carry the names of the Hugging Face checkpoint without its ``bert.`` prefix
(``embeddings.word_embeddings``, ``encoder.layer.N.attention.self.query``, ``pooler.dense``,
``cls.predictions.transform.dense``), so the converter maps keys 1:1.

The whole size of the model comes from the config; any config value this file does not
implement raises :class:`zoo.errors.ConfigError` naming the field and the value.

Padding is masked: with ``attention_mask``, no token attends to a padding position. (The
speed layer, zoo.accel.bert, skips the work of padding tokens altogether.)
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.activations import ACTIVATIONS
from zoo.errors import ConfigError, InputError
from zoo.outputs import ModelOutput


TASKS = ("fill-mask", "feature-extraction")


@dataclass
class BertConfig:
    """The size and numerics of one BERT, in the names of Google's ``bert_config.json``
    (defaults: BERT-base), plus zoo's choice of heads."""

    vocab_size: int = 30522  # rows of the word embedding matrix (and MLM logits per token)
    hidden_size: int = 768  # H: the width of every token's state
    num_hidden_layers: int = 12  # encoder layers
    num_attention_heads: int = 12  # heads per layer; each is hidden_size // num_attention_heads wide
    intermediate_size: int = 3072  # the MLP's inner width
    hidden_act: str = "gelu"  # the MLP's (and the MLM transform's) activation, a zoo.activations name
    hidden_dropout_prob: float = 0.1  # dropout on embeddings and sublayer outputs (training only)
    attention_probs_dropout_prob: float = 0.1  # dropout on attention probabilities (training only)
    max_position_embeddings: int = 512  # learned positions: the longest input
    type_vocab_size: int = 2  # token types (segments A, B)
    layer_norm_eps: float = 1e-12  # epsilon of every LayerNorm (Google's code fixes it at 1e-12)
    # zoo's own switches; None means "what the task implies".
    add_pooling_layer: Optional[bool] = None  # feature-extraction: True, fill-mask: False
    add_mlm_head: Optional[bool] = None  # fill-mask: True, feature-extraction: False

    def check(self) -> None:
        """Refuse values this file does not implement, naming the field and the value."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"bert: config field {name}={v!r} must be a positive integer")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACTIVATIONS:
            raise ConfigError(
                f"bert: config field hidden_act={self.hidden_act!r} is not supported "
                f"(supported: {', '.join(sorted(ACTIVATIONS))})"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"bert: config field hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )


def bert_config(config: Dict[str, Any], task: str) -> BertConfig:
    """The :class:`BertConfig` of ``config`` (its fields by name) built for ``task``: the heads
    the task implies unless ``config`` chooses them; checked."""
    if task not in TASKS:
        raise ConfigError(f"bert: task {task!r} is not supported (tasks: {', '.join(TASKS)})")
    unknown = sorted(set(config) - {f.name for f in fields(BertConfig)})
    if unknown:
        raise ConfigError(f"bert: unknown config field(s) {', '.join(unknown)}")
    cfg = BertConfig(**config)
    if cfg.add_pooling_layer is None:
        cfg.add_pooling_layer = task == "feature-extraction"
    if cfg.add_mlm_head is None:
        cfg.add_mlm_head = task == "fill-mask"
    cfg.check()
    return cfg


# ----------------------------------------------------------------------------- embeddings


class Embeddings(nn.Module):
    """word + position + token type, then LayerNorm and dropout."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # any layout: (B, T) ids with positions (T,), or the flat (N,) tokens with theirs
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(positions)  # (..., H)
        return self.dropout(self.LayerNorm(x))


# ----------------------------------------------------------------------------- encoder layer


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention with separate q, k, v projections (zoo.accel.fused_qkv
    computes the three as one product)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.n_head = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_probs_dropout_prob

    def project_qkv(self, x: torch.Tensor):
        """``(query(x), key(x), value(x))``."""
        return self.query(x), self.key(x), self.value(x)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, T, H) -> (B, T, H); ``mask`` (B, 1, 1, T) bool: which keys each row may attend to."""
        B, T, H = x.shape
        hs = H // self.n_head
        q, k, v = self.project_qkv(x)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        p = self.dropout_p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return y.transpose(1, 2).reshape(B, T, H)  # heads side by side again


class SelfOutput(nn.Module):
    """Output projection of the attention, residual, then LayerNorm (post-norm)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, y: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(y)) + residual)


class Attention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = SelfAttention(cfg)  # named "self" as in the checkpoint: attention.self.query
        self.output = SelfOutput(cfg)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    """First half of the MLP: hidden -> intermediate, activation."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class Output(nn.Module):
    """Second half of the MLP: intermediate -> hidden, residual, LayerNorm (post-norm)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class Layer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = Output(cfg)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.attention(x, mask)  # only attention mixes positions: the rest works token by token
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))


# ----------------------------------------------------------------------------- heads


class Pooler(nn.Module):
    """tanh(dense(hidden state of the first token, [CLS]))."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, first: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(first))  # first: (B, H), position 0 of each row


class PredictionTransform(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class Predictions(nn.Module):
    """MLM head: transform, then the decoder. The decoder *weight* is the word embedding
    matrix (passed in at call time, so there is one tensor under one name); only its bias
    belongs to the head."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.transform = PredictionTransform(cfg)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        # (..., H) -> (..., vocab): the decoder is the word embedding matrix (tied), plus a bias
        return F.linear(self.transform(x), word_embeddings, self.bias)


class MLMHead(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.predictions = Predictions(cfg)


# ----------------------------------------------------------------------------- the model


class Bert(nn.Module):
    """``model(input_ids, attention_mask=None, token_type_ids=None)`` -> :class:`ModelOutput`
    with ``last_hidden_state`` [B, T, H], ``pooler_output`` [B, H] when built with a pooler,
    and ``logits`` [B, T, vocab] when built with the MLM head.

    Outputs match transformers' BertModel / BertForMaskedLM (zoo.accel.bert's unpadding leaves
    zeros at padding positions instead).
    """

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        if cfg.add_pooling_layer:
            self.pooler = Pooler(cfg)
        if cfg.add_mlm_head:
            self.cls = MLMHead(cfg)

    def _check(self, input_ids, attention_mask, token_type_ids) -> None:
        cfg = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int):
            shape = list(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise InputError(f"bert expects token ids of shape [B, T] (int64), got {shape}")
        B, T = input_ids.shape
        if T == 0 or B == 0:
            raise InputError("bert: empty input (no tokens)")
        if T > cfg.max_position_embeddings:
            raise InputError(f"bert: {T} tokens exceed the {cfg.max_position_embeddings} positions of this model")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= cfg.vocab_size:
            raise InputError(f"bert: token ids must be in [0, {cfg.vocab_size}), got {lo}..{hi}")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and tuple(t.shape) != (B, T):
                raise InputError(f"bert: {name} has shape {list(t.shape)}, input_ids {[B, T]}")
        if token_type_ids is not None:
            lo, hi = int(token_type_ids.min()), int(token_type_ids.max())
            if lo < 0 or hi >= cfg.type_vocab_size:
                raise InputError(f"bert: token_type_ids must be in [0, {cfg.type_vocab_size}), got {lo}..{hi}")
        if attention_mask is not None and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise InputError("bert: attention_mask must hold 0 (padding) and 1 (token) only")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        self._check(input_ids, attention_mask, token_type_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)  # one segment, as in the reference
        # positions are 0..T-1 for every row, padding or not (as in the reference)
        positions = torch.arange(input_ids.size(1), device=input_ids.device)
        x = self.embeddings(input_ids, token_type_ids, positions)  # (B, T, H)
        hidden = [x] if output_hidden_states else None  # transformers: embeddings, then each layer
        mask = None  # no padding: no mask at all, as transformers
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): keys each row may see
        for layer in self.encoder.layer:
            x = layer(x, mask)
            if hidden is not None:
                hidden.append(x)
        return self.heads(x, hidden)

    def heads(self, x: torch.Tensor, hidden: Optional[list] = None) -> ModelOutput:
        """The pooler (position 0) and the MLM head over the last hidden states (B, T, H)."""
        pooled = self.pooler(x[:, 0]) if self.config.add_pooling_layer else None
        logits = self.cls.predictions(x, self.embeddings.word_embeddings.weight) if self.config.add_mlm_head else None
        return ModelOutput(last_hidden_state=x, pooler_output=pooled, logits=logits,
                           hidden_states=tuple(hidden) if hidden else None)


def from_config(config: Dict[str, Any], task: Optional[str] = None) -> Bert:
    """The model of ``task`` (default: fill-mask) from ``config``, :class:`BertConfig`'s fields by name."""
    return Bert(bert_config(config, task or TASKS[0]))


def parameter_count(config: Dict[str, Any], task: Optional[str] = None) -> int:
    """The parameters :func:`from_config` builds, from the config alone (checked before building)."""
    cfg = bert_config(config, task or TASKS[0])
    H, inner = cfg.hidden_size, cfg.intermediate_size
    embeddings = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * H + 2 * H
    layer = 4 * (H * H + H) + 2 * H + (H * inner + inner) + (inner * H + H) + 2 * H
    pooler = H * H + H if cfg.add_pooling_layer else 0
    mlm = (H * H + H) + 2 * H + cfg.vocab_size if cfg.add_mlm_head else 0
    return embeddings + cfg.num_hidden_layers * layer + pooler + mlm


def example_inputs(config: Dict[str, Any], task: str, batch: int, seq: int, generator) -> Dict[str, Any]:
    """Random ids, two segments (token types 0 then 1), and padding at the end of every row
    after the first, so verification exercises the mask and the token types."""
    cfg = bert_config(config, task)
    seq = min(seq, cfg.max_position_embeddings)
    input_ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=generator)
    token_type_ids = torch.zeros(batch, seq, dtype=torch.long)
    if cfg.type_vocab_size > 1:
        token_type_ids[:, seq // 2 :] = 1
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    for b in range(1, batch):
        attention_mask[b, max(1, seq - b * max(1, seq // (2 * batch))) :] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
