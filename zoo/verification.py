"""``zoo verify``: numerical parity against transformers on the same weights.

With a checkpoint at hand (local folder, cache), both sides load those files. Without one
(offline, cold cache), the reference transformers model is built from the entry's config with a
seed, its weights are written as a checkpoint in the Hub's own key layout, and zoo loads that
folder through its normal path — so the whole pipeline is exercised either way.
"""
from __future__ import annotations

import inspect
import json
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from . import accel, progress, randomweights
from . import checkpoint as ckpt
from .version import __version__
from .errors import DownloadError, InputError, ZooError
from .describe import ignored_fields
from .generation import GENERATIVE_TASKS
from .loading import load_full, resolve, weight_files
from .loading import non_finite as find_non_finite
from .registry import get_catalog
from .types import Converter, import_ref

# Tolerance on outputs: |zoo - reference| <= atol + rtol * max|reference|.
TOLERANCE = {
    torch.float32: (1e-4, 1e-5),
    torch.float16: (2e-2, 1e-2),
    torch.bfloat16: (8e-2, 2e-2),
}
OUTPUT_FIELDS = ("logits", "last_hidden_state", "pooler_output", "start_logits", "end_logits")


@dataclass
class Comparison:
    output: str
    max_abs_diff: float
    max_rel_diff: float
    tolerance: float
    passed: bool


@dataclass
class VerifyReport:
    model: str
    passed: bool
    weights: str
    device: str
    dtype: str
    task: str
    converter: str
    accounting: Dict[str, Any]
    comparisons: List[Comparison]
    max_abs_diff: float
    tolerance: float
    top1_agreement: Optional[float] = None
    generation: Optional[Dict[str, Any]] = None
    first_divergence: Optional[str] = None
    non_finite_weights: List[str] = field(default_factory=list)
    fast_paths: List[str] = field(default_factory=list)  # checked, and the plain model too
    timings_ms: Dict[str, float] = field(default_factory=dict)
    versions: Dict[str, str] = field(default_factory=dict)
    # config fields set here that the reference reads but ignores: field -> {value, read_as}
    ignored_fields: Dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def render(self) -> str:
        lines = [
            f"model      {self.model} ({self.task}) on {self.device} {self.dtype}",
            f"weights    {self.weights}",
            f"converter  {self.converter}: {self.accounting.get('summary', '')}",
        ]
        for key, item in self.ignored_fields.items():
            lines.append(f"ignored    {key} = {json.dumps(item['value'])}: {item['read_as']}")
        for c in self.comparisons:
            mark = "ok  " if c.passed else "FAIL"
            lines.append(
                f"{mark}       {c.output}: max abs diff {c.max_abs_diff:.3g}, relative to max |output| "
                f"{c.max_rel_diff:.3g} (tolerance {c.tolerance:.3g})"
            )
        if self.top1_agreement is not None:
            lines.append(f"top-1      {self.top1_agreement * 100:.2f}% of positions agree")
        if self.generation is not None:
            g = self.generation
            mark = "ok  " if g["identical"] else "FAIL"
            lines.append(f"{mark}       generate ({g['mode']}, {g['new_tokens']} new tokens): "
                         f"{'identical ids' if g['identical'] else 'ids differ'}")
        lines.append("speed      " + (f"fast paths {', '.join(self.fast_paths)}; the plain model checked too"
                                       if self.fast_paths else "plain model (no fast path applied)"))
        if self.non_finite_weights:
            lines.append(f"WARNING    non-finite weights (NaN/Inf) in {', '.join(self.non_finite_weights[:8])}")
        if self.first_divergence:
            lines.append(f"diverges   {self.first_divergence}")
        t = self.timings_ms
        if t:
            lines.append(
                f"time       zoo {t.get('zoo_forward', 0):.1f} ms, transformers "
                f"{t.get('reference_forward', 0):.1f} ms per forward (load: zoo "
                f"{t.get('zoo_load', 0):.0f} ms)"
            )
        lines.append("versions   " + ", ".join(f"{k} {v}" for k, v in self.versions.items()))
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


