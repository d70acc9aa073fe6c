"""The Transformer encoder-decoder (Vaswani et al., 2017), readable top to bottom.

The structure and names follow Harvard NLP's *Annotated Transformer*: an ``EncoderDecoder``
holding an ``Encoder`` and a ``Decoder`` (stacks of ``EncoderLayer``/``DecoderLayer``), whose
sublayers (``MultiHeadedAttention``, ``PositionwiseFeedForward``) are wrapped in a
``SublayerConnection`` (residual + LayerNorm), token ``Embeddings`` plus a sinusoidal
``PositionalEncoding``, and a ``Generator`` that turns decoder states into vocabulary scores.

Two families of checkpoints fill it, and everything that differs between them is a config
switch named for what it means (see :class:`EncoderDecoderConfig`):

==========================  ===========================  ===============================
switch                      Annotated Transformer         Marian / opus-mt
==========================  ===========================  ===============================
norm_placement              "pre": x + f(norm(x))         "post": norm(x + f(x))
layer_norm                  "unbiased_std":               "torch": nn.LayerNorm,
                            (x-mean)/(std+eps), eps 1e-6  (x-mean)/sqrt(var+eps), 1e-5
sinusoid_layout             "interleaved" (sin, cos, ..)  "halves" (sin... | cos...)
scale_embedding             True (* sqrt(d_model))        True (opus-mt) or False
share_embeddings            False (``src_embed`` and      True (one ``shared`` table) or
                            ``tgt_embed``)                False (separate vocabularies)
tie_output                  False (own ``proj``)          True (the decoder's table) or
                                                          False (own ``proj``)
final_logits_bias           False (``proj`` has a bias)   True (a [1, V] buffer instead)
activation                  relu                          swish (opus-mt), relu (tc-big)
final_norms                 True (norm after each stack)  False
log_softmax_output          True (log-probabilities)      False (logits)
pad_embedding_gradient      True                          False (the pad row of a token
                                                          table learns nothing from lookups)
==========================  ===========================  ===============================

The output projection is the decoder's embedding table (``tie_output``) or its own ``proj``;
its bias is ``proj``'s own or, with ``final_logits_bias``, a [1, V] buffer added to the logits
(``proj`` then has none).

Training: ``model(input_ids, labels=labels, attention_mask=...)`` feeds the decoder the labels
shifted right behind ``decoder_start_token_id`` (teacher forcing, -100 read as the pad token, as
MarianMTModel does) and returns ``.loss``, the cross-entropy of the scores against the labels
with -100 ignored (zoo.losses.token_cross_entropy; on the log-probabilities of
``log_softmax_output`` that is their negative log-likelihood). Dropout, active in training mode
only: ``dropout`` on the embeddings (after the positions are added) and on every sublayer's
output before its residual sum, ``attention_dropout`` on the attention probabilities,
``activation_dropout`` after the feed-forward's activation. These are where MarianMTModel and
the Annotated Transformer apply theirs.

Generation (zoo.generation.generate_seq2seq: greedy and beam search) runs the encoder once and
then the decoder one token at a time over a preallocated key/value cache: self-attention
keys/values are written in place, and the cross-attention keys/values of the encoder output are
computed once per layer. It reproduces transformers' ``generate`` for Marian (its logits
processors: ``bad_words_ids``, ``forced_eos_token_id``, ``renormalize_logits``, which this model
hands over as data; beam search with its length penalty and ``early_stopping`` heuristic), so
the token ids are identical. Like transformers' ``generate``, it defaults to the checkpoint's
decoding settings (``num_beams``, ``max_new_tokens``, ...), which the converter reads from the
checkpoint's config and generation config.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo import kvcache, losses
from zoo.activations import ACTIVATIONS
from zoo.errors import ConfigError, InputError
from zoo import generation
from zoo.outputs import ModelOutput
from zoo.tracing import tracing



# ---------------------------------------------------------------------------------- config


@dataclass
class EncoderDecoderConfig:
    """Sizes, numerics switches and generation defaults. Defaults are the paper's base model as
    built by the Annotated Transformer's ``make_model`` (N=6, d_model=512, d_ff=2048, h=8).
    Converters translate their checkpoint format's config into these names
    (converters/annotated.py, converters/hf_marian.py); an unknown name is refused."""

    src_vocab_size: int = 37000
    tgt_vocab_size: int = 37000
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_heads: int = 8
    decoder_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    activation: str = "relu"
    dropout: float = 0.1  # on sublayer outputs and embeddings (training only)
    attention_dropout: float = 0.1  # on attention probabilities
    activation_dropout: float = 0.1  # inside the feed-forward, after the activation
    max_positions: int = 5000  # longest sequence the sinusoid table covers
    # numerics switches (see the module docstring)
    norm_placement: str = "pre"  # "pre" | "post"
    layer_norm: str = "unbiased_std"  # "unbiased_std" | "torch"
    layer_norm_eps: float = 1e-6
    sinusoid_layout: str = "interleaved"  # "interleaved" | "halves"
    scale_embedding: bool = True
    share_embeddings: bool = False  # one token table for both stacks (one vocabulary)
    tie_output: bool = False  # output projection = the decoder's token table, else its own proj
    final_logits_bias: bool = False  # the output bias is a [1, V] buffer, else proj's own bias
    final_norms: bool = True
    log_softmax_output: bool = True
    # False: looking up pad_token_id adds no gradient to its row of a token table (nn.Embedding's
    # padding_idx); the row of a tied output projection still learns from the logits
    pad_embedding_gradient: bool = True
    # special tokens and generation defaults (the keywords of zoo.generation)
    pad_token_id: int = 0
    eos_token_id: Optional[int] = None
    decoder_start_token_id: int = 0
    forced_eos_token_id: Optional[int] = None
    bad_words_ids: Tuple[int, ...] = ()  # single tokens never generated (Marian: the pad token)
    renormalize_logits: bool = False
    length_penalty: float = 1.0
    early_stopping: Any = False  # False | True | "never"
    num_beams: int = 1  # generate()'s default: 1 is greedy
    max_new_tokens: int = 64  # generate()'s default length

    CHOICES = {
        "norm_placement": ("pre", "post"),
        "layer_norm": ("unbiased_std", "torch"),
        "sinusoid_layout": ("interleaved", "halves"),
        "activation": tuple(ACTIVATIONS),
    }

    @classmethod
    def from_dict(cls, config: Dict[str, Any]) -> "EncoderDecoderConfig":
        """The config from a dict of this class's field names; an unknown name is refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(f"encoder_decoder: unknown config field {unknown[0]}={config[unknown[0]]!r}")
        cfg = cls(**config)
        cfg.bad_words_ids = tuple(cfg.bad_words_ids)
        return cfg.check()

    def check(self) -> "EncoderDecoderConfig":
        for key, allowed in self.CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(
                    f"encoder_decoder: config field {key}={getattr(self, key)!r} is not supported "
                    f"(supported: {', '.join(allowed)})"
                )
        for side in ("encoder", "decoder"):
            heads = getattr(self, f"{side}_heads")
            if heads <= 0 or self.d_model % heads:
                raise ConfigError(f"encoder_decoder: d_model={self.d_model} is not divisible by {side}_heads={heads}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ConfigError(
                f"encoder_decoder: share_embeddings=True needs one vocabulary, got src_vocab_size="
                f"{self.src_vocab_size} and tgt_vocab_size={self.tgt_vocab_size}"
            )
        if self.early_stopping not in (True, False, "never"):
            raise ConfigError(f"encoder_decoder: config field early_stopping={self.early_stopping!r} is not supported")
        for key in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"encoder_decoder: config field {key}={value!r} must be a probability from 0 to 1")
        if not self.pad_embedding_gradient and not 0 <= self.pad_token_id < min(self.src_vocab_size,
                                                                                self.tgt_vocab_size):
            raise ConfigError(
                f"encoder_decoder: pad_token_id={self.pad_token_id} is outside a token table "
                f"(pad_embedding_gradient=False needs the pad token's row)"
            )
        if self.d_model % 2:
            raise ConfigError(f"encoder_decoder: d_model={self.d_model} must be even (sinusoids come in sin/cos pairs)")
        return self


