"""Shared fixtures. Nothing here touches the network: checkpoints are tiny random transformers
models written to tmp folders in the layouts real files use."""
from __future__ import annotations

import hashlib
import os
import math
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("ZOO_CACHE", tempfile.mkdtemp(prefix="zoo-test-cache-"))  # random weights land here
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def digest(folder: Path) -> dict:
    """sha256 of every file below ``folder``: tests assert inputs are unchanged."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def cached_repo(cache: Path, repo_id: str = "org/m"):
    """An empty snapshot of ``repo_id`` at main in a Hugging Face cache folder: (repo, snapshot)."""
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    return repo, snap


def converters():
    from zoo.registry import get_catalog

    # converters without a transformers reference (the Annotated Transformer's state dicts)
    # cannot be verified against one; their own test files pin their numerics
    convs = [c for c in get_catalog().converters.values() if c.reference is not None]
    return sorted(convs, key=lambda c: c.name)


def write_checkpoint(converter, folder: Path, layout: str = "hub", config=None, seed: int = 0):
    """A random reference model for ``converter`` saved in ``folder``.

    ``layout="hub"``: the key layout of the files on the Hub (``converter.hub_layout``);
    ``layout="save_pretrained"``: whatever transformers' ``save_pretrained`` writes today.
    Returns the reference model (eval mode).
    """
    import torch

    from zoo.types import import_ref
    from zoo.randomweights import write as write_random_checkpoint

    config = dict(config or converter.tiny_config)
    task = next(iter(converter.tasks.values()), None)
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "hub":
        return write_random_checkpoint(converter, config, task, seed, folder)
    torch.manual_seed(seed)
    ref = import_ref(converter.reference)(config, task).eval()
    ref.save_pretrained(str(folder))
    return ref


@pytest.fixture(autouse=True)
def _fresh_plugins():
    """Each test sees the plugins and catalog as installed, whatever the last test changed."""
    from zoo import pluginmanager

    yield
    pluginmanager._extra.clear()
    pluginmanager.reset()


def leave_every_other_step(monkeypatch):
    """Make a screen leave every other step to the caller's plain path, as it does for steps it
    cannot tell; returns the count of steps left."""
    from zoo.accel import argmax

    left, screen_call = [0], argmax.ScreenedArgmax.__call__

    def call(self, h, *args, **kwargs):
        if (self.calls + left[0]) % 2:
            left[0] += 1
            return None
        return screen_call(self, h, *args, **kwargs)

    monkeypatch.setattr(argmax.ScreenedArgmax, "__call__", call)
    return left


# ----------------------------------------------------------------------------- dropout statistics


def zero_fraction_ok(fraction: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(fraction - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def record_dropout(model):
    """Forward hooks on every nn.Dropout of ``model``: per module, [zeroed, counted] of the
    elements its input had nonzero, and whether the kept ones were scaled by 1 / (1 - p)."""
    import torch

    stats = {}

    def hook(module, inputs, output):
        x = inputs[0]
        live = x != 0
        zeroed = (output == 0) & live
        s = stats.setdefault(module, [0, 0, True])
        s[0] += int(zeroed.sum())
        s[1] += int(live.sum())
        kept = live & ~zeroed
        if module.p > 0:
            s[2] &= torch.allclose(output[kept], x[kept] / (1 - module.p), rtol=1e-5, atol=1e-6)
        else:
            s[2] &= torch.equal(output, x)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    return stats, handles


class DropoutDraws:
    """Records every dropout mask drawn while it is entered, as torch draws them on CPU (an
    ``aten.bernoulli_`` with the keep probability): ``draws`` lists (drop probability, elements,
    share dropped) in call order. It sees inside code that calls no module (the speed layer's
    fast paths), where forward hooks cannot, and sets no hook that would make it step aside."""

    def __init__(self):
        self.draws = []
        self._mode = None

    def __enter__(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        draws = self.draws

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                if func is torch.ops.aten.bernoulli_.float:
                    keep = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
                    mask = args[0]
                    draws.append((round(1 - keep, 6), mask.numel(), float((mask == 0).double().mean())))
                return out

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)

    def rates(self):
        return [p for p, _, _ in self.draws]

    def plausible(self, sigmas: float = 5.0) -> bool:
        """Whether each draw dropped a share of its elements plausible for its probability."""
        return all(zero_fraction_ok(share, p, n, sigmas) for p, n, share in self.draws)


def attention_dropout_recorder(monkeypatch):
    """Wrap F.scaled_dot_product_attention: record each call's dropout_p and, where it is not 0,
    count the attention probabilities it zeroes (read through an identity value matrix, with
    the call's own mask), among those that were not zero already."""
    import torch
    import torch.nn.functional as F

    real = F.scaled_dot_product_attention
    seen, counts = [], [0, 0]

    def sdpa(q, k, v, *args, dropout_p=0.0, **kwargs):
        seen.append(dropout_p)
        if dropout_p:
            eye = torch.eye(k.shape[-2]).expand(*k.shape[:-1], k.shape[-2])
            probs = real(q, k, eye, *args, **kwargs)
            dropped = real(q, k, eye, *args, dropout_p=dropout_p, **kwargs)
            live = probs > 0
            counts[0] += int(((dropped == 0) & live).sum())
            counts[1] += int(live.sum())
        return real(q, k, v, *args, dropout_p=dropout_p, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    return seen, counts