def _versions() -> Dict[str, str]:
    import transformers

    return {
        "zoo": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _tensor(out: Any, name: str) -> Optional[torch.Tensor]:
    value = getattr(out, name, None)
    if value is None and isinstance(out, torch.Tensor) and name == "logits":
        value = out
    return value if isinstance(value, torch.Tensor) else None


def output_mask(inputs: Dict[str, Any]) -> Optional[torch.Tensor]:
    """The attention mask ([B, T], 1 = real token) that a model's per-position outputs line up
    with: ``attention_mask`` of the input, or for an encoder-decoder (given
    ``decoder_input_ids``, its outputs are decoder positions) ``decoder_attention_mask``."""
    if "decoder_input_ids" in inputs:
        return inputs.get("decoder_attention_mask")
    return inputs.get("attention_mask")


# outputs of one value per position, [B, T] (the others per position are [B, T, ...])
PER_POSITION_2D = ("start_logits", "end_logits")


def real_positions(t: torch.Tensor, mask: Optional[torch.Tensor], name: str = "") -> torch.Tensor:
    """What a comparison looks at: a per-position output ``t`` of shape [B, T, ...] (hidden
    states, logits; [B, T] for ``name`` in :data:`PER_POSITION_2D`) at the positions where
    ``mask`` [B, T] is 1, flattened to [n, ...]; anything else (no mask, a pooled [B, H]
    output, other shapes) whole.

    Values at padding positions carry no meaning: no real token reads them, transformers
    computes them anyway, zoo's BERT skips them and returns zeros (as transformers' own
    flash-attention-2 path does). Comparing them would compare two arbitrary choices."""
    per_position = t.dim() >= 3 or (name in PER_POSITION_2D and t.dim() == 2)
    if mask is None or not per_position or tuple(t.shape[:2]) != tuple(mask.shape):
        return t
    return t[mask.to(device=t.device, dtype=torch.bool)]


def _compare(name: str, ours: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype,
             mask: Optional[torch.Tensor] = None) -> Comparison:
    """``ours`` against ``ref`` within the tolerance of ``dtype``; with ``mask`` (the input's
    attention mask), per-position outputs at real tokens only (see :func:`real_positions`)."""
    atol, rtol = TOLERANCE[dtype]
    ours, ref = ours.float(), ref.float()
    if ours.shape != ref.shape:
        return Comparison(name, float("inf"), float("inf"), 0.0, False)
    ours, ref = real_positions(ours, mask, name), real_positions(ref, mask, name)
    diff = (ours - ref).abs()
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    tol = atol + rtol * scale
    max_abs = float(diff.max()) if diff.numel() else 0.0
    # relative to the scale of the outputs: elementwise ratios explode where the reference
    # crosses zero and say nothing about agreement
    max_rel = max_abs / scale if scale else 0.0
    finite = bool(torch.isfinite(ours).all())
    return Comparison(name, max_abs, max_rel, tol, finite and max_abs <= tol)


def _timed(fn, repeats: int = 3) -> tuple:
    out = fn()  # warm-up, also the value we compare
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return out, sorted(times)[len(times) // 2]


@dataclass
class WeightSource:
    """Where verify/bench get weights: a real checkpoint folder, or random ones written to a
    temporary folder in the Hub layout (``tmp`` holds it alive)."""

    entry: Any
    converter: Converter
    folder: Path
    load_name: str
    random_seed: Optional[int] = None
    random_why: str = ""
    tmp: Any = None
    _ref: Any = None

    def reference(self, loaded):
        """The transformers model on the same weights (eval mode)."""
        if self._ref is None:
            from transformers.utils import logging as hf_logging

            enabled = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # keep our own output clean (--json on stdout)
            try:
                self._ref = import_ref(self.converter.reference)(loaded.config, loaded.task, self.folder)
            finally:
                if enabled:
                    hf_logging.enable_progress_bar()
        return self._ref.eval()

    def describe(self, loaded) -> str:
        if self.random_seed is not None:
            return f"random, seed {self.random_seed} ({self.random_why}; written in the Hub layout)"
        hashes = ", ".join(f"{p.name} sha256:{ckpt.sha256(p)[:16]}" for p in loaded.files)
        return f"{self.folder} ({hashes})"


def prepare_weights(entry, converter: Converter, checkpoint=None, allow_pickle: bool = False,
                    random_weights: bool = False, seed: int = 0, task: Optional[str] = None) -> WeightSource:
    """A checkpoint for ``entry``: the local/cached/downloadable one, else seeded random weights
    (those of the reference built for ``task``, the entry's own by default)."""
    if converter.reference is None:
        raise ZooError(f"converter {converter.name!r} has no transformers reference to compare with")
    why = "requested"
    if not random_weights:
        try:
            folder, files = weight_files(entry, checkpoint, allow_pickle, None)
        except DownloadError as exc:
            if checkpoint is not None:
                raise
            why = "no checkpoint available: " + str(exc).split(";")[0]
        else:
            if files is not None:
                return WeightSource(entry, converter, folder, _load_name(entry, folder))
            why = "the catalog entry names no weights"
    tmp = tempfile.TemporaryDirectory(prefix="zoo-weights-")
    folder = Path(tmp.name)
    ref = randomweights.write(converter, dict(entry.config), task or entry.task, seed, folder)
    return WeightSource(entry, converter, folder, _load_name(entry, folder), random_seed=seed, tmp=tmp, _ref=ref,
                        random_why=why)


def _load_name(entry, folder: Path) -> str:
    """Catalog entries load by name (their config and task); local checkpoints by path."""
    return entry.name if get_catalog().find(entry.name) is not None else str(folder)


def verify(
    name_or_path: str,
    *,
    checkpoint=None,
    device: Optional[str] = "auto",
    dtype=None,
    seed: int = 0,
    batch: int = 2,
    seq: int = 16,
    new_tokens: int = 8,
    num_beams: int = 1,
    allow_pickle: bool = False,
    random_weights: bool = False,
    converter: Optional[Converter] = None,
    plain: bool = False,
    task: Optional[str] = None,
    device_map=None,
) -> VerifyReport:
    """Compare zoo's model with the transformers reference on the same weights and inputs.

    Uses the checkpoint when one is available locally (or downloadable); otherwise, or with
    ``random_weights=True``, random weights with ``seed`` written in the Hub layout. Pass
    ``converter`` to check a modified converter (a broken one must fail). The model is loaded
    with its fast paths (zoo.accel) and checked, then made plain and checked again;
    ``plain=True`` checks the plain model only. ``task`` checks the model built for another
    task than the checkpoint's own (its head, or the body alone), against the matching class.
    ``device_map`` checks the model spread over devices by accelerate (zoo.placement; no fast
    paths then) against the reference on the main device.
    """
    catalog = get_catalog()
    entry = resolve(str(name_or_path), catalog)
    converter = converter or catalog.converter(entry.converter)

    task = task or entry.task
    progress.step(f"preparing the weights of {entry.name}")
    source = prepare_weights(entry, converter, checkpoint, allow_pickle, random_weights, seed, task)
    progress.step("loading them into zoo")
    t0 = time.perf_counter()
    loaded = load_full(source.load_name, checkpoint=source.folder, device=device, dtype=dtype,
                       allow_pickle=allow_pickle, converter=converter, fast=not plain, task=task,
                       device_map=device_map)
    zoo_load_ms = (time.perf_counter() - t0) * 1000
    progress.step("building transformers' model on the same weights")
    ref = source.reference(loaded)
    weights, tmp = source.describe(loaded), source.tmp
    ref = ref.to(device=loaded.device, dtype=loaded.dtype).eval()
    model = loaded.model

    arch = loaded.architecture
    if arch.example_inputs is None:
        raise ZooError(f"architecture {arch.name!r} provides no example_inputs to verify with")
    gen = torch.Generator().manual_seed(seed)
    inputs = import_ref(arch.example_inputs)(loaded.arch_config, loaded.task, batch, seq, gen)
    inputs = {k: v.to(loaded.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)

    with torch.inference_mode():
        ours, zoo_ms = _timed(lambda: model(**inputs))
        theirs, ref_ms = _timed(lambda: ref(**inputs))
    mask = output_mask(inputs)  # padding positions are not compared
    comparisons = [
        _compare(name, _tensor(ours, name), _tensor(theirs, name), loaded.dtype, mask)
        for name in OUTPUT_FIELDS
        if _tensor(ours, name) is not None and _tensor(theirs, name) is not None
    ]
    if not comparisons:
        raise ZooError(f"{entry.name}: zoo and transformers share no output to compare ({', '.join(OUTPUT_FIELDS)})")

    top1 = None
    if comparisons[0].output == "logits" and loaded.task != "image-classification":
        a, b = (real_positions(_tensor(out, "logits"), mask) for out in (ours, theirs))
        top1 = float((a.argmax(-1) == b.argmax(-1)).float().mean())

    generates = hasattr(model, "generate") and loaded.task in GENERATIVE_TASKS
    generation = _compare_generation(model, ref, inputs, loaded, new_tokens, num_beams) if generates else None
    fast_ok = all(c.passed for c in comparisons) and (generation is None or generation["identical"])

    fast_paths = accel.applied(model)
    plain_ok = fast_ok
    if fast_paths:  # the same checks on the plain model: a fast path must change nothing
        accel.plain(model)
        with torch.inference_mode():
            ours = model(**inputs)
        plain_comparisons = [_compare(f"{name} (plain)", _tensor(ours, name), _tensor(theirs, name), loaded.dtype, mask)
                             for name in (c.output for c in list(comparisons))]
        comparisons += plain_comparisons
        plain_ok = all(c.passed for c in plain_comparisons)
        if plain_ok and generation is not None and not generation["identical"]:
            plain_ok = _compare_generation(model, ref, inputs, loaded, new_tokens, num_beams)["identical"]

    passed = fast_ok and plain_ok
    divergence = None
    if plain_ok and not fast_ok:
        culprits = _guilty_fast_paths(model, ref, inputs, loaded, theirs, mask, fast_paths, new_tokens, num_beams)
        divergence = (f"the plain model agrees with transformers: the difference is in the fast "
                      f"path{'s' if len(culprits) > 1 else ''} {', '.join(culprits)}; `zoo verify --plain` and "
                      f"`zoo.load(..., fast=False)` avoid them")
    elif not passed:
        divergence = _first_divergence(model, ref, inputs, loaded.dtype, ours)
    non_finite = find_non_finite(model.state_dict())
    worst = max(comparisons, key=lambda c: c.max_abs_diff / max(c.tolerance, 1e-30))
    report = VerifyReport(
        model=entry.name,
        passed=passed,
        weights=weights,
        device=str(loaded.device),
        dtype=str(loaded.dtype).replace("torch.", ""),
        task=loaded.task,
        converter=converter.name,
        accounting={**loaded.report.as_dict(), "summary": loaded.report.summary()},
        comparisons=comparisons,
        max_abs_diff=worst.max_abs_diff,
        tolerance=worst.tolerance,
        top1_agreement=top1,
        generation=generation,
        first_divergence=divergence,
        non_finite_weights=non_finite,
        fast_paths=fast_paths,
        timings_ms={"zoo_forward": zoo_ms, "reference_forward": ref_ms, "zoo_load": zoo_load_ms},
        versions=_versions(),
        ignored_fields=ignored_fields(converter, loaded.config),
    )
    if tmp is not None:
        del loaded, model, source
        tmp.cleanup()
    return report


def generate_kwargs(loaded, new_tokens: int, num_beams: int = 1):
    """Keyword arguments for zoo's ``generate`` and transformers' ``generate`` that make the two
    decode the same way: same length, same beams, zoo stopping where transformers stops.

    Both sides are told every setting the comparison depends on, so neither falls back to the
    checkpoint's defaults (a generation_config.json with ``num_beams=4``, say)."""
    if num_beams > 1 and "num_beams" not in inspect.signature(loaded.model.generate).parameters:
        raise InputError(f"{loaded.entry.name}: its generate() has no beam search; --beams applies to translation models")
    ours: Dict[str, Any] = {"max_new_tokens": new_tokens}
    if loaded.task == "translation" or num_beams > 1:
        ours["num_beams"] = num_beams
    if loaded.task == "text-generation":
        ours["eos_token_id"] = loaded.config.get("eos_token_id")
    pad = loaded.config.get("pad_token_id")
    if pad is None:
        pad = loaded.config.get("eos_token_id", 0)
    theirs = {"do_sample": False, "num_beams": num_beams, "max_new_tokens": new_tokens, "pad_token_id": pad}
    return ours, theirs


def _compare_generation(model, ref, inputs, loaded, new_tokens: int, num_beams: int) -> Dict[str, Any]:
    kwargs = {k: inputs[k] for k in ("input_ids", "attention_mask") if k in inputs}
    if loaded.task == "text-generation":
        kwargs = {"input_ids": inputs["input_ids"][:1]}  # one row: no padding questions
    ours_kwargs, ref_kwargs = generate_kwargs(loaded, new_tokens, num_beams)
    ours = model.generate(**kwargs, **ours_kwargs)
    theirs = ref.generate(**kwargs, **ref_kwargs)
    identical = ours.shape == theirs.shape and bool((ours == theirs).all())
    return {
        "mode": "greedy" if num_beams == 1 else f"beam search, {num_beams} beams",
        "new_tokens": new_tokens,
        "identical": identical,
        "zoo_ids": ours.tolist() if not identical else None,
        "reference_ids": theirs.tolist() if not identical else None,
    }


def _guilty_fast_paths(model, ref, inputs, loaded, theirs, mask, names, new_tokens, num_beams) -> List[str]:
    """Which fast paths, applied one at a time to the (now plain) model, make it diverge; all of
    them when none does alone."""
    guilty = []
    for name in names:
        accel.accelerate(model, loaded.architecture, only=[name])
        with torch.inference_mode():
            ours = model(**inputs)
        ok = all(_compare(n, _tensor(ours, n), _tensor(theirs, n), loaded.dtype, mask).passed
                 for n in OUTPUT_FIELDS if _tensor(ours, n) is not None and _tensor(theirs, n) is not None)
        if ok and hasattr(model, "generate") and loaded.task in GENERATIVE_TASKS:
            ok = _compare_generation(model, ref, inputs, loaded, new_tokens, num_beams)["identical"]
        accel.plain(model)
        if not ok:
            guilty.append(name)
    return guilty or list(names)


def _first_divergence(model, ref, inputs, dtype, ours_plain) -> Optional[str]:
    """Name the first hidden state (block) where zoo and the reference part ways; ``ours_plain``
    is zoo's output for ``inputs`` without hidden states."""
    try:
        with torch.inference_mode():
            ours_full = model(**inputs, output_hidden_states=True)
            theirs = ref(**inputs, output_hidden_states=True)
        ours = ours_full.hidden_states
        if getattr(theirs, "decoder_hidden_states", None) is not None:  # encoder-decoder
            encoder = tuple(theirs.encoder_hidden_states or ())
            theirs = encoder + tuple(theirs.decoder_hidden_states)
            masks = [inputs.get("attention_mask")] * len(encoder) + [output_mask(inputs)] * len(theirs)
        else:
            theirs = getattr(theirs, "hidden_states", None)
            masks = [output_mask(inputs)] * len(theirs or ())
    except TypeError:
        return None
    if not ours or not theirs:
        return None
    for i, (a, b) in enumerate(zip(ours, theirs)):
        c = _compare(f"hidden_states[{i}]", a, b, dtype, masks[i])
        if not c.passed:
            where = "embeddings" if i == 0 else f"output of block {i - 1}"
            return f"hidden_states[{i}] ({where}): max abs diff {c.max_abs_diff:.3g}"
    # a model may compute less when no hidden states are asked for (ViT's classifier: the last
    # block for the class token alone): then that shorter path is where the two part ways
    for name in OUTPUT_FIELDS:
        a, b = _tensor(ours_plain, name), _tensor(ours_full, name)
        if a is not None and b is not None:
            c = _compare(name, a, b, dtype)
            if not c.passed:
                return (f"hidden states agree, but zoo's {name} without output_hidden_states differ from its own "
                        f"with them by {c.max_abs_diff:.3g}: the difference is in the path that skips them")
    return "hidden states agree; the difference is in the output head"
