"""``zoo convert NAME --to onnx``: the model's forward as an ONNX graph, checked in ONNX Runtime.

The plain model (no speed layer: its fast paths are eager-mode code) is loaded in float32 on
the CPU and recorded by ``torch.onnx.export`` (torch.export, then onnxscript's translation)
with every batch and length axis dynamic. The architectures compute the general case while
traced (:mod:`zoo.tracing`: an attention mask whatever it holds, no checks of values), so one
graph serves every batch, padded or not.

Before anything is published the graph is run in ONNX Runtime on inputs of *another* shape
than the recorded ones (another batch size and length, padding included where the model takes
a mask), and each output must equal the eager model's within :data:`ATOL` + :data:`RTOL` × |value|;
otherwise nothing is written and the error names the output and the difference.

What the graph is: the model's ``forward`` on whole sequences, the architecture's example
inputs (input ids, attention mask, token types, pixel values, decoder input ids) in, the
outputs it gives for the task out (``logits``, ``start_logits``/``end_logits``,
``last_hidden_state``, ``pooler_output``). Decoding models (GPT-2, translation) are exported
without a key/value cache: a decoding loop over this graph recomputes the prefix every step.

The folder holds ``model.onnx`` (its weights in ``model.onnx.data`` beside it), ``config.json``
in the Hugging Face format where the converter has one, the tokenizer or image-processor files
of the source folder, and ``onnx.json``: inputs and outputs with their axes, the opset, the
parity check's figures, and the versions that wrote it. ``pip install 'zoo[onnx]'`` brings
onnx, onnxscript and ONNX Runtime.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .errors import ZooError
from .version import __version__

ATOL, RTOL = 1e-4, 1e-4  # float32 graph against the eager model
OUTPUTS = ("logits", "start_logits", "end_logits", "last_hidden_state", "pooler_output")
INSTALL = "pip install 'zoo[onnx]'"
RECORDED = (2, 16)  # batch and length of the inputs the graph is recorded from
CHECKED = (3, 11)  # ... and of those it is checked on in ONNX Runtime


class OnnxExportError(ZooError, ValueError):
    """The model cannot be exported, or the graph does not compute what the model computes."""


def require():
    """ONNX Runtime's module, once onnx, onnxscript (torch's exporter) and it import."""
    import importlib

    try:
        return [importlib.import_module(name) for name in ("onnx", "onnxscript", "onnxruntime")][-1]
    except ImportError as e:
        raise OnnxExportError(f"--to onnx needs onnx, onnxscript and onnxruntime ({e.name} is missing): {INSTALL}")


class _Graph(torch.nn.Module):
    """The model with positional tensor inputs and a tuple of tensor outputs, as a graph has."""

    def __init__(self, model: torch.nn.Module, inputs: List[str], outputs: List[str]):
        super().__init__()
        self.model, self.inputs, self.outputs = model, inputs, outputs

    def forward(self, *tensors: torch.Tensor):
        out = self.model(**dict(zip(self.inputs, tensors)))
        return tuple(out[name] for name in self.outputs)


def example_inputs(loaded, batch: int, seq: int, seed: int) -> Dict[str, torch.Tensor]:
    """The architecture's example inputs of ``batch`` × ``seq``, with an attention mask of ones
    added where the model takes one and the examples have none (so the graph takes padding)."""
    from .types import import_ref

    make = import_ref(loaded.architecture.example_inputs)
    inputs = dict(make(loaded.arch_config, loaded.task, batch, seq, torch.Generator().manual_seed(seed)))
    takes = inspect.signature(loaded.model.forward).parameters
    if "attention_mask" in takes and "attention_mask" not in inputs and "input_ids" in inputs:
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    return inputs


def axes(inputs: Dict[str, torch.Tensor]) -> Dict[str, Dict[int, str]]:
    """The dynamic axes of each input, by name: the batch, and every axis of token ids and
    masks after it (choices, length); images keep their size, the trained one."""
    out: Dict[str, Dict[int, str]] = {}
    for name, t in inputs.items():
        dims = {0: "batch"}
        if not t.is_floating_point():
            for d in range(1, t.dim()):
                dims[d] = "target_length" if name.startswith("decoder") else ("length" if d == t.dim() - 1 else "choices")
        out[name] = dims
    return out


def _dynamic_shapes(inputs: Dict[str, torch.Tensor]):
    from torch.export import Dim

    # one entry, the forward's *tensors, holding one spec per input
    return (tuple({d: Dim.DYNAMIC for d in dims} for dims in axes(inputs).values()),)


def _record(graph: _Graph, inputs: Dict[str, torch.Tensor], path: Path) -> None:
    import logging
    import warnings

    exporter_log = logging.getLogger("torch.onnx")  # says, among others, that torchvision's ops are skipped
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, tuple(inputs.values()), str(path), dynamo=True, verbose=False,
                                     input_names=list(inputs), output_names=list(graph.outputs),
                                     dynamic_shapes=_dynamic_shapes(inputs), report=False)
    except Exception as e:  # torch.export's and onnxscript's errors are many pages: their gist
        raise OnnxExportError(f"torch.onnx.export could not record {type(graph.model).__name__}: {_gist(e)}") from e
    finally:
        exporter_log.setLevel(level)


def _gist(e: Exception) -> str:
    """The line of an exporter's error that says what went wrong (after its "Exception summary")."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if "## Exception summary" in lines:
        lines = lines[lines.index("## Exception summary") + 1:]
    gist = (lines[0] if lines else type(e).__name__)[:400]
    if "DataDependent" in gist:  # int(tensor), bool(tensor), tensor.item() in the forward
        gist += (" — the forward reads a tensor's value into Python (a check, a shortcut): skip that while "
                 "zoo.tracing.tracing() is True")
    return gist