# ---------------------------------------------------------------------------------- leaf modules


class LayerNorm(nn.Module):
    """LayerNorm with the Annotated Transformer's parameter names ``a_2`` (gain), ``b_2`` (bias).

    ``"torch"``:         a_2 * (x - mean) / sqrt(var + eps) + b_2   (biased var; nn.LayerNorm)
    ``"unbiased_std"``:  a_2 * (x - mean) / (std + eps) + b_2       (unbiased std, eps outside
                                                                     the root: the Annotated one)
    """

    def __init__(self, features: int, eps: float, formula: str):
        super().__init__()
        self.a_2 = nn.Parameter(torch.ones(features))
        self.b_2 = nn.Parameter(torch.zeros(features))
        self.eps = eps
        self.formula = formula

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.formula == "torch":
            return F.layer_norm(x, x.shape[-1:], self.a_2, self.b_2, self.eps)
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)  # unbiased (divides by n - 1)
        return self.a_2 * (x - mean) / (std + self.eps) + self.b_2


def sinusoids(length: int, d_model: int, layout: str, device=None, dtype=torch.float32) -> torch.Tensor:
    """The fixed position table (length, d_model): angle(pos, i) = pos / 10000^(2i / d_model).

    ``"interleaved"``: columns sin(a0), cos(a0), sin(a1), cos(a1), ...   (Annotated, the paper)
    ``"halves"``:      columns sin(a0), sin(a1), ..., cos(a0), cos(a1), ... (Marian)

    Computed in float64 and rounded once, as transformers does for Marian.
    """
    pos = torch.arange(length, dtype=torch.float64, device=device)[:, None]
    inv_freq = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64, device=device) / d_model)
    angles = pos * inv_freq  # (length, d_model / 2)
    if layout == "interleaved":
        table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)
    else:
        table = torch.cat((angles.sin(), angles.cos()), dim=-1)
    return table.to(dtype)


