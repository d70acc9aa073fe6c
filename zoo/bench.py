"""``zoo bench``: how fast zoo runs a model here, and with ``compare`` how that stands against
transformers on the same weights, in the same process, interleaved A/B/A/B.

Ratios are the figure of merit (these machines are noisy): each repeat times zoo and then
transformers back to back, and the report gives min/median/max of the per-repeat ratios.
Time ratios below 1 and tokens/s ratios above 1 mean zoo is faster.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .accel.argmax import screen_of
from .loading import load_full, resolve
from .registry import get_catalog
from .types import import_ref
from . import progress
from .errors import InputError
from .generation import GENERATIVE_TASKS
from .verification import generate_kwargs, prepare_weights


@dataclass
class Stat:
    """Median of zoo's measurements, transformers' (when compared), and the per-repeat ratios."""

    name: str
    unit: str
    zoo: float
    reference: Optional[float] = None
    ratio_min: Optional[float] = None
    ratio_median: Optional[float] = None
    ratio_max: Optional[float] = None
    note: str = ""


@dataclass
class BenchReport:
    model: str
    device: str
    dtype: str
    weights: str
    threads: int
    task: str = ""
    stats: List[Stat] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def render(self) -> str:
        lines = [f"model {self.model} ({self.task}) on {self.device} {self.dtype}, {self.threads} threads; "
                 f"weights {self.weights}"]
        head = f"{'metric':34} {'zoo':>12} {'reference':>13}  {'ratio (min / median / max)':28}"
        lines += [head, "-" * len(head)]
        for s in self.stats:
            ref = f"{s.reference:.4g}" if s.reference is not None else "-"
            ratio = (f"{s.ratio_min:.3f} / {s.ratio_median:.3f} / {s.ratio_max:.3f}"
                     if s.ratio_median is not None else "-")
            lines.append(f"{s.name + ' (' + s.unit + ')':34} {s.zoo:>12.4g} {ref:>13}  {ratio:28} {s.note}")
        for k, v in self.extra.items():
            lines.append(f"{k}: {v}")
        return "\n".join(lines)


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _ab(zoo_fn, ref_fn, repeats: int, higher_is_better: bool = False, what: str = "timing"):
    """Interleaved A/B timing, the order alternating (zoo first, then transformers first, ...)
    so that neither side always runs in the other's wake; returns (zoo median, ref median,
    ratios)."""
    zs, rs, ratios = [], [], []
    with progress.bar(repeats + 1, what, unit="run") as shown:
        zoo_fn()
        if ref_fn:
            ref_fn()
        for i in range(repeats):
            if shown is not None:
                shown.update()
            if ref_fn and i % 2:
                r = _time(ref_fn)
                z = _time(zoo_fn)
            else:
                z = _time(zoo_fn)
                r = _time(ref_fn) if ref_fn else None
            zs.append(z)
            if ref_fn:
                rs.append(r)
                ratios.append(r / z if higher_is_better else z / r)
    return statistics.median(zs), (statistics.median(rs) if rs else None), ratios


def _stat(name, unit, z, r, ratios, note="") -> Stat:
    if not ratios:
        return Stat(name, unit, z, note=note)
    return Stat(name, unit, z, r, min(ratios), statistics.median(ratios), max(ratios), note)


def read_bandwidth_gbs(megabytes: int = 512) -> float:
    """Measured memory read bandwidth of this machine (GB/s): sums over a buffer much larger
    than the caches, best of five."""
    x = torch.ones(megabytes * 1024 * 1024 // 4)
    best = min(_time(lambda: x.sum()) for _ in range(5))
    return x.numel() * 4 / best / 1e9


def bench(
    name_or_path: str,
    *,
    device: Optional[str] = "auto",
    dtype=None,
    batch: int = 1,
    seq: int = 128,
    new_tokens: int = 64,
    prompt: int = 16,
    num_beams: int = 1,
    repeats: int = 5,
    compare: bool = False,
    cold: bool = False,
    scaling: bool = False,
    checkpoint=None,
    seed: int = 0,
    task: Optional[str] = None,
    train: bool = False,
    onnx: bool = False,
) -> BenchReport:
    """Measure load, forward and (for generative models) decode; see the module docstring.

    ``num_beams`` > 1 decodes with beam search on both sides (the same beams, identical ids).
    ``task`` measures the model built for another task than the checkpoint's own. ``train``
    also times a training step (forward with labels, backward, AdamW step) on the same batch.
    ``onnx`` also times the forward against ONNX Runtime running the graph ``zoo convert --to
    onnx`` writes (CPU, float32)."""
    if num_beams < 1:
        raise InputError(f"--beams must be >= 1, got {num_beams}")
    if onnx and (str(device) not in ("None", "auto", "cpu") or str(dtype).replace("torch.", "") not in ("None", "float32")):
        raise InputError(f"--onnx compares on the CPU in float32 (the graph zoo exports), not {device} {dtype}")
    catalog = get_catalog()
    entry = resolve(str(name_or_path), catalog)
    task = task or entry.task
    if num_beams > 1 and task not in GENERATIVE_TASKS:
        raise InputError(f"--beams applies to models that generate ({', '.join(GENERATIVE_TASKS)}); "
                         f"{entry.name} is {task}")
    converter = catalog.converter(entry.converter)
    progress.step(f"preparing the weights of {entry.name}")
    source = prepare_weights(entry, converter, checkpoint, seed=seed, task=task)
    progress.step("loading them into zoo")
    t0 = time.perf_counter()
    loaded = load_full(source.load_name, checkpoint=source.folder, device=device, dtype=dtype, task=task)
    load_s = time.perf_counter() - t0
    model = loaded.model
    report = BenchReport(entry.name, str(loaded.device), str(loaded.dtype).replace("torch.", ""),
                         source.describe(loaded), torch.get_num_threads(), loaded.task)
    ref = None
    if compare:
        progress.step("building transformers' model on the same weights")
        t0 = time.perf_counter()
        ref = source.reference(loaded).to(device=loaded.device, dtype=loaded.dtype)
        ref_load_s = time.perf_counter() - t0 if source.random_seed is None else None
        report.stats.append(Stat("load", "s", load_s, ref_load_s,
                                 note="" if ref_load_s else "(reference built in memory: no load time)"))
    else:
        report.stats.append(Stat("load", "s", load_s))

    gen = torch.Generator().manual_seed(seed)
    make_inputs = import_ref(loaded.architecture.example_inputs)
    inputs = _to(make_inputs(loaded.arch_config, loaded.task, batch, seq, gen), loaded)
    ids = inputs.get("input_ids")
    if ids is not None and ids.shape[-1] < seq:  # example_inputs keeps to the model's context
        raise InputError(f"--seq {seq} exceeds the {ids.shape[-1]} positions {entry.name} takes")
    shape = "x".join(str(d) for d in next(iter(inputs.values())).shape)
    with torch.inference_mode():
        z, r, ratios = _ab(lambda: model(**inputs), (lambda: ref(**inputs)) if ref is not None else None, repeats,
                           what=f"forward [{shape}]")
        report.stats.append(_stat(f"forward [{shape}]", "ms", z * 1e3, r * 1e3 if r else None, ratios))
        if hasattr(model, "generate") and loaded.task in GENERATIVE_TASKS:
            _bench_decode(report, model, ref, inputs, loaded, new_tokens, repeats, prompt, num_beams)
        if scaling:
            _bench_scaling(report, model, loaded, make_inputs)
    if onnx:
        _bench_onnx(report, model, source, loaded, inputs, repeats, shape)
    if train:
        _bench_train(report, model, ref, inputs, loaded, repeats, seed, shape)
    if cold:
        _bench_cold(report, source, loaded, batch, seq, compare, train)
    return report


def _to(inputs, loaded):
    out = {k: v.to(loaded.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    if "pixel_values" in out:
        out["pixel_values"] = out["pixel_values"].to(loaded.dtype)
    return out


def _bench_decode(report, model, ref, inputs, loaded, new_tokens, repeats, prompt, num_beams):
    kwargs = {k: inputs[k] for k in ("input_ids", "attention_mask") if k in inputs}
    if loaded.task == "text-generation":  # a short prompt: measure decoding, not prefill
        kwargs["input_ids"] = kwargs["input_ids"][:, :prompt]
    ours_kwargs, gen_kwargs = generate_kwargs(loaded, new_tokens, num_beams)
    ours = model.generate(**kwargs, **ours_kwargs)
    n_new = ours.shape[1] - (kwargs["input_ids"].shape[1] if loaded.task == "text-generation" else 1)
    zoo_fn = lambda: model.generate(**kwargs, **ours_kwargs)
    ref_fn = None
    identical = None
    if ref is not None:
        theirs = ref.generate(**kwargs, **gen_kwargs)
        identical = ours.shape == theirs.shape and bool((ours == theirs).all())
        ref_fn = lambda: ref.generate(**kwargs, **gen_kwargs)
    # a decode run is long: half the repeats, but at least 3 (a median of 2 is their mean)
    z, r, ratios = _ab(zoo_fn, ref_fn, max(3, (repeats + 1) // 2), higher_is_better=True, what="decoding")
    rows = kwargs["input_ids"].shape[0]
    tps = rows * n_new / z
    note = "" if identical is None else ("identical tokens" if identical else "TOKENS DIFFER")
    mode = "greedy" if num_beams == 1 else f"{num_beams}-beam"
    report.stats.append(_stat(f"{mode} decode {n_new} tokens x{rows}", "tokens/s", tps,
                              rows * n_new / r if r else None, ratios, note))
    if loaded.device.type == "cpu" and rows == 1 and num_beams == 1 and loaded.task == "text-generation":
        # every weight is read once per generated token: the step time (generate N tokens minus
        # generate 1, over N - 1) against the machine's read bandwidth bounds tokens/s
        one = dict(ours_kwargs, max_new_tokens=1)
        t1 = statistics.median(_time(lambda: model.generate(**kwargs, **one)) for _ in range(3))
        step = (z - t1) / max(1, n_new - 1)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        screen = screen_of(model)  # greedy reads a bfloat16 copy of the head
        if screen is not None:
            weight_bytes -= screen.bytes_saved
        bw = read_bandwidth_gbs()
        limit = bw * 1e9 / weight_bytes
        report.extra["bandwidth"] = (
            f"{bw:.1f} GB/s read; {weight_bytes / 1e6:.0f} MB of weights per token -> limit "
            f"{limit:.1f} tokens/s; decode step {step * 1e3:.1f} ms = {1 / step:.1f} tokens/s, "
            f"{100 / step / limit:.0f}% of limit")
        report.extra["percent_of_bandwidth_limit"] = round(100 / step / limit, 1)


def _bench_onnx(report, model, source, loaded, inputs, repeats, shape):
    """The forward against ONNX Runtime on the same weights and inputs: the plain model recorded
    as ``zoo convert --to onnx`` records it (into a temporary folder, checked the same way), run
    by a CPU session with torch's thread count; interleaved with zoo's forward."""
    import tempfile

    from . import onnxexport

    ort = onnxexport.require()
    if loaded.device.type != "cpu" or loaded.dtype != torch.float32:
        raise InputError(f"--onnx compares on the CPU in float32 (the graph zoo exports), not {loaded.device} "
                         f"{str(loaded.dtype).replace('torch.', '')}")
    plain = onnxexport.load_plain(source.load_name, checkpoint=source.folder, task=loaded.task)
    with tempfile.TemporaryDirectory(prefix="zoo-bench-onnx-") as tmp:
        onnxexport.record_graph(plain, Path(tmp))
        del plain
        graph = onnxexport.session(Path(tmp) / "model.onnx", threads=torch.get_num_threads())
        names = [i.name for i in graph.get_inputs()]
        feed = {n: (inputs[n] if n in inputs else torch.ones_like(inputs["input_ids"])).numpy() for n in names}
        with torch.inference_mode():
            z, r, ratios = _ab(lambda: model(**inputs), lambda: graph.run(None, feed), repeats,
                               what=f"forward [{shape}] against ONNX Runtime")
    report.stats.append(_stat(f"forward [{shape}], ONNX Runtime", "ms", z * 1e3, r * 1e3, ratios,
                              note=f"reference: ONNX Runtime {ort.__version__} (CPU), the graph of zoo convert --to onnx"))


def _bench_train(report, model, ref, inputs, loaded, repeats, seed, shape):
    """One training step, forward with labels + backward + AdamW step, in training mode (the
    config's dropout), interleaved with transformers' on the same batch (each side its own copy
    of the weights and optimizer)."""
    from .trainverify import with_labels

    batch = _to(with_labels(inputs, loaded.task, loaded.config, torch.Generator().manual_seed(seed)), loaded)

    def stepper(net):
        net.train().requires_grad_(True)  # dropout as the config says, on both sides
        opt = torch.optim.AdamW(net.parameters(), lr=1e-6)

        def step():
            opt.zero_grad(set_to_none=True)
            net(**batch).loss.backward()
            opt.step()
        return step

    z, r, ratios = _ab(stepper(model), stepper(ref) if ref is not None else None, max(3, repeats),
                       what=f"training step [{shape}]")
    report.stats.append(_stat(f"training step [{shape}]", "ms", z * 1e3, r * 1e3 if r else None, ratios,
                              note="forward + backward + AdamW"))
    model.eval().requires_grad_(False)


def _bench_scaling(report, model, loaded, make_inputs):
    gen = torch.Generator().manual_seed(1)
    rows = []
    # example_inputs keeps to the model's context: ask for more than any model takes
    max_pos = make_inputs(loaded.arch_config, loaded.task, 1, 1 << 20, gen)["input_ids"].shape[-1]
    for b, t in ((1, 128), (1, 256), (1, 512), (1, min(1024, max_pos)), (4, 128), (16, 128)):
        inp = _to(make_inputs(loaded.arch_config, loaded.task, b, t, gen), loaded)
        model(**inp)
        ms = statistics.median(_time(lambda: model(**inp)) for _ in range(3)) * 1e3
        rows.append(f"[{b}x{t}] {ms:.1f} ms ({ms / (b * t) * 1e3:.0f} us/token)")
    report.extra["forward scaling"] = "; ".join(rows)
    if hasattr(model, "generate") and loaded.task == "text-generation":
        per_ctx = []
        for ctx in (32, 256, min(896, max_pos - 64)):
            ids = _to(make_inputs(loaded.arch_config, loaded.task, 1, ctx, gen), loaded)["input_ids"]
            t16 = _time(lambda: model.generate(ids, max_new_tokens=16))
            t48 = _time(lambda: model.generate(ids, max_new_tokens=48))
            per_ctx.append(f"context {ctx}: {(t48 - t16) / 32 * 1e3:.1f} ms/token")
        report.extra["decode time per token vs context"] = "; ".join(per_ctx)


_PEAK_RSS = r"""
def peak_rss_mb():
    # VmHWM: this process's own high-water mark (ru_maxrss would include the parent's, as Linux
    # keeps it across fork and exec)
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

_COLD = _PEAK_RSS + r"""
import json, sys, time
t0 = time.perf_counter()
import torch
folder, side, name, batch, seq, device, task, train = sys.argv[1:9]
if side == "zoo":
    from zoo.loading import load_full
    from zoo.types import import_ref
    loaded = load_full(name, checkpoint=folder, device=device, task=task)
    model, config, arch, source = loaded.model, loaded.arch_config, loaded.architecture, loaded.config
else:  # transformers, with zoo used only to find the reference class and example inputs
    from zoo.loading import resolve as find_entry
    from zoo.registry import get_catalog
    from zoo.types import import_ref
    catalog = get_catalog()
    entry = find_entry(name)
    conv, arch = catalog.converter(entry.converter), catalog.architecture(entry.architecture)
    source = json.load(open(folder + "/config.json"))
    model = import_ref(conv.reference)(source, task, folder).eval().to(device)
    config = conv.architecture_config(source)
load_s = time.perf_counter() - t0
inputs = import_ref(arch.example_inputs)(config, task, int(batch), int(seq), torch.Generator().manual_seed(0))
inputs = {k: v.to(device) for k, v in inputs.items()}
if train == "train":  # two training steps: the second has the optimizer's state allocated
    from zoo.trainverify import with_labels
    batch = with_labels(inputs, task, source, torch.Generator().manual_seed(0))
    model.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        opt.step()
else:
    with torch.inference_mode():
        model(**inputs)
total = time.perf_counter() - t0
print(json.dumps({"load_s": load_s, "first_output_s": total, "peak_rss_mb": peak_rss_mb()}))
"""


def _cold_run(side, folder, name, batch, seq, device, task, train: bool = False) -> Dict[str, float]:
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", _COLD, str(folder), side, name, str(batch), str(seq), device, task,
                          "train" if train else "infer"],
                         capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"cold-start run ({side}) failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _bench_cold(report, source, loaded, batch, seq, compare, train=False):
    """A fresh process: import, load, one forward. Peak RSS against the weights' size. With
    ``train``, also a fresh process per side for two training steps: their peak RSS."""
    device = str(loaded.device)
    weights_mb = sum(p.stat().st_size for p in loaded.files) / 2**20
    args = (source.folder, source.load_name, batch, seq, device, loaded.task)
    runs = [(_cold_run("zoo", *args), _cold_run("transformers", *args) if compare else None)
            for _ in range(3)]
    z = statistics.median(r[0]["first_output_s"] for r in runs)
    ratios = [r[0]["first_output_s"] / r[1]["first_output_s"] for r in runs] if compare else []
    ref = statistics.median(r[1]["first_output_s"] for r in runs) if compare else None
    report.stats.append(_stat("cold start: process -> first output", "s", z, ref, ratios))
    z_rss = max(r[0]["peak_rss_mb"] for r in runs)
    ref_rss = max(r[1]["peak_rss_mb"] for r in runs) if compare else None
    report.stats.append(Stat("cold start: peak RSS", "MB", z_rss, ref_rss,
                             note=f"weights file {weights_mb:.0f} MB"))
    if train:
        z_train = _cold_run("zoo", *args, train=True)["peak_rss_mb"]
        r_train = _cold_run("transformers", *args, train=True)["peak_rss_mb"] if compare else None
        report.stats.append(Stat("training steps: peak RSS", "MB", z_train, r_train,
                                 note="fresh process, 2 steps of forward + backward + AdamW"))
    base = _baseline_rss_mb()
    report.extra["peak RSS over the weights"] = (
        f"{z_rss:.0f} MB peak, of which ~{base:.0f} MB is python + torch + zoo imported; "
        f"the rest is {(z_rss - base) / weights_mb * 100:.0f}% of the {weights_mb:.0f} MB weights file"
    )


def _baseline_rss_mb() -> float:
    code = _PEAK_RSS + "import torch, zoo.loading\nprint(peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    return float(out.stdout.strip() or 0)