def check_graph(path: Path, model: torch.nn.Module, inputs: Dict[str, torch.Tensor], outputs: List[str]) -> Dict[str, float]:
    """Run ``path`` in ONNX Runtime on ``inputs`` and compare each output with the eager
    ``model``'s; returns the largest absolute difference per output. Raises
    :class:`OnnxExportError` naming the first output beyond ATOL + RTOL × |value|, or the
    input shape the graph refuses."""
    graph = session(path)
    with torch.no_grad():
        eager = model(**inputs)
    feed = {name: t.numpy() for name, t in inputs.items()}
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in inputs.items())
    try:
        got = graph.run(list(outputs), feed)
    except Exception as e:
        raise OnnxExportError(f"the exported graph refuses inputs of another shape ({shapes}): "
                              f"{str(e).splitlines()[0][:300]}") from e
    diffs = {}
    for name, value in zip(outputs, got):
        want = eager[name].float()
        have = torch.from_numpy(value).float()
        if have.shape != want.shape:
            raise OnnxExportError(f"the exported graph's {name} has shape {list(have.shape)}, the model's "
                                  f"{list(want.shape)} (inputs {shapes})")
        excess = (have - want).abs() - (ATOL + RTOL * want.abs())
        diffs[name] = float((have - want).abs().max()) if want.numel() else 0.0
        if want.numel() and float(excess.max()) > 0:
            raise OnnxExportError(f"the exported graph's {name} differs from the model's by up to {diffs[name]:.3g} "
                                  f"(allowed {ATOL:g} + {RTOL:g} x |value|) on inputs {shapes}")
    return diffs