class PositionalEncoding(nn.Module):
    """Adds the sinusoid rows of positions ``offset .. offset + T`` (no stored buffer: the
    table is computed on first use and cached as a plain attribute, never in the state dict)."""

    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__()
        self.d_model, self.layout, self.max_positions = cfg.d_model, cfg.sinusoid_layout, cfg.max_positions
        self.dropout = nn.Dropout(cfg.dropout)
        self._table: Optional[torch.Tensor] = None

    def table(self, length: int, like: torch.Tensor) -> torch.Tensor:
        t = self._table
        if t is None or t.size(0) < length or t.device != like.device or t.dtype != like.dtype:
            size = min(self.max_positions, max(length, 128 if t is None else 2 * t.size(0)))
            t = self._table = sinusoids(size, self.d_model, self.layout, like.device, like.dtype)
        return t[:length]

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return self.dropout(x + self.table(offset + x.size(1), x)[offset:])


class Embeddings(nn.Module):
    """Token lookup table ``lut``, scaled by sqrt(d_model) when ``scale_embedding``; without
    ``pad_embedding_gradient``, the pad token's row gets no gradient from the lookup."""

    def __init__(self, cfg: EncoderDecoderConfig, vocab: int):
        super().__init__()
        padding_idx = None if cfg.pad_embedding_gradient else cfg.pad_token_id
        self.lut = nn.Embedding(vocab, cfg.d_model, padding_idx=padding_idx)
        self.scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lut(ids) * self.scale


