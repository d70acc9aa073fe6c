"""``zoo run`` for image encoders: one embedding per image (the pooler output when the
checkpoint has a pooler, else the final class-token state)."""
from __future__ import annotations

import torch

from ..errors import InputError
from ..imaging import preprocess, settings_for


def run(loaded, inputs, opts, emit):
    if not inputs:
        raise InputError("give one or more image files: zoo run MODEL cat.jpg [dog.png ...]")
    settings = settings_for(loaded)
    pixels = preprocess(list(inputs), settings).to(device=loaded.device, dtype=loaded.dtype)
    with torch.inference_mode():
        out = loaded.model(pixels)
    pooled = out.pooler_output is not None
    vectors = (out.pooler_output if pooled else out.last_hidden_state[:, 0]).float().cpu()
    kind = "pooler_output" if pooled else "class token (last_hidden_state[:, 0])"
    results = []
    for path, vec in zip(inputs, vectors):
        results.append({"image": str(path), "embedding": vec.tolist()})
        if not opts.json:
            head = ", ".join(f"{v:.4f}" for v in vec[:6].tolist())
            emit(f"{path}: {kind}, {vec.numel()} values [{head}, ...]\n")
    return {
        "model": loaded.entry.name,
        "embedding": kind,
        "last_hidden_state_shape": list(out.last_hidden_state.shape),
        "results": results,
    }
