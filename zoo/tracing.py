"""Whether a model's forward runs eagerly or is being traced into a graph.

``torch.export`` (and so ``zoo convert --to onnx``), ``torch.compile`` and ``torch.jit.trace``
record the operations of one call; a Python branch on a tensor's *values* (is any token out of
the vocabulary? is there any padding?) cannot be recorded, and would bake that one call's answer
into the graph. The architectures therefore check input values and take value-dependent
shortcuts only when :func:`tracing` is False; traced, they compute the general case (an
attention mask whether or not it masks anything), which gives the same outputs.
"""
from __future__ import annotations

import torch


def tracing() -> bool:
    """True while torch.export, torch.compile or torch.jit.trace records the forward."""
    return bool(torch.compiler.is_exporting() or torch.compiler.is_compiling() or torch.jit.is_tracing())