def record_graph(loaded, folder: Path) -> Dict[str, Any]:
    """Record the plain model of ``loaded`` (float32, CPU) as ``folder/model.onnx`` and check it
    in ONNX Runtime on inputs of another shape (:func:`check_graph`); returns what ``onnx.json``
    says of the graph: inputs and their axes, outputs, opset, the check's figures."""
    from . import progress

    require()
    import onnx

    model = loaded.model.eval()
    recorded = example_inputs(loaded, *RECORDED, seed=0)
    with torch.no_grad():
        first = model(**recorded)
    outputs = [name for name in OUTPUTS if isinstance(first[name], torch.Tensor)]
    progress.step("recording the forward (torch.onnx.export)")
    _record(_Graph(model, list(recorded), outputs), recorded, folder / "model.onnx")
    progress.step("checking the graph in ONNX Runtime on inputs of another shape")
    checked = example_inputs(loaded, *CHECKED, seed=1)
    diffs = check_graph(folder / "model.onnx", model, checked, outputs)
    opset = next((o.version for o in onnx.load(str(folder / "model.onnx"), load_external_data=False).opset_import
                  if o.domain in ("", "ai.onnx")), None)
    return {
        "inputs": {name: {"dtype": str(t.dtype).replace("torch.", ""), "axes": {str(d): n for d, n in dims.items()},
                          "shape_recorded": list(t.shape)}
                   for (name, t), dims in zip(recorded.items(), axes(recorded).values())},
        "outputs": outputs,
        "opset": opset,
        "parity": {"inputs": {k: list(v.shape) for k, v in checked.items()}, "max_abs_diff": diffs,
                   "allowed": f"{ATOL:g} + {RTOL:g} x |value|"},
    }


def session(path: Path, threads: Optional[int] = None):
    """An ONNX Runtime CPU session of the graph at ``path`` (``threads``: its intra-op threads)."""
    ort = require()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_plain(name_or_path: str, **read) -> Any:
    """``loaded`` for export: the plain model in float32 on the CPU (``read``: where from)."""
    from .loading import load_full

    loaded = load_full(str(name_or_path), device="cpu", dtype=torch.float32, fast=False, **read)
    if not loaded.files:
        raise OnnxExportError(f"{loaded.entry.name}: the catalog entry names no weights to export (train it first: "
                              f"zoo train {loaded.entry.name} ... --out DIR, then export DIR)")
    return loaded


def export_onnx(name_or_path: str, out, *, force: bool = False, checkpoint=None, revision: Optional[str] = None,
                allow_pickle: bool = False, task: Optional[str] = None, random_weights: bool = False):
    """``zoo convert NAME_OR_PATH --to onnx --out DIR`` (see the module docstring); returns
    :class:`zoo.export.Exported`."""
    from . import progress
    from .export import Exported, copy_processor_files, hf_config, named_inputs
    from .publish import check_target, publish

    ort = require()
    import onnx

    inputs_read = named_inputs(name_or_path, checkpoint)
    check_target(out, force=force, inputs=inputs_read)  # fail before reading gigabytes
    progress.step("loading the model (plain, float32, CPU)")
    loaded = load_plain(name_or_path, checkpoint=checkpoint, revision=revision, allow_pickle=allow_pickle,
                        task=task, random_weights=random_weights)
    if loaded.folder is not None:
        inputs_read.append(Path(loaded.folder))
    converter = loaded.converter
    config = hf_config(converter, loaded.config, loaded.task) if converter.reference is not None else None

    def write(folder: Path) -> None:
        graph = record_graph(loaded, folder)
        meta = {
            "format": "zoo-onnx",
            "model": loaded.entry.name, "architecture": loaded.architecture.name, "task": loaded.task,
            "converter": converter.name,
            **graph,
            "cache": "none: decoding recomputes the prefix" if hasattr(loaded.model, "generate") else None,
            "config": None if config is not None else loaded.config,
            "versions": {"zoo": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": ort.__version__},
        }
        (folder / "onnx.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if config is not None:
            (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        copy_processor_files(loaded.folder, folder)

    files = publish(out, write, force=force, inputs=inputs_read)
    return Exported(Path(out), "onnx", files, len(loaded.model.state_dict()))
