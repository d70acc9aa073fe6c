"""GPT-2 (Radford et al., 2019), readable top to bottom.

A decoder-only transformer: token + learned position embeddings, ``n_layer`` pre-norm blocks
(LayerNorm -> causal self-attention -> residual, LayerNorm -> MLP -> residual), a final
LayerNorm, and an output head that reuses the token embedding matrix (tied weights).

The same transformer classifies text (task ``text-classification``, :class:`GPT2Classifier`):
a linear ``score`` head (no bias) reads the final hidden state of each row's last token that
is not the padding token, the only position whose causal attention has seen the whole text.

Submodules carry the names of the Hugging Face checkpoint (``wte``, ``h.N.attn.c_attn``, ...)
so the converter's key map is almost 1:1; the only layout change is that GPT-2's ``Conv1D``
stores weights as ``[in, out]`` while ``nn.Linear`` wants ``[out, in]``. The config
(:class:`GPT2Config`) is GPT-2's own; zoo.converters.hf_gpt2 translates a checkpoint's into it.

Training: given ``labels``, ``forward`` returns the loss as transformers' classes compute it
(zoo.losses: the next-token loss for the language model, the classification loss of the
config's ``problem_type`` for the classifier). Dropout sits where GPT-2 has it: on the
embeddings (``embd_pdrop``), on the attention probabilities (``attn_pdrop``) and on each block's
attention and MLP outputs before the residual sum (``resid_pdrop``); it acts in training mode
only, and in eval mode the model computes exactly what it computes without it.

Generation (zoo.generation) uses a preallocated key/value cache: each new token runs the blocks
on that token alone, writes its keys/values in place, and attends over the cache. The model
offers generation its small step interface: :meth:`GPT2.new_cache`, :meth:`GPT2.hidden` and
:meth:`GPT2.head`. Its fast paths (a decoding step without module calls, packed weights, the
screen of the head) live in zoo.accel, not here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo import generation, kvcache, losses
from zoo.activations import ACTIVATIONS
from zoo.errors import ConfigError, InputError
from zoo.outputs import ModelOutput
from zoo.tracing import tracing

TASKS = ("text-generation", "text-classification")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


@dataclass
class GPT2Config:
    """GPT-2's hyperparameters, named as OpenAI's released ``hparams.json`` names them where it
    has them; the defaults are GPT-2 small (124M)."""

    n_vocab: int = 50257  # tokens in the vocabulary: rows of wte, columns of the logits
    n_ctx: int = 1024  # positions the model reads: rows of wpe
    n_embd: int = 768  # width of the residual stream
    n_head: int = 12  # attention heads, each n_embd // n_head wide
    n_layer: int = 12  # blocks
    mlp_width: Optional[int] = None  # hidden width of the MLP; None means 4 * n_embd
    activation: str = "gelu_new"  # the MLP's activation, a name in zoo.activations.ACTIVATIONS
    norm_eps: float = 1e-5  # epsilon of every LayerNorm
    n_labels: int = 2  # outputs of the classifier's score head (task text-classification)
    # the padding token: a classifier reads each row's last token that is not it; None: no
    # padding, the classifier reads the last position (and takes one row at a time)
    pad_id: Optional[int] = None
    # dropout probabilities (training mode only), named as OpenAI's GPT training code names them
    embd_pdrop: float = 0.1  # on the sum of the token and position embeddings
    attn_pdrop: float = 0.1  # on the attention probabilities
    resid_pdrop: float = 0.1  # on each block's attention output and MLP output, before the residual sum
    # the classifier's loss: "regression", "single_label_classification" or
    # "multi_label_classification"; None: chosen from the labels (zoo.losses.classification)
    problem_type: Optional[str] = None

    def __post_init__(self):
        """Refuse, naming the field, a config this file cannot build."""
        for name in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer", "mlp_width", "n_labels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"gpt2: {name}={value!r} must be at least 1")
        if self.pad_id is not None and self.pad_id < 0:
            raise ConfigError(f"gpt2: pad_id={self.pad_id!r} must be a token id (at least 0)")
        if self.n_embd % self.n_head:
            raise ConfigError(f"gpt2: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        for name in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"gpt2: {name}={value!r} must be a probability (from 0 to 1)")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"gpt2: problem_type={self.problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"gpt2: activation={self.activation!r} is not supported (supported: {', '.join(sorted(ACTIVATIONS))})"
            )


class KVCache(kvcache.KVCache):
    """Keys and values of every layer, preallocated for ``max_len`` positions (zoo.kvcache)."""

    def __init__(self, cfg: GPT2Config, batch: int, max_len: int, device, dtype):
        super().__init__(cfg.n_layer, batch, cfg.n_head, max_len, cfg.n_embd // cfg.n_head, device, dtype)


class Attention(nn.Module):
    """Causal multi-head self-attention with one fused q|k|v projection; in training mode,
    dropout on the attention probabilities and on the output."""

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # columns: q | k | v
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.attn_pdrop = cfg.attn_pdrop  # applied inside scaled_dot_product_attention
        self.resid_dropout = nn.Dropout(cfg.resid_pdrop)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache], layer: int,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``mask`` (without a cache): (B, 1, T, T) bool, True where a query may attend a key
        (:func:`padding_mask`); None: causal."""
        B, T, C = x.shape
        # (B, T, 3C) -> (3, B, nh, T, hs): q, k and v with their heads apart, as one view
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        p = self.attn_pdrop if self.training else 0.0
        if cache is None:
            q, k, v = qkv.unbind(0)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=mask is None)
        else:
            past = cache.length
            q = qkv[0]
            k, v = cache.update_kv(layer, qkv[1:])  # each (B, nh, past + T, hs)
            if T == 1:  # one new token sees every cached position: no mask needed
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
            else:  # new token t (at position past + t) sees positions <= past + t
                pos = torch.arange(past + T, device=x.device)
                mask = pos[None, :] <= (pos[past:, None])
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, C)  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        inner = cfg.mlp_width or 4 * cfg.n_embd
        self.c_fc = nn.Linear(cfg.n_embd, inner)
        self.c_proj = nn.Linear(inner, cfg.n_embd)
        self.act = ACTIVATIONS[cfg.activation]
        self.dropout = nn.Dropout(cfg.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache], layer: int,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, mask)
        return x + self.mlp(self.ln_2(x))


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) with 1 at tokens and 0 at padding -> (B, 1, T, T) bool: query t may attend key s
    when s <= t and s is a token, as transformers masks GPT-2's attention. Each position also
    sees itself: that changes nothing at tokens, and keeps a padding position from having no key
    at all (a softmax over nothing is NaN in some torch versions, and NaN would reach the tokens
    through the next layer's values even at weight 0). What padding positions compute carries
    no meaning and differs from transformers'; the classifier reads a token's."""
    T = attention_mask.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()
    diagonal = torch.eye(T, dtype=torch.bool, device=attention_mask.device)
    return (causal & attention_mask.bool()[:, None, None, :]) | diagonal


def check_labels(labels: torch.Tensor, shape, classes: Optional[int], what: str) -> None:
    """Refuse ``labels`` whose shape does not begin with ``shape`` (``what`` says why it must),
    or, where ``classes`` is given, that are not class ids in [0, classes) or -100."""
    if tuple(labels.shape[:len(shape)]) != tuple(shape):
        raise InputError(f"gpt2: labels have shape {list(labels.shape)}, {what}")
    if classes is not None:
        if labels.is_floating_point():
            raise InputError(f"gpt2: labels must be class ids (integers), got {labels.dtype}")
        wrong = (labels != losses.IGNORE) & ((labels < 0) | (labels >= classes))
        if bool(wrong.any()):
            raise InputError(f"gpt2: label {int(labels[wrong][0])} is not a class id in [0, {classes}) "
                             f"nor {losses.IGNORE} (ignored)")


class GPT2(nn.Module):
    """GPT-2 language model (task ``text-generation``): ``model(input_ids)`` -> output with
    ``.logits`` [B, T, vocab]; ``model(input_ids, labels=ids)`` adds ``.loss``, the next-token
    cross-entropy as ``GPT2LMHeadModel`` computes it (the labels are shifted inside; labels of
    -100 count for nothing)."""

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.n_vocab, cfg.n_embd)  # also the output head (tied)
        self.wpe = nn.Embedding(cfg.n_ctx, cfg.n_embd)
        self.drop = nn.Dropout(cfg.embd_pdrop)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)

    def check_ids(self, input_ids: torch.Tensor, room: int = 0, past: int = 0) -> None:
        """Refuse ids that are not [B, T] integers in the vocabulary, or that leave fewer than
        ``room`` positions of the context after ``past`` cached ones."""
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int):
            raise InputError(f"gpt2 expects token ids of shape [B, T] (int64), got {list(input_ids.shape)} {input_ids.dtype}")
        if input_ids.size(1) == 0:
            raise InputError("gpt2: empty input (no tokens)")
        if past + input_ids.size(1) + room > self.config.n_ctx:
            raise InputError(
                f"gpt2: {past + input_ids.size(1) + room} tokens exceed the context of "
                f"{self.config.n_ctx} positions"
            )
        if tracing():
            return  # a graph records no check of values (zoo.tracing)
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.config.n_vocab:
            raise InputError(f"gpt2: token ids must be in [0, {self.config.n_vocab}), got {lo}..{hi}")

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
        output_hidden_states: bool = False,
        last_token_only: bool = False,
    ) -> ModelOutput:
        """``labels`` [B, T]: the token each position is, the input ids themselves usually
        (:func:`zoo.losses.causal_lm` shifts them); -100 where a token counts for nothing, such
        as padding (and, with left padding, each row's first token: padding predicts it).
        ``attention_mask``: as :meth:`padding` reads it (without a cache)."""
        self.check_ids(input_ids, past=cache.length if cache is not None else 0)
        if labels is not None:
            if last_token_only:
                raise InputError("gpt2: labels need the logits of every position, last_token_only gives one")
            check_labels(labels, input_ids.shape, self.config.n_vocab,
                         f"not the input ids' {list(input_ids.shape)}")
        if attention_mask is not None and cache is not None:
            raise InputError("gpt2: an attention_mask is read without a cache only")
        x, hidden = self.hidden(input_ids, cache, output_hidden_states, self.padding(input_ids, attention_mask))
        if last_token_only:
            x = x[:, -1:]
        logits = self.logits(x)
        return ModelOutput(logits=logits, hidden_states=tuple(hidden) if hidden else None,
                           loss=None if labels is None else losses.causal_lm(logits, labels.to(logits.device)))

    def padding(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """``attention_mask`` (B, T), 1 at tokens and 0 at padding, as the attention mask
        :meth:`hidden` takes (:func:`padding_mask`), which keeps padding out of the attention
        (what left padding needs; right padding comes after every token anyway); None where
        there is no padding."""
        if attention_mask is None:
            return None
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise InputError(f"gpt2: attention_mask has shape {list(attention_mask.shape)}, the input ids "
                             f"{list(input_ids.shape)}")
        if not tracing() and bool(attention_mask.all()):
            return None  # traced: the mask, whatever it holds (zoo.tracing)
        return padding_mask(attention_mask)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, vocab): the head is the token embedding (tied)."""
        return F.linear(x, self.wte.weight)

    def hidden(self, input_ids, cache: Optional[KVCache] = None, output_hidden_states: bool = False,
               mask: Optional[torch.Tensor] = None):
        """The blocks and the final LayerNorm: (B, T, C), and the hidden states if asked.
        With a ``cache``, ``input_ids`` continue what it holds, and it is advanced; without one,
        ``mask`` (:func:`padding_mask`) may keep padding out of the attention."""
        past = cache.length if cache is not None else 0
        T = input_ids.size(1)
        pos = torch.arange(past, past + T, device=input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))  # (B, T, C)
        hidden = [x] if output_hidden_states else None
        for i, block in enumerate(self.h):
            x = block(x, cache, i, mask)
            if hidden is not None and i < len(self.h) - 1:
                hidden.append(x)
        x = self.ln_f(x)
        if hidden is not None:  # transformers' convention: the last entry is after ln_f
            hidden.append(x)
        if cache is not None:
            cache.length += T
        return x, hidden

    # -- the step interface zoo.generation decodes through
    def new_cache(self, batch: int, max_len: int) -> KVCache:
        w = self.wte.weight
        return KVCache(self.config, batch, max_len, w.device, w.dtype)

    def head(self):
        """The output head as ``(weight [vocab, C], bias or None)``: logits = x @ weightᵀ."""
        return self.wte.weight, None

    # model.generate(input_ids, ...): greedy, sampling or beam search, as transformers' generate
    generate = generation.generate


class GPT2Classifier(GPT2):
    """GPT-2 as a sequence classifier (task ``text-classification``): ``model(input_ids,
    attention_mask=None)`` -> output with ``.logits`` [B, n_labels], the ``score`` head at each
    row's last token (:meth:`last_tokens`); with ``labels=``, ``.loss`` as
    ``GPT2ForSequenceClassification`` computes it on those logits (the config's
    ``problem_type``, or the one the labels imply: :func:`zoo.losses.classification`)."""

    def __init__(self, cfg: GPT2Config):
        super().__init__(cfg)
        self.score = nn.Linear(cfg.n_embd, cfg.n_labels, bias=False)

    def last_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B,) the position the score is read at in each row: the rightmost token that is not
        the pad id (right and left padding alike; position 0 for a row of padding only), as
        transformers picks it. Without a pad id, the last position: a row's own last token
        only when there is one row, so a batch of several is refused, as transformers does."""
        B, T = input_ids.shape
        if self.config.pad_id is None:
            if B > 1:
                raise InputError(f"gpt2: {B} rows need a pad_id to tell where each row ends; the config has "
                                 f"none: classify one row at a time")
            return torch.full((B,), T - 1, device=input_ids.device)
        positions = torch.arange(T, device=input_ids.device)
        return (positions * (input_ids != self.config.pad_id)).argmax(-1)  # argmax: the first of equal maxima

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        """``attention_mask``: as :meth:`padding` reads it. ``labels``: a class id per row (B,)
        for single-label classification, a float per label (B, n_labels) for multi-label, a
        float per row (B,) (or per label) for regression."""
        self.check_ids(input_ids)
        kind = None
        if labels is not None:
            B, n = input_ids.size(0), self.config.n_labels
            kind = losses.problem_type(n, labels, self.config.problem_type)
            if kind == "single_label_classification":
                check_labels(labels, (B,), n, f"not a class id per input row ([{B}])")
            elif n > 1:
                check_labels(labels, (B, n), None, f"not a value per label of each input row ([{B}, {n}])")
            else:
                check_labels(labels, (B,), None, f"not a value per input row ([{B}])")
        x, hidden = self.hidden(input_ids, None, output_hidden_states, self.padding(input_ids, attention_mask))
        rows = torch.arange(x.size(0), device=x.device)
        logits = self.score(x[rows, self.last_tokens(input_ids)])  # (B, n_labels)
        return ModelOutput(logits=logits, hidden_states=tuple(hidden) if hidden else None,
                           loss=None if labels is None else losses.classification(logits, labels, kind))


def from_config(config: Dict[str, Any], task: Optional[str] = None) -> GPT2:
    """The model for ``task`` from a config in :class:`GPT2Config`'s names (defaults for the
    fields left out)."""
    task = task or TASKS[0]
    if task not in TASKS:
        raise ConfigError(f"gpt2: task {task!r} is not supported (tasks: {', '.join(TASKS)})")
    cfg = GPT2Config(**config)
    return GPT2Classifier(cfg) if task == "text-classification" else GPT2(cfg)


def parameter_count(config: Dict[str, Any], task: Optional[str] = None) -> int:
    """The parameters :func:`from_config` builds, from the config alone (checked before building)."""
    cfg = GPT2Config(**config)
    C, inner = cfg.n_embd, cfg.mlp_width or 4 * cfg.n_embd
    block = 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + 2 * C + (C * inner + inner) + (inner * C + C)
    head = C * cfg.n_labels if task == "text-classification" else 0  # the language model's is wte
    return cfg.n_vocab * C + cfg.n_ctx * C + cfg.n_layer * block + 2 * C + head


def example_inputs(config: Dict[str, Any], task: str, batch: int, seq: int, generator) -> Dict[str, Any]:
    """Random token ids [batch, seq] (at most the context). A classifier's rows are padded on
    the right with the pad id (the first row full, the others 1 to seq - 1 tokens long, none
    of them the pad id), with their ``attention_mask``, so that each row's score is read at
    another position; without a pad id (or one outside the vocabulary) there is no padding,
    and without a pad id only one row (see :meth:`GPT2Classifier.last_tokens`)."""
    cfg = GPT2Config(**config)
    T = min(seq, cfg.n_ctx)
    if task != "text-classification":
        return {"input_ids": torch.randint(0, cfg.n_vocab, (batch, T), generator=generator)}
    if cfg.pad_id is None:
        return {"input_ids": torch.randint(0, cfg.n_vocab, (1, T), generator=generator)}
    pad = cfg.pad_id
    if pad >= cfg.n_vocab or cfg.n_vocab == 1:  # no padding token can be written
        return {"input_ids": torch.randint(0, cfg.n_vocab, (batch, T), generator=generator)}
    ids = torch.randint(0, cfg.n_vocab - 1, (batch, T), generator=generator)
    ids += (ids >= pad).long()  # every id but the pad id
    lengths = torch.randint(1, max(T, 2), (batch,), generator=generator).clamp(max=T)
    lengths[0] = T
    attention_mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids.masked_fill(attention_mask == 0, pad), "attention_mask": attention_mask}
