"""BERT (Devlin et al., 2018), readable top to bottom.

A bidirectional transformer encoder: word + learned position + token-type embeddings and a
LayerNorm, then ``num_hidden_layers`` *post-norm* layers (self-attention -> residual ->
LayerNorm, MLP -> residual -> LayerNorm). On top, the heads of the task it is built for:

* a pooler: ``tanh(W h_[CLS] + b)``, the sentence vector BERT was pretrained to produce
  (``feature-extraction``, as transformers' ``BertModel``);
* a masked-language-model head: dense -> activation -> LayerNorm -> a decoder that reuses the
  word embedding matrix (tied) plus its own bias (``fill-mask``, as ``BertForMaskedLM``, which
  has no pooler);
* a sentence classifier: pooler -> dropout -> ``classifier`` Linear(H, num_labels), logits
  [B, num_labels] (``text-classification``, as ``BertForSequenceClassification``; one head for
  single-label, multi-label and regression models alike: they differ in the loss only);
* a token classifier: each token's last hidden state -> dropout -> ``classifier``, logits
  [B, T, num_labels] (``token-classification``, as ``BertForTokenClassification``, no pooler);
* a span head: ``qa_outputs`` Linear(H, 2), each token's scores as the start and as the end of
  the answer, ``start_logits`` and ``end_logits`` [B, T] (``question-answering``, as
  ``BertForQuestionAnswering``, no pooler);
* a multiple-choice scorer: input [B, C, T], each choice a sequence of its own; pooler ->
  dropout -> ``classifier`` Linear(H, 1), logits [B, C] (``multiple-choice``, as
  ``BertForMultipleChoice``).

Submodules carry the names of the Hugging Face checkpoint without its ``bert.`` prefix
(``embeddings.word_embeddings``, ``encoder.layer.N.attention.self.query``, ``pooler.dense``,
``cls.predictions.transform.dense``, ``classifier``, ``qa_outputs``), so the converter maps
keys 1:1.

The whole size of the model comes from the config; any config value this file does not
implement raises :class:`zoo.errors.ConfigError` naming the field and the value.

Padding is masked: with ``attention_mask``, no token attends to a padding position. (The
speed layer, zoo.accel.bert, skips the work of padding tokens altogether.)

Training: given ``labels`` (question-answering: ``start_positions`` and ``end_positions``),
``forward`` also returns ``loss``, computed by :mod:`zoo.losses` as transformers' class of the
task computes it. Dropout sits where transformers' BERT has it, each rate from the config:
``hidden_dropout_prob`` after the embeddings' LayerNorm and after each sublayer's output
projection (before the residual), ``attention_probs_dropout_prob`` on the attention
probabilities, ``classifier_dropout_prob`` before the classifier (the span head has none). In
eval mode every dropout is the identity.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo import losses
from zoo.activations import ACTIVATIONS
from zoo.errors import ConfigError, InputError
from zoo.outputs import ModelOutput
from zoo.tracing import tracing


TASKS = ("fill-mask", "feature-extraction", "text-classification", "token-classification", "question-answering",
         "multiple-choice")
SENTENCE_TASKS = ("text-classification", "multiple-choice")  # their classifier reads the pooler
CLASSIFIER_TASKS = SENTENCE_TASKS + ("token-classification",)  # dropout -> classifier
# the losses of a text classifier (zoo.losses.classification's kinds)
CLASSIFIER_LOSSES = ("regression", "single_label_classification", "multi_label_classification")


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
    pad_token_id: Optional[int] = 0  # the padding token: its word-embedding row is not trained
    # outputs of the classifier of text- and token-classification (run_classifier.py's name);
    # multiple-choice scores each choice once, question-answering each token as start and end
    num_labels: int = 2
    classifier_dropout_prob: float = 0.1  # dropout before the classifier (training only)
    # the text classifier's training loss, one of CLASSIFIER_LOSSES: mean squared error,
    # cross-entropy or binary cross-entropy per label; None: regression for one label, else
    # cross-entropy for integer labels and binary cross-entropy for others
    classifier_loss: Optional[str] = None
    # zoo's own switches; None means "what the task implies".
    # The pooler: feature-extraction True, fill-mask, token-classification and question-answering
    # False; text-classification and multiple-choice always build it (their classifier reads it).
    add_pooling_layer: Optional[bool] = None
    # The MLM head: fill-mask True, feature-extraction False; the other tasks never build it
    # (their logits are their own head's).
    add_mlm_head: Optional[bool] = None

    def check(self) -> None:
        """Refuse values this file does not implement, naming the field and the value."""
        pad = self.pad_token_id
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < self.vocab_size):
            raise ConfigError(f"bert: config field pad_token_id={pad!r} must be a token id below vocab_size={self.vocab_size}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size", "num_labels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"bert: config field {name}={v!r} must be a positive integer")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACTIVATIONS:
            raise ConfigError(
                f"bert: config field hidden_act={self.hidden_act!r} is not supported "
                f"(supported: {', '.join(sorted(ACTIVATIONS))})"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ConfigError(f"bert: config field {name}={v!r} must be a probability (0 to 1)")
        if self.classifier_loss is not None and self.classifier_loss not in CLASSIFIER_LOSSES:
            raise ConfigError(
                f"bert: config field classifier_loss={self.classifier_loss!r} is not supported "
                f"(supported: {', '.join(CLASSIFIER_LOSSES)})"
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
    if task in SENTENCE_TASKS:
        cfg.add_pooling_layer = True
    elif cfg.add_pooling_layer is None:
        cfg.add_pooling_layer = task == "feature-extraction"
    if cfg.add_mlm_head is None:
        cfg.add_mlm_head = task == "fill-mask"
    elif cfg.add_mlm_head and task not in ("fill-mask", "feature-extraction"):
        raise ConfigError(f"bert: config field add_mlm_head=True: the {task} model's logits are its own head's")
    cfg.check()
    return cfg


# ----------------------------------------------------------------------------- embeddings


class Embeddings(nn.Module):
    """word + position + token type, then LayerNorm and dropout."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
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


