"""``zoo run`` for image classifiers: the top labels of each image with their probabilities."""
from __future__ import annotations

import torch

from ..errors import InputError
from ..imaging import preprocess, settings_for


def label_names(config, num_labels):
    """Label names from the config's ``id2label`` (keys may be strings, as in config.json);
    ``LABEL_i`` where a config names no labels (as transformers does)."""
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(num_labels)]


def run(loaded, inputs, opts, emit):
    if not inputs:
        raise InputError("give one or more image files: zoo run MODEL cat.jpg [dog.png ...]")
    if opts.top < 1:
        raise InputError(f"--top must be at least 1, got {opts.top}")
    settings = settings_for(loaded)
    pixels = preprocess(list(inputs), settings).to(device=loaded.device, dtype=loaded.dtype)
    with torch.inference_mode():
        logits = loaded.model(pixels).logits
    probs = logits.float().softmax(dim=-1).cpu()
    names = label_names(loaded.config, probs.shape[-1])
    k = min(opts.top, probs.shape[-1])
    results = []
    for path, row in zip(inputs, probs):
        p, idx = row.topk(k)
        top = [{"label": names[i], "index": int(i), "probability": float(q)} for q, i in zip(p, idx.tolist())]
        results.append({"image": str(path), "top": top})
        if not opts.json:
            emit(f"{path}\n")
            for t in top:
                emit(f"  {t['probability']:7.2%}  {t['label']}\n")
    return {"model": loaded.entry.name, "preprocessing": settings, "results": results}