class KVCache(kvcache.KVCache):
    """Decoder keys/values for incremental decoding, allocated per ``generate`` call and grown
    as needed (zoo.kvcache).

    Self-attention: ``k``/``v`` are (n_layer, B, nh, capacity, hs); ``length`` positions are
    filled and each step writes its one new position in place. Cross-attention: the encoder
    output's keys/values never change while decoding, so each layer computes them on its first
    step and keeps them in ``cross`` (n_layer entries of (B, nh, S, hs)).

    Beam search reorders rows with :meth:`reorder`, which gathers into a second preallocated
    buffer and swaps the two (no allocation per step). The cross-attention entries need no
    reordering: beams only ever move within their own batch item, and all beams of an item share
    the same source sentence.
    """

    def __init__(self, cfg: EncoderDecoderConfig, batch: int, max_len: int, device, dtype):
        hs = cfg.d_model // cfg.decoder_heads
        super().__init__(cfg.decoder_layers, batch, cfg.decoder_heads, max_len, hs, device, dtype)
        self.cross: List[Optional[Tuple[torch.Tensor, torch.Tensor]]] = [None] * cfg.decoder_layers


class MultiHeadedAttention(nn.Module):
    """Scaled dot-product attention over ``h`` heads. ``linears`` are the q, k, v and output
    projections, in that order (the Annotated Transformer's ``linears.0..3``)."""

    def __init__(self, h: int, d_model: int, dropout: float):
        super().__init__()
        self.h, self.d_k = h, d_model // h
        self.linears = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(4))
        self.dropout = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, h, T, d_k)
        B, T, _ = x.shape
        return x.view(B, T, self.h, self.d_k).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        memory: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        causal: bool = False,
        cache: Optional[KVCache] = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """Self-attention when ``memory`` is None, else attention from ``query`` to ``memory``.

        ``mask`` (bool, True = may attend) broadcasts to (B, h, T_q, T_k); ``causal`` hides
        later positions. With a ``cache``, self-attention appends this step's keys/values and
        attends over all of them; cross-attention reuses the memory's cached keys/values.
        """
        B, T, C = query.shape
        q = self._split(self.linears[0](query))
        if memory is not None:  # cross-attention
            kv = cache.cross[layer] if cache is not None else None
            if kv is None:
                kv = (self._split(self.linears[1](memory)), self._split(self.linears[2](memory)))
                if cache is not None:
                    cache.cross[layer] = kv
            k, v = kv
        else:
            k, v = self._split(self.linears[1](query)), self._split(self.linears[2](query))
            if cache is not None:
                past = cache.length
                k, v = cache.update(layer, k, v)  # (B, h, past + T, d_k)
                if causal and T > 1:  # new token t (at position past + t) sees positions <= past + t
                    pos = torch.arange(past + T, device=query.device)
                    mask = pos[None, :] <= pos[past:, None]
                causal = False  # a single new token may see every cached position
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, h, T, d_k)
        return self.linears[3](y.transpose(1, 2).reshape(B, T, C))  # heads side by side


class PositionwiseFeedForward(nn.Module):
    """w_2(dropout(act(w_1(x)))), applied to each position alike."""

    def __init__(self, d_model: int, d_ff: int, activation: str, dropout: float):
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        self.act = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(self.act(self.w_1(x))))


class SublayerConnection(nn.Module):
    """A residual connection around ``sublayer`` with its LayerNorm ``norm``:

    pre-norm  (Annotated):  x + dropout(sublayer(norm(x)))
    post-norm (Marian):     norm(x + dropout(sublayer(x)))
    """

    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__()
        self.norm = LayerNorm(cfg.d_model, cfg.layer_norm_eps, cfg.layer_norm)
        self.dropout = nn.Dropout(cfg.dropout)
        self.pre = cfg.norm_placement == "pre"

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.pre:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


# ---------------------------------------------------------------------------------- stacks


class EncoderLayer(nn.Module):
    """Self-attention, then feed-forward; each in a SublayerConnection."""

    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__()
        self.self_attn = MultiHeadedAttention(cfg.encoder_heads, cfg.d_model, cfg.attention_dropout)
        self.feed_forward = PositionwiseFeedForward(cfg.d_model, cfg.encoder_ffn_dim, cfg.activation, cfg.activation_dropout)
        self.sublayer = nn.ModuleList(SublayerConnection(cfg) for _ in range(2))

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        x = self.sublayer[0](x, lambda y: self.self_attn(y, mask=src_mask))
        return self.sublayer[1](x, self.feed_forward)