def _check_targets(name: str, t: Any, shape, integers: bool = False, classes: Optional[int] = None,
                   ignore: bool = False) -> None:
    """Refuse targets of another shape than ``shape`` (a [B] one also as [B, 1]), of a float
    dtype where ``integers``, or, with ``classes``, outside [0, classes) (-100 too where
    ``ignore``), naming ``name``."""
    shape = tuple(shape)
    if not isinstance(t, torch.Tensor):
        raise InputError(f"bert: {name} must be a tensor of shape {list(shape)}, got {type(t).__name__}")
    if tuple(t.shape) != shape and not (len(shape) == 1 and tuple(t.shape) == (*shape, 1)):
        raise InputError(f"bert: {name} has shape {list(t.shape)}, expected {list(shape)}")
    if integers and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise InputError(f"bert: {name} must hold integers (class ids, positions), got {t.dtype}")
    if classes is not None and t.numel():
        counted = t[t != losses.IGNORE] if ignore else t
        if counted.numel() and (int(counted.min()) < 0 or int(counted.max()) >= classes):
            allowed = f"[0, {classes})" + (f" or {losses.IGNORE}" if ignore else "")
            raise InputError(f"bert: {name} must be in {allowed}, got {int(t.min())}..{int(t.max())}")


def _unchanged(t: torch.Tensor) -> torch.Tensor:
    return t


