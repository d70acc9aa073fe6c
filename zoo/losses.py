"""The training losses of zoo's models, computed as transformers computes them for the matching
classes, so that a loss (and its gradients) from zoo equals transformers' on the same weights.

Every loss works in float32 whatever the logits' dtype (transformers upcasts too), ignores the
label :data:`IGNORE` (-100) where labels are per token, and averages over the counted labels.
Architectures call these from ``forward(..., labels=...)``; a training loop may call them too.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

IGNORE = -100  # a label that counts for nothing (padding, unmasked tokens, the prompt)


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of per-token ``logits`` [..., V] against ``labels`` [...], averaged over the
    tokens whose label is not :data:`IGNORE` (masked LM, token classification, seq2seq)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device),
                           ignore_index=IGNORE, label_smoothing=label_smoothing)


def next_tokens(labels: torch.Tensor) -> torch.Tensor:
    """``labels`` [B, T] shifted one to the left, :data:`IGNORE` after the last: what position t
    predicts. Scoring the logits [B, T, V] against these leaves them whole (slicing the last
    position off first would copy every logit)."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE)


def causal_lm(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Next-token loss: the logits at position t [B, T, V] predict ``labels`` at t + 1 [B, T]
    (the labels are the input ids, shifted inside, as transformers does)."""
    return token_cross_entropy(logits, next_tokens(labels), label_smoothing)


def problem_type(num_labels: int, labels: torch.Tensor, given: Optional[str] = None) -> str:
    """transformers' rule when a config names no ``problem_type``: one label is regression,
    integer labels single-label classification, anything else multi-label."""
    if given:
        return given
    if num_labels == 1:
        return "regression"
    if labels.dtype in (torch.long, torch.int):
        return "single_label_classification"
    return "multi_label_classification"


def classification(logits: torch.Tensor, labels: torch.Tensor, kind: Optional[str] = None) -> torch.Tensor:
    """Sequence (or image, or choice) classification ``logits`` [B, L] against ``labels``:
    mean squared error for regression, cross-entropy for single-label, binary cross-entropy
    with logits for multi-label (:func:`problem_type` picks when ``kind`` is None)."""
    num_labels = logits.shape[-1]
    kind = problem_type(num_labels, labels, kind)
    labels = labels.to(logits.device)
    logits = logits.float()
    if kind == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze().float())
        return F.mse_loss(logits, labels.float())
    if kind == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    if kind == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    raise ValueError(f"problem type {kind!r} (regression, single_label_classification, multi_label_classification)")


def span(start_logits: torch.Tensor, end_logits: torch.Tensor, start_positions: torch.Tensor,
         end_positions: torch.Tensor) -> torch.Tensor:
    """Extractive question answering: the mean of the start and end cross-entropies; positions
    outside the sequence [B, T] count for nothing (clamped to T and ignored, as transformers)."""
    T = start_logits.shape[1]
    start = start_positions.reshape(-1).clamp(0, T).to(start_logits.device)
    end = end_positions.reshape(-1).clamp(0, T).to(end_logits.device)
    loss_start = F.cross_entropy(start_logits.float(), start, ignore_index=T)
    loss_end = F.cross_entropy(end_logits.float(), end, ignore_index=T)
    return (loss_start + loss_end) / 2


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Teacher forcing: the decoder reads the labels shifted right behind ``start_id`` [B, T],
    with :data:`IGNORE` labels read as ``pad_id`` (transformers' ``shift_tokens_right``)."""
    out = labels.new_empty(labels.shape)
    out[:, 1:] = labels[:, :-1]
    out[:, 0] = start_id
    return out.masked_fill(out == IGNORE, pad_id)


def label_smoothed_kl(log_probs: torch.Tensor, labels: torch.Tensor, smoothing: float, pad_id: int) -> torch.Tensor:
    """The Annotated Transformer's label smoothing: the KL divergence from ``log_probs`` [..., V]
    to the smoothed target distribution (``1 - smoothing`` on the label, the rest spread over
    the other tokens but padding), summed over the tokens that are not padding (or
    :data:`IGNORE`) and divided by their count."""
    V = log_probs.shape[-1]
    lp = log_probs.float().reshape(-1, V)
    target = labels.reshape(-1).to(lp.device)
    keep = (target != IGNORE) & (target != pad_id)
    true = torch.full_like(lp, smoothing / (V - 2))
    true.scatter_(1, target.clamp(min=0)[:, None], 1.0 - smoothing)
    true[:, pad_id] = 0.0
    true[~keep] = 0.0
    return F.kl_div(lp, true, reduction="sum") / keep.sum().clamp(min=1)
