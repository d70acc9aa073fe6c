"""DistilBERT (Sanh et al., 2019), readable top to bottom.

BERT with half the layers, no token types and no pooler: word + learned position embeddings
and a LayerNorm, then ``n_layers`` *post-norm* blocks (self-attention -> residual -> LayerNorm,
MLP -> residual -> LayerNorm). For ``fill-mask`` (as transformers' ``DistilBertForMaskedLM``) a
head on top: dense -> activation -> LayerNorm -> a projection onto the vocabulary whose weight
*is* the word embedding matrix (tied) and whose bias is its own.

Submodules carry the names of the Hugging Face checkpoint without its ``distilbert.`` prefix
(``embeddings.word_embeddings``, ``transformer.layer.N.attention.q_lin``, ``ffn.lin1``,
``vocab_transform``), so the converter maps keys 1:1. Every LayerNorm uses eps 1e-12: the
reference hard-codes it, the config has no field for it.

Written against zoo's public API only (``zoo.errors``, ``zoo.outputs``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.errors import ConfigError, InputError
from zoo.outputs import ModelOutput
from zoo.tracing import tracing

TASKS = ("fill-mask", "feature-extraction")
EPS = 1e-12  # hard-coded in the reference for every LayerNorm
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}  # the two values DistilBertConfig allows


@dataclass
class DistilBertConfig:
    vocab_size: int = 30522
    dim: int = 768
    n_layers: int = 6
    n_heads: int = 12
    hidden_dim: int = 3072
    activation: str = "gelu"
    max_position_embeddings: int = 512
    dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: Optional[int] = 0
    mlm_head: bool = True  # zoo's switch: fill-mask builds the head, feature-extraction does not

    @classmethod
    def from_hf(cls, config: Dict[str, Any], task: str = "fill-mask") -> "DistilBertConfig":
        """Build from Hugging Face DistilBERT config values; refuse what this file does not do."""
        if task not in TASKS:
            raise ConfigError(f"distilbert: task {task!r} is not supported (tasks: {', '.join(TASKS)})")
        model_type = config.get("model_type", "distilbert")
        if model_type != "distilbert":
            raise ConfigError(f"distilbert: config field model_type={model_type!r} is not 'distilbert'")
        known = {f.name for f in fields(cls)} - {"mlm_head"}
        values = {k: v for k, v in config.items() if k in known and v is not None}
        for key in ("vocab_size", "dim", "n_layers", "n_heads", "hidden_dim", "max_position_embeddings"):
            v = values.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ConfigError(f"distilbert: config field {key}={v!r} must be a positive integer")
        cfg = cls(**values, mlm_head=task == "fill-mask")
        if cfg.activation not in ACTIVATIONS:
            raise ConfigError(
                f"distilbert: config field activation={cfg.activation!r} is not supported "
                f"(supported: {', '.join(sorted(ACTIVATIONS))})"
            )
        if cfg.dim % cfg.n_heads:
            raise ConfigError(f"distilbert: config field dim={cfg.dim} is not divisible by n_heads={cfg.n_heads}")
        # older configs say tie_weights_, newer ones tie_word_embeddings
        for key in ("tie_weights_", "tie_word_embeddings"):
            if cfg.mlm_head and config.get(key) is False:
                raise ConfigError(
                    f"distilbert: config field {key}=False is not supported: the MLM projection "
                    f"reuses the word embeddings"
                )
        # sinusoidal_pos_embds=True needs nothing special: the reference stores the sinusoid
        # table in position_embeddings.weight like a learned one, so it comes with the weights.
        return cfg


# ----------------------------------------------------------------------------- embeddings


class Embeddings(nn.Module):
    """word + position embeddings, LayerNorm, dropout (no token types in DistilBERT)."""

    def __init__(self, cfg: DistilBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.dim)
        self.LayerNorm = nn.LayerNorm(cfg.dim, eps=EPS)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.size(1), device=input_ids.device)  # 0..T-1, padding or not
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos)  # (B, T, dim)
        return self.dropout(self.LayerNorm(x))


# ----------------------------------------------------------------------------- transformer block


class MultiHeadSelfAttention(nn.Module):
    """Bidirectional attention with separate q, k, v and output projections."""

    def __init__(self, cfg: DistilBertConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.q_lin = nn.Linear(cfg.dim, cfg.dim)
        self.k_lin = nn.Linear(cfg.dim, cfg.dim)
        self.v_lin = nn.Linear(cfg.dim, cfg.dim)
        self.out_lin = nn.Linear(cfg.dim, cfg.dim)
        self.dropout_p = cfg.attention_dropout

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_heads
        q = self.q_lin(x).view(B, T, self.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_lin(x).view(B, T, self.n_heads, hs).transpose(1, 2)
        v = self.v_lin(x).view(B, T, self.n_heads, hs).transpose(1, 2)
        # mask: (B, 1, 1, T) bool, True = a real token every query may attend to
        p = self.dropout_p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out_lin(y.transpose(1, 2).reshape(B, T, C))


class FFN(nn.Module):
    """dim -> hidden_dim -> activation -> dim."""

    def __init__(self, cfg: DistilBertConfig):
        super().__init__()
        self.lin1 = nn.Linear(cfg.dim, cfg.hidden_dim)
        self.lin2 = nn.Linear(cfg.hidden_dim, cfg.dim)
        self.act = ACTIVATIONS[cfg.activation]
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.lin2(self.act(self.lin1(x))))


class TransformerBlock(nn.Module):
    """Post-norm: the LayerNorm comes after each residual sum, as in BERT."""

    def __init__(self, cfg: DistilBertConfig):
        super().__init__()
        self.attention = MultiHeadSelfAttention(cfg)
        self.sa_layer_norm = nn.LayerNorm(cfg.dim, eps=EPS)
        self.ffn = FFN(cfg)
        self.output_layer_norm = nn.LayerNorm(cfg.dim, eps=EPS)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.sa_layer_norm(self.attention(x, mask) + x)
        return self.output_layer_norm(self.ffn(x) + x)


class Transformer(nn.Module):
    def __init__(self, cfg: DistilBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))


class VocabProjector(nn.Module):
    """The MLM output projection. Its weight is the word embedding matrix (passed in at call
    time, so one tensor has one name); only the bias belongs here."""

    def __init__(self, cfg: DistilBertConfig):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(x, word_embeddings, self.bias)  # (B, T, vocab)


# ----------------------------------------------------------------------------- the model


class DistilBert(nn.Module):
    """``model(input_ids, attention_mask=None)`` -> :class:`ModelOutput` with
    ``last_hidden_state`` [B, T, dim], and ``logits`` [B, T, vocab] when built for fill-mask."""

    def __init__(self, cfg: DistilBertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.transformer = Transformer(cfg)
        if cfg.mlm_head:
            self.vocab_transform = nn.Linear(cfg.dim, cfg.dim)
            self.act = ACTIVATIONS[cfg.activation]
            self.vocab_layer_norm = nn.LayerNorm(cfg.dim, eps=EPS)
            self.vocab_projector = VocabProjector(cfg)

    def _check(self, input_ids, attention_mask) -> None:
        cfg = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int):
            shape = list(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise InputError(f"distilbert expects token ids of shape [B, T] (int64), got {shape}")
        B, T = input_ids.shape
        if B == 0 or T == 0:
            raise InputError("distilbert: empty input (no tokens)")
        if T > cfg.max_position_embeddings:
            raise InputError(f"distilbert: {T} tokens exceed the {cfg.max_position_embeddings} positions of this model")
        if attention_mask is not None and tuple(attention_mask.shape) != (B, T):
            raise InputError(f"distilbert: attention_mask has shape {list(attention_mask.shape)}, input_ids {[B, T]}")
        if tracing():
            return  # a traced graph (zoo convert --to onnx) records no check of values
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= cfg.vocab_size:
            raise InputError(f"distilbert: token ids must be in [0, {cfg.vocab_size}), got {lo}..{hi}")
        if attention_mask is not None:
            if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
                raise InputError("distilbert: attention_mask must hold 0 (padding) and 1 (token) only")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        self._check(input_ids, attention_mask)
        mask = None  # no padding, no mask (traced: the mask, whatever it holds)
        if attention_mask is not None and (tracing() or not bool(attention_mask.all())):
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        x = self.embeddings(input_ids)  # (B, T, dim)
        hidden = [x] if output_hidden_states else None  # transformers: embeddings, then each block
        for block in self.transformer.layer:
            x = block(x, mask)
            if hidden is not None:
                hidden.append(x)
        out = ModelOutput(last_hidden_state=x, hidden_states=tuple(hidden) if hidden else None)
        if self.config.mlm_head:
            h = self.vocab_layer_norm(self.act(self.vocab_transform(x)))
            out.logits = self.vocab_projector(h, self.embeddings.word_embeddings.weight)
        return out


def from_config(config: Dict[str, Any], task: Optional[str] = None) -> DistilBert:
    return DistilBert(DistilBertConfig.from_hf(config, task or TASKS[0]))


def example_inputs(config: Dict[str, Any], task: str, batch: int, seq: int, generator) -> Dict[str, Any]:
    """Random ids and padding at the end of every row after the first (exercises the mask)."""
    cfg = DistilBertConfig.from_hf(config, task)
    seq = min(seq, cfg.max_position_embeddings)
    input_ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=generator)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    for b in range(1, batch):
        attention_mask[b, max(1, seq - b * max(1, seq // (2 * batch))):] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}