class Encoder(nn.Module):
    """``encoder_layers`` EncoderLayers, then (Annotated) a final LayerNorm ``norm``."""

    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.norm = LayerNorm(cfg.d_model, cfg.layer_norm_eps, cfg.layer_norm) if cfg.final_norms else None

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor, hidden: Optional[list] = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, src_mask)
            if hidden is not None:
                hidden.append(x)
        if self.norm is not None:
            x = self.norm(x)
            if hidden is not None:  # transformers' convention: the last entry is after the norm
                hidden[-1] = x
        return x


class DecoderLayer(nn.Module):
    """Masked self-attention, attention over the encoder output (``src_attn``), feed-forward."""

    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__()
        self.self_attn = MultiHeadedAttention(cfg.decoder_heads, cfg.d_model, cfg.attention_dropout)
        self.src_attn = MultiHeadedAttention(cfg.decoder_heads, cfg.d_model, cfg.attention_dropout)
        self.feed_forward = PositionwiseFeedForward(cfg.d_model, cfg.decoder_ffn_dim, cfg.activation, cfg.activation_dropout)
        self.sublayer = nn.ModuleList(SublayerConnection(cfg) for _ in range(3))

    def forward(self, x, memory, src_mask, cache: Optional[KVCache], layer: int) -> torch.Tensor:
        x = self.sublayer[0](x, lambda y: self.self_attn(y, causal=True, cache=cache, layer=layer))
        x = self.sublayer[1](x, lambda y: self.src_attn(y, memory, mask=src_mask, cache=cache, layer=layer))
        return self.sublayer[2](x, self.feed_forward)


class Decoder(nn.Module):
    """``decoder_layers`` DecoderLayers, then (Annotated) a final LayerNorm ``norm``."""

    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.norm = LayerNorm(cfg.d_model, cfg.layer_norm_eps, cfg.layer_norm) if cfg.final_norms else None

    def forward(self, x, memory, src_mask, cache: Optional[KVCache] = None, hidden: Optional[list] = None):
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, src_mask, cache, i)
            if hidden is not None:
                hidden.append(x)
        if self.norm is not None:
            x = self.norm(x)
            if hidden is not None:
                hidden[-1] = x
        return x