class Bert(nn.Module):
    """``model(input_ids, attention_mask=None, token_type_ids=None, labels=None,
    start_positions=None, end_positions=None)`` -> :class:`ModelOutput`.

    ``input_ids`` are [B, T] (multiple-choice: [B, C, T], the mask and the token types too).
    Every task gives ``last_hidden_state`` [B, T, H], and ``pooler_output`` [B, H] when built
    with a pooler; then, by task:

    ====================  =========================================================
    fill-mask             ``logits`` [B, T, vocab]
    text-classification   ``logits`` [B, num_labels]
    token-classification  ``logits`` [B, T, num_labels]
    question-answering    ``start_logits`` and ``end_logits`` [B, T]
    multiple-choice       ``logits`` [B, C]; the other outputs per choice, [B * C, ...]
    ====================  =========================================================

    Outputs match transformers' class of the task. zoo.accel.bert's unpadding leaves zeros at
    padding positions instead, in every per-token output: a caller that picks among per-token
    scores (an answer span) masks padding, as it must with transformers' values there too.

    With targets, ``loss`` too, as transformers' class of the task computes it (:meth:`loss`):

    ====================  =========================================================
    fill-mask             ``labels`` [B, T] token ids, -100 where no token is predicted
    text-classification   ``labels`` [B] class ids, [B, num_labels] 0/1 per label
                          (multi-label), [B] or [B, num_labels] values (regression)
    token-classification  ``labels`` [B, T] class ids, -100 where none (padding)
    question-answering    ``start_positions`` and ``end_positions`` [B]; a position
                          outside the sequence counts for nothing
    multiple-choice       ``labels`` [B], the right choice of each question
    ====================  =========================================================
    """

    def __init__(self, cfg: BertConfig, task: str):
        super().__init__()
        self.config = cfg
        self.task = task
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        if cfg.add_pooling_layer:
            self.pooler = Pooler(cfg)
        if cfg.add_mlm_head:
            self.cls = MLMHead(cfg)
        if task in CLASSIFIER_TASKS:
            self.dropout = nn.Dropout(cfg.classifier_dropout_prob)
            self.classifier = nn.Linear(cfg.hidden_size, 1 if task == "multiple-choice" else cfg.num_labels)
        if task == "question-answering":
            self.qa_outputs = nn.Linear(cfg.hidden_size, 2)  # a start score and an end score per token

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
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and tuple(t.shape) != (B, T):
                raise InputError(f"bert: {name} has shape {list(t.shape)}, input_ids {[B, T]}")
        if tracing():
            return  # a graph records no check of values (zoo.tracing)
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= cfg.vocab_size:
            raise InputError(f"bert: token ids must be in [0, {cfg.vocab_size}), got {lo}..{hi}")
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
        labels: Optional[torch.Tensor] = None,
        start_positions: Optional[torch.Tensor] = None,
        end_positions: Optional[torch.Tensor] = None,
    ) -> ModelOutput:
        if self.task != "multiple-choice":
            out = self.sequences(input_ids, attention_mask, token_type_ids, output_hidden_states)
        else:
            # (B, C, T): each choice is a sequence of its own; their scores come back as (B, C)
            if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 3:
                shape = list(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
                raise InputError(f"bert (multiple-choice) expects token ids of shape [B, C, T] (C choices), got {shape}")
            B, C, T = input_ids.shape
            for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
                if t is not None and tuple(t.shape) != (B, C, T):
                    raise InputError(f"bert: {name} has shape {list(t.shape)}, input_ids {[B, C, T]}")
            rows = (None if t is None else t.reshape(B * C, T) for t in (input_ids, attention_mask, token_type_ids))
            out = self.sequences(*rows, output_hidden_states)
            out.logits = out.logits.view(B, C)
        if labels is not None or start_positions is not None or end_positions is not None:
            out.loss = self.loss(out, labels, start_positions, end_positions)
        return out

    def loss(self, out: ModelOutput, labels: Optional[torch.Tensor], start_positions: Optional[torch.Tensor] = None,
             end_positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The task's training loss from the outputs ``out``, as transformers' class computes it
        (:mod:`zoo.losses`): cross-entropy per token (fill-mask, token-classification; label
        -100 counts for nothing), the classifier's loss (text-classification: ``classifier_loss``,
        or by the labels when None), cross-entropy over the choices (multiple-choice), the mean
        of the start and end cross-entropies (question-answering)."""
        task = self.task
        if task == "question-answering":
            if labels is not None or start_positions is None or end_positions is None:
                raise InputError("bert (question-answering): the loss takes start_positions and end_positions "
                                 "(the answer's first and last token in each row), not labels")
            B = out.start_logits.shape[0]
            for name, t in (("start_positions", start_positions), ("end_positions", end_positions)):
                _check_targets(name, t, (B,), integers=True)
            return losses.span(out.start_logits, out.end_logits, start_positions, end_positions)
        if start_positions is not None or end_positions is not None:
            raise InputError(f"bert ({task}): start_positions and end_positions are the question-answering "
                             "model's targets; this model takes labels")
        if task == "feature-extraction":
            raise InputError("bert (feature-extraction): the model has no head, so no loss (load it for a task)")
        if not isinstance(labels, torch.Tensor):
            raise InputError(f"bert ({task}): the loss takes labels, a tensor; got {type(labels).__name__}")
        logits = out.logits
        if task in ("fill-mask", "token-classification"):  # per token: (B, T, classes) against (B, T)
            _check_targets("labels", labels, logits.shape[:-1], integers=True, classes=logits.shape[-1], ignore=True)
            return losses.token_cross_entropy(logits, labels.long())
        if task == "multiple-choice":  # (B, C) against the right choice (B,)
            _check_targets("labels", labels, logits.shape[:1], integers=True, classes=logits.shape[1])
            return losses.classification(logits, labels.long(), "single_label_classification")
        kind = self.config.classifier_loss
        B, L = logits.shape
        if kind == "single_label_classification" or (kind is None and L > 1 and labels.dtype in (torch.long, torch.int)):
            _check_targets("labels", labels, (B,), integers=True, classes=L)  # one class id per row
            return losses.classification(logits, labels.long(), "single_label_classification")
        if kind == "regression" or (kind is None and L == 1):  # a value per label
            _check_targets("labels", labels, (B,) if L == 1 else (B, L))
        else:  # 0/1 (or a probability) per label
            _check_targets("labels", labels, (B, L))
        return losses.classification(logits, labels, kind)

    def sequences(self, input_ids, attention_mask, token_type_ids, output_hidden_states: bool) -> ModelOutput:
        """The model on a batch of sequences [B, T] (multiple-choice: one row per choice)."""
        self._check(input_ids, attention_mask, token_type_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)  # one segment, as in the reference
        # positions are 0..T-1 for every row, padding or not (as in the reference)
        positions = torch.arange(input_ids.size(1), device=input_ids.device)
        x = self.embeddings(input_ids, token_type_ids, positions)  # (B, T, H)
        hidden = [x] if output_hidden_states else None  # transformers: embeddings, then each layer
        mask = None  # no padding: no mask at all, as transformers (traced: the mask, whatever it holds)
        if attention_mask is not None and (tracing() or not bool(attention_mask.all())):
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): keys each row may see
        for layer in self.encoder.layer:
            x = layer(x, mask)
            if hidden is not None:
                hidden.append(x)
        return self.heads(x, x[:, 0], hidden)

    def heads(self, x: torch.Tensor, first: torch.Tensor, hidden: Optional[list] = None,
              batched: Callable[[torch.Tensor], torch.Tensor] = _unchanged) -> ModelOutput:
        """The outputs from the last hidden states ``x`` (B, T, H) and ``first`` (B, H), each
        row's state at position 0 (where the pooler reads). The other heads work token by token,
        so ``x`` may hold the tokens in another layout: the speed layer passes its flat (N, H)
        tokens, and ``batched``, which brings a per-token tensor (and each of ``hidden``) back
        to (B, T, ...)."""
        cfg, task = self.config, self.task
        pooled = self.pooler(first) if cfg.add_pooling_layer else None
        out = ModelOutput(last_hidden_state=batched(x), pooler_output=pooled,
                          hidden_states=tuple(batched(h) for h in hidden) if hidden else None)
        if cfg.add_mlm_head:
            out.logits = batched(self.cls.predictions(x, self.embeddings.word_embeddings.weight))  # (B, T, vocab)
        if task in SENTENCE_TASKS:
            out.logits = self.classifier(self.dropout(pooled))  # (B, num_labels); multiple-choice (B * C, 1)
        elif task == "token-classification":
            out.logits = batched(self.classifier(self.dropout(x)))  # (B, T, num_labels)
        elif task == "question-answering":
            scores = batched(self.qa_outputs(x))  # (B, T, 2)
            out.start_logits, out.end_logits = (s.contiguous() for s in scores.unbind(-1))
        return out


def from_config(config: Dict[str, Any], task: Optional[str] = None) -> Bert:
    """The model of ``task`` (default: fill-mask) from ``config``, :class:`BertConfig`'s fields by name."""
    task = task or TASKS[0]
    return Bert(bert_config(config, task), task)


def parameter_count(config: Dict[str, Any], task: Optional[str] = None) -> int:
    """The parameters :func:`from_config` builds, from the config alone (checked before building)."""
    task = task or TASKS[0]
    cfg = bert_config(config, task)
    H, inner = cfg.hidden_size, cfg.intermediate_size
    embeddings = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * H + 2 * H
    layer = 4 * (H * H + H) + 2 * H + (H * inner + inner) + (inner * H + H) + 2 * H
    pooler = H * H + H if cfg.add_pooling_layer else 0
    mlm = (H * H + H) + 2 * H + cfg.vocab_size if cfg.add_mlm_head else 0
    outputs = {"text-classification": cfg.num_labels, "token-classification": cfg.num_labels,
               "question-answering": 2, "multiple-choice": 1}.get(task, 0)
    head = H * outputs + outputs  # the classifier or qa_outputs: weight and bias
    return embeddings + cfg.num_hidden_layers * layer + pooler + mlm + head


CHOICES = 3  # multiple-choice example inputs: choices per question


def example_inputs(config: Dict[str, Any], task: str, batch: int, seq: int, generator) -> Dict[str, Any]:
    """Random ids, two segments (token types 0 then 1), and padding at the end of every row
    after the first, so verification exercises the mask and the token types. Multiple-choice:
    [batch, CHOICES, seq], each choice one such row."""
    cfg = bert_config(config, task)
    rows = batch * CHOICES if task == "multiple-choice" else batch
    seq = min(seq, cfg.max_position_embeddings)
    input_ids = torch.randint(0, cfg.vocab_size, (rows, seq), generator=generator)
    token_type_ids = torch.zeros(rows, seq, dtype=torch.long)
    if cfg.type_vocab_size > 1:
        token_type_ids[:, seq // 2 :] = 1
    attention_mask = torch.ones(rows, seq, dtype=torch.long)
    for b in range(1, rows):
        attention_mask[b, max(1, seq - b * max(1, seq // (2 * rows))) :] = 0
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
    if task == "multiple-choice":
        inputs = {name: t.view(batch, CHOICES, seq) for name, t in inputs.items()}
    return inputs
