"""``zoo verify --train``: the training loss and every gradient, zoo against transformers, on the
same weights and the same batch with labels.

Both models compute in eval mode with gradients on: dropout off (as the parity is defined), the
speed layer stepping aside under autograd as it does in training. The reference's gradients,
named as its parameters are, go through the converter's own key map (renames, transforms: the
same ones that load the weights), so each lands on the zoo parameter it belongs to; a tied
weight has one gradient, the sum of its uses, on both sides. Passing means a loss within 1e-5
relative and every parameter's gradient within 1e-4 of its norm.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

import torch

from .convert import convert
from .errors import InputError, ZooError
from .losses import IGNORE
from .types import import_ref

LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4


@dataclass
class TrainReport:
    model: str
    task: str
    weights: str
    passed: bool
    loss: float
    reference_loss: float
    loss_rel_diff: float
    parameters: int
    worst_parameter: str
    worst_grad_rel_diff: float
    failing: Dict[str, float] = field(default_factory=dict)  # parameter -> relative difference

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def render(self) -> str:
        mark = "ok  " if self.loss_rel_diff <= LOSS_RTOL else "FAIL"
        lines = [f"model      {self.model} ({self.task}), training: loss and gradients",
                 f"weights    {self.weights}",
                 f"{mark}       loss {self.loss:.6g}, transformers {self.reference_loss:.6g} "
                 f"(relative difference {self.loss_rel_diff:.2g}, tolerance {LOSS_RTOL:g})"]
        mark = "ok  " if self.worst_grad_rel_diff <= GRAD_RTOL else "FAIL"
        lines.append(f"{mark}       gradients of {self.parameters} parameters; worst {self.worst_parameter}: "
                     f"{self.worst_grad_rel_diff:.2g} of its norm (tolerance {GRAD_RTOL:g})")
        for name, diff in list(self.failing.items())[:8]:
            lines.append(f"FAIL       {name}: {diff:.2g} of its norm")
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


def with_labels(inputs: Dict[str, Any], task: str, config: Dict[str, Any], generator) -> Dict[str, Any]:
    """``inputs`` (an architecture's example inputs) with random labels for ``task``, in the
    keyword names both zoo's model and the reference take."""
    out = dict(inputs)
    mask = inputs.get("attention_mask")
    if task in ("text-generation", "fill-mask", "token-classification"):
        ids = inputs["input_ids"]
        if task == "token-classification":
            labels = torch.randint(0, _labels(config), ids.shape, generator=generator)
        else:
            labels = ids.clone()
        if mask is not None:
            labels = labels.masked_fill(mask == 0, IGNORE)
        out["labels"] = labels
    elif task == "translation":
        target = out.pop("decoder_input_ids")
        labels = torch.randint(1, int(config.get("vocab_size") or config.get("tgt_vocab") or 8),
                               target.shape, generator=generator)
        labels[:, -1] = IGNORE  # padding in the targets counts for nothing
        out["labels"] = labels
    elif task in ("text-classification", "image-classification"):
        rows = next(iter(inputs.values())).shape[0]
        kind = config.get("problem_type")
        n = _labels(config)
        if kind == "regression" or n == 1:
            out["labels"] = torch.randn(rows, n, generator=generator).squeeze(-1)
        elif kind == "multi_label_classification":
            out["labels"] = torch.randint(0, 2, (rows, n), generator=generator).float()
        else:
            out["labels"] = torch.randint(0, n, (rows,), generator=generator)
    elif task == "question-answering":
        rows, T = inputs["input_ids"].shape
        out["start_positions"] = torch.randint(0, T, (rows,), generator=generator)
        out["end_positions"] = torch.randint(0, T, (rows,), generator=generator)
    elif task == "multiple-choice":
        rows, choices = inputs["input_ids"].shape[:2]
        out["labels"] = torch.randint(0, choices, (rows,), generator=generator)
    else:
        raise InputError(f"{task} has no training loss to verify (tasks with one: text-generation, fill-mask, "
                         f"translation, text-, token- and image-classification, question-answering, multiple-choice)")
    return out


def _labels(config: Dict[str, Any]) -> int:
    return int(config.get("num_labels") or len(config.get("id2label") or {}) or 2)


def verify_training(name_or_path: str, *, checkpoint=None, seed: int = 0, batch: int = 2, seq: int = 16,
                    allow_pickle: bool = False, random_weights: bool = False, task: Optional[str] = None,
                    converter=None) -> TrainReport:
    """The training loss and gradients of ``name_or_path`` against transformers' (CPU, float32)."""
    from .loading import load_full, resolve
    from .registry import get_catalog
    from .verification import prepare_weights

    catalog = get_catalog()
    entry = resolve(str(name_or_path), catalog)
    converter = converter or catalog.converter(entry.converter)
    task = task or entry.task
    source = prepare_weights(entry, converter, checkpoint, allow_pickle, random_weights, seed, task)
    loaded = load_full(source.load_name, checkpoint=source.folder, device="cpu", allow_pickle=allow_pickle,
                       converter=converter, task=task)
    ref = source.reference(loaded).float()
    gen = torch.Generator().manual_seed(seed)
    inputs = import_ref(loaded.architecture.example_inputs)(loaded.arch_config, task, batch, seq, gen)
    inputs = with_labels(inputs, task, loaded.config, gen)
    model = loaded.model
    for m in (model, ref):
        m.eval().requires_grad_(True)
        m.zero_grad(set_to_none=True)
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its notes on the loss it picks are not ours to print
    try:
        ours, theirs = model(**inputs).loss, ref(**inputs).loss
    finally:
        hf_logging.set_verbosity(level)
    if ours is None or theirs is None:
        raise ZooError(f"{entry.name}: {'zoo' if ours is None else 'transformers'} gives no loss for {task}")
    ours.backward()
    theirs.backward()
    ref_grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach()
                 for n, p in ref.named_parameters()}
    our_params = dict(model.named_parameters())
    mapped, _ = convert(ref_grads, converter, {n: p for n, p in our_params.items()})
    # a gradient that is zero in exact arithmetic (attention key biases) holds rounding noise:
    # below 1e-6 of the whole gradient's norm, a gradient is measured against that floor
    total = float(torch.stack([g.norm() for g in mapped.values()]).norm())
    diffs = {}
    for name, p in our_params.items():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        want = mapped[name].to(g.dtype)
        diffs[name] = float((g - want).abs().max()) / max(float(want.norm()), 1e-6 * total, 1e-30)
    worst = max(diffs, key=diffs.get)
    ours, theirs = float(ours.detach()), float(theirs.detach())
    loss_rel = abs(ours - theirs) / max(abs(theirs), 1e-12)
    failing = {n: d for n, d in sorted(diffs.items(), key=lambda kv: -kv[1]) if d > GRAD_RTOL}
    passed = loss_rel <= LOSS_RTOL and not failing
    report = TrainReport(entry.name, task, source.describe(loaded), passed, ours, theirs, loss_rel,
                         len(diffs), worst, diffs[worst], failing)
    if source.tmp is not None:
        source.tmp.cleanup()
    return report