class Generator(nn.Module):
    """Decoder states -> vocabulary scores.

    Annotated: its own ``proj`` (Linear with bias), then log_softmax.
    Marian: the decoder's embedding matrix (tied) or its own ``proj`` (no bias), plus the
    ``final_logits_bias`` buffer [1, V].
    """

    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__()
        bias = not cfg.final_logits_bias  # one output bias: proj's own, or the buffer below
        self.proj = None if cfg.tie_output else nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=bias)
        if cfg.final_logits_bias:
            self.register_buffer("final_logits_bias", torch.zeros(1, cfg.tgt_vocab_size))
        else:
            self.final_logits_bias = None
        self.log_softmax = cfg.log_softmax_output

    def tied(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The tied projection: (B, T, C) -> (B, T, V)."""
        return F.linear(x, weight)

    def forward(self, x: torch.Tensor, tied_weight: torch.Tensor) -> torch.Tensor:
        logits = self.tied(x, tied_weight) if self.proj is None else self.proj(x)
        if self.final_logits_bias is not None:
            logits = logits + self.final_logits_bias
        return F.log_softmax(logits, dim=-1) if self.log_softmax else logits


# ---------------------------------------------------------------------------------- the model


class EncoderDecoder(nn.Module):
    """``model(input_ids, decoder_input_ids, attention_mask=None)`` -> ``.logits`` [B, T_tgt, V]
    (log-probabilities when ``log_softmax_output``); ``model(input_ids, labels=...)`` -> also
    ``.loss``; ``model.generate(input_ids, ...)``."""

    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # token tables: one ``shared`` by both stacks, or ``src_embed`` and ``tgt_embed``
        shared = cfg.share_embeddings
        self.shared = Embeddings(cfg, cfg.src_vocab_size) if shared else None
        self.src_embed = None if shared else Embeddings(cfg, cfg.src_vocab_size)
        self.tgt_embed = None if shared else Embeddings(cfg, cfg.tgt_vocab_size)
        self.src_pos = PositionalEncoding(cfg)
        self.tgt_pos = PositionalEncoding(cfg)
        self.generator = Generator(cfg)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Fresh initialization as ``make_model`` does it: Glorot/xavier-uniform for every
        matrix; Linear biases as nn.Linear's default (uniform within 1/sqrt(fan_in)); LayerNorm
        gains 1 and biases 0; ``final_logits_bias`` 0."""
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                bound = 1.0 / math.sqrt(module.in_features)
                nn.init.uniform_(module.bias, -bound, bound)
            elif isinstance(module, LayerNorm):
                nn.init.ones_(module.a_2)
                nn.init.zeros_(module.b_2)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        if self.generator.final_logits_bias is not None:
            self.generator.final_logits_bias.zero_()

    # -- inputs
    def _check_ids(self, ids: torch.Tensor, vocab: int, what: str, offset: int = 0) -> None:
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.long, torch.int):
            shape = list(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise InputError(f"encoder_decoder: {what} must be token ids of shape [B, T] (int64), got {shape}")
        if ids.size(1) == 0:
            raise InputError(f"encoder_decoder: {what} is empty (no tokens)")
        if offset + ids.size(1) > self.config.max_positions:
            raise InputError(
                f"encoder_decoder: {what} has {offset + ids.size(1)} positions; the model covers "
                f"{self.config.max_positions}"
            )
        if tracing():
            return  # a graph records no check of values (zoo.tracing)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab:
            raise InputError(f"encoder_decoder: {what} must be in [0, {vocab}), got {lo}..{hi}")

    def _src_mask(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, 1, 1, S) bool, True where a source position may be attended to (not padding)."""
        if attention_mask is None:
            return torch.ones(input_ids.shape[0], 1, 1, input_ids.shape[1], dtype=torch.bool, device=input_ids.device)
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise InputError(
                f"encoder_decoder: attention_mask shape {list(attention_mask.shape)} differs from "
                f"input_ids {list(input_ids.shape)}"
            )
        mask = attention_mask.to(input_ids.device) != 0
        if not tracing() and not bool(mask.any(dim=1).all()):
            raise InputError("encoder_decoder: a row of attention_mask masks every source token")
        return mask[:, None, None, :]

    def _embed_src(self) -> Embeddings:
        return self.shared if self.shared is not None else self.src_embed

    def _embed_tgt(self) -> Embeddings:
        return self.shared if self.shared is not None else self.tgt_embed

    # -- the two halves
    def encode(self, input_ids, attention_mask=None, hidden: Optional[list] = None):
        """Source ids (B, S) -> (memory (B, S, C), src_mask (B, 1, 1, S))."""
        self._check_ids(input_ids, self.config.src_vocab_size, "input_ids")
        src_mask = self._src_mask(input_ids, attention_mask)
        x = self.src_pos(self._embed_src()(input_ids))
        if hidden is not None:
            hidden.append(x)
        return self.encoder(x, src_mask, hidden), src_mask

    def decode(self, memory, src_mask, tgt_ids, cache: Optional[KVCache] = None, hidden: Optional[list] = None):
        """Target ids (B, T) -> decoder states (B, T, C); with a cache, ``tgt_ids`` are the
        positions after ``cache.length`` and the cache advances by T."""
        past = cache.length if cache is not None else 0
        x = self.tgt_pos(self._embed_tgt()(tgt_ids), offset=past)
        if hidden is not None:
            hidden.append(x)
        x = self.decoder(x, memory, src_mask, cache, hidden)
        if cache is not None:
            cache.length += tgt_ids.size(1)
        return x

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(x, self._embed_tgt().lut.weight)

    def _check_labels(self, labels: Any, input_ids: torch.Tensor, decoder_input_ids: Optional[torch.Tensor]) -> None:
        vocab = self.config.tgt_vocab_size
        rows = input_ids.size(0) if isinstance(input_ids, torch.Tensor) and input_ids.dim() else None
        if (not isinstance(labels, torch.Tensor) or labels.dim() != 2 or labels.dtype not in (torch.long, torch.int)
                or labels.size(0) != rows or labels.size(1) == 0):
            shape = list(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise InputError(f"encoder_decoder: labels must be target ids [B, T] (int64), one row per input row, "
                             f"got {shape}")
        if decoder_input_ids is not None and tuple(decoder_input_ids.shape) != tuple(labels.shape):
            raise InputError(f"encoder_decoder: labels {list(labels.shape)} and decoder_input_ids "
                             f"{list(decoder_input_ids.shape)} differ in shape")
        bad = labels[(labels != losses.IGNORE) & ((labels < 0) | (labels >= vocab))]
        if bad.numel():
            raise InputError(f"encoder_decoder: label {int(bad[0])} is neither a target id in [0, {vocab}) "
                             f"nor {losses.IGNORE} (ignored)")

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        """Teacher-forced scores of ``decoder_input_ids`` given ``input_ids``.

        ``labels`` [B, T] (target ids, -100 where nothing is to be predicted): ``.loss`` is the
        cross-entropy of the scores against them; without ``decoder_input_ids`` the decoder
        reads the labels shifted right behind ``decoder_start_token_id``, -100 as
        ``pad_token_id`` (MarianMTModel's teacher forcing).

        ``hidden_states`` (with ``output_hidden_states=True``): the encoder's states (embeddings,
        then after each layer) followed by the decoder's, i.e. transformers'
        ``encoder_hidden_states + decoder_hidden_states``.
        """
        cfg = self.config
        if labels is not None:
            self._check_labels(labels, input_ids, decoder_input_ids)
            if decoder_input_ids is None:
                decoder_input_ids = losses.shift_right(labels, cfg.decoder_start_token_id, cfg.pad_token_id)
        if decoder_input_ids is None:
            raise InputError("encoder_decoder: give decoder_input_ids, or labels to shift right into them")
        self._check_ids(decoder_input_ids, cfg.tgt_vocab_size, "decoder_input_ids")
        if decoder_input_ids.size(0) != input_ids.size(0):
            raise InputError(
                f"encoder_decoder: input_ids has {input_ids.size(0)} rows, decoder_input_ids {decoder_input_ids.size(0)}"
            )
        hidden: Optional[list] = [] if output_hidden_states else None
        memory, src_mask = self.encode(input_ids, attention_mask, hidden)
        x = self.decode(memory, src_mask, decoder_input_ids, hidden=hidden)
        logits = self.project(x)
        loss = None if labels is None else losses.token_cross_entropy(logits, labels)
        return ModelOutput(logits=logits, last_hidden_state=x, hidden_states=tuple(hidden) if hidden else None,
                           loss=loss)

    # -- generation (zoo.generation.generate_seq2seq), through this step interface
    def new_cache(self, batch: int, max_len: int) -> KVCache:
        w = self._embed_tgt().lut.weight
        return KVCache(self.config, batch, max_len, w.device, w.dtype)

    def head(self):
        """The output projection as ``(weight [V, C], bias or None)``: the decoder's embedding
        table (tied) or ``proj``'s weight, with ``final_logits_bias`` (Marian) or ``proj``'s bias
        (Annotated; its log_softmax changes no ranking, so generation leaves it out)."""
        g = self.generator
        weight = self._embed_tgt().lut.weight if g.proj is None else g.proj.weight
        if g.final_logits_bias is not None:
            return weight, g.final_logits_bias
        return weight, None if g.proj is None else g.proj.bias

    def processors(self) -> generation.Processors:
        """transformers' logits processors for these models: ``bad_words_ids`` (other than eos)
        banned, ``forced_eos_token_id`` on the last step, ``renormalize_logits``."""
        cfg = self.config
        return generation.Processors(
            banned=tuple(t for t in cfg.bad_words_ids if t != cfg.eos_token_id),
            forced_eos_token_id=cfg.forced_eos_token_id,
            renormalize=cfg.renormalize_logits,
        )

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        max_new_tokens: Optional[int] = None,
        num_beams: Optional[int] = None,
        length_penalty: Optional[float] = None,
        early_stopping: Any = None,
    ) -> torch.Tensor:
        """Translate ``input_ids`` [B, S]; returns [B, 1 + n] target ids as transformers'
        ``generate`` does: starting with ``decoder_start_token_id``, rows that finished early
        padded with ``pad_token_id``. Greedy when ``num_beams`` is 1, else beam search.
        Arguments left at ``None`` take the checkpoint's defaults (its generation config)."""
        cfg = self.config
        n = cfg.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        num_beams = cfg.num_beams if num_beams is None else num_beams
        if n < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {n}")
        if int(num_beams) < 1:
            raise InputError(f"num_beams must be >= 1, got {num_beams}")
        if n + 1 > cfg.max_positions:
            raise InputError(f"encoder_decoder: max_new_tokens={n} exceeds the {cfg.max_positions} target positions")
        return generation.generate_seq2seq(
            self, input_ids, attention_mask, n, int(num_beams),
            cfg.length_penalty if length_penalty is None else float(length_penalty),
            cfg.early_stopping if early_stopping is None else early_stopping,
            cfg.decoder_start_token_id, cfg.eos_token_id, cfg.pad_token_id,
        )


def from_config(config: Dict[str, Any], task: Optional[str] = None) -> EncoderDecoder:
    """Build the model. On the meta device (zoo assigns checkpoint tensors next) nothing is
    initialized; built for real (an entry without weights, for training) it gets
    ``make_model``'s fresh initialization, written once into uninitialized memory."""
    cfg = EncoderDecoderConfig.from_dict(config)
    device = torch.empty(0).device  # the device the caller builds on (a torch.device context)
    if device.type == "meta":
        return EncoderDecoder(cfg)
    with torch.device("meta"):
        model = EncoderDecoder(cfg)
    model.to_empty(device=device)
    model.init_weights()
    return model


def parameter_count(config: Dict[str, Any], task: Optional[str] = None) -> int:
    """The parameters :func:`from_config` builds, from the config alone (checked before building)."""
    cfg = EncoderDecoderConfig.from_dict(config)
    d = cfg.d_model
    attention, norm = 4 * (d * d + d), 2 * d

    def ffn(width: int) -> int:
        return (d * width + width) + (width * d + d)

    encoder = cfg.encoder_layers * (attention + ffn(cfg.encoder_ffn_dim) + 2 * norm)
    decoder = cfg.decoder_layers * (2 * attention + ffn(cfg.decoder_ffn_dim) + 3 * norm)
    finals = 2 * norm if cfg.final_norms else 0
    embeddings = cfg.src_vocab_size * d + (0 if cfg.share_embeddings else cfg.tgt_vocab_size * d)
    head = 0 if cfg.tie_output else d * cfg.tgt_vocab_size + (0 if cfg.final_logits_bias else cfg.tgt_vocab_size)
    return embeddings + encoder + decoder + finals + head


def example_inputs(config: Dict[str, Any], task: str, batch: int, seq: int, generator) -> Dict[str, Any]:
    """Source ids with the last row right-padded (a padded batch), and target ids starting with
    the decoder start token; keyword names both zoo's model and MarianMTModel accept."""
    cfg = EncoderDecoderConfig.from_dict(config)
    seq = max(2, min(seq, cfg.max_positions))
    special = {cfg.pad_token_id, cfg.decoder_start_token_id}
    high = min(cfg.src_vocab_size, cfg.tgt_vocab_size)
    ids = torch.randint(0, high, (batch, seq), generator=generator)
    for t in special:  # keep pad/start out of the content
        ids = torch.where(ids == t, (t + 1) % high, ids)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if batch > 1:
        mask[-1, seq // 2 :] = 0
        ids[-1, seq // 2 :] = cfg.pad_token_id
    dec = torch.randint(0, high, (batch, seq), generator=generator)
    dec = torch.where(dec == cfg.pad_token_id, (cfg.pad_token_id + 1) % high, dec)
    dec[:, 0] = cfg.decoder_start_token_id
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec}
