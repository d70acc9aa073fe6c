"""``zoo run NAME TEXT`` for sequence classifiers: the labels with their scores.

Scores as transformers' text-classification pipeline computes them from the config: a sigmoid
per label for ``problem_type: multi_label_classification`` (or a single label), the raw value
for ``regression``, else a softmax over the labels. Label names from ``id2label``.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from .feature_extraction import encode
from .image_classification import label_names


def score_function(config, num_labels: int) -> str:
    """``"sigmoid"``, ``"softmax"`` or ``"none"``: how the pipeline turns logits into scores."""
    problem = config.get("problem_type")
    if problem == "regression":
        return "none"
    if problem == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    return "softmax"


def run(loaded, inputs, opts, emit):
    if opts.top < 1:
        raise InputError(f"--top must be >= 1, got {opts.top}")
    ids, tok = encode(loaded, inputs, opts)
    input_ids = torch.tensor([ids], dtype=torch.long, device=loaded.device)
    with torch.inference_mode():
        logits = loaded.model(input_ids, attention_mask=torch.ones_like(input_ids)).logits
    if logits is None or logits.dim() != 2:
        raise InputError(f"{loaded.entry.name} was loaded for {loaded.task!r}: it gives no classification logits")
    row = logits[0].float().cpu()
    function = score_function(loaded.config, row.numel())
    scores = {"sigmoid": row.sigmoid(), "softmax": row.softmax(-1), "none": row}[function]
    names = label_names(loaded.config, row.numel())
    order = scores.argsort(descending=True)[: opts.top].tolist()
    labels = [{"label": names[i], "index": i, "score": float(scores[i])} for i in order]
    if not opts.json:
        for item in labels:
            emit(f"{item['score']:10.4f}  {item['label']}\n")
    return {"model": loaded.entry.name, "input_ids": ids, "function": function, "labels": labels}
