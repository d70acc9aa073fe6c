"""Seeded random weights in the Hub's own layout, for when no checkpoint is at hand.

``zoo verify`` and ``zoo bench`` fall back to them offline; ``zoo run --random-weights``,
``zoo convert --random-weights`` and ``zoo.load(..., random_weights=True)`` ask for them. The
weights are those of the converter's transformers reference built with a seed, saved in the
key layout of the files on the Hub (``hub_layout``), so the whole loading path runs on them.
Outputs are meaningless, but every step is the real one. Beside the weights goes a tokenizer
trained in code on a few sentences (:mod:`zoo.tinytokenizer`, from the converter's
``tokenizer`` description), so text goes in and comes out as with the real checkpoint.

Loading keeps them in a cache folder (``$ZOO_CACHE``, else ``~/.cache/zoo``), keyed by entry,
seed, config and transformers version, written through :func:`zoo.publish.publish`: the
second use is as fast as a local checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict

from . import checkpoint as ckpt
from . import tinytokenizer
from .errors import InputError, ZooError
from .memory import check_size
from .publish import PublishError, publish
from .registry import get_catalog
from .types import Converter, import_ref

CACHE_ENV = "ZOO_CACHE"


def write(converter: Converter, config: Dict[str, Any], task: str, seed: int, folder: Path):
    """Build the reference with seeded random weights and save it in the Hub's key layout in
    ``folder`` (its size checked against memory first, as loading checks zoo's); returns it."""
    import torch

    if converter.reference is None:
        raise ZooError(f"converter {converter.name!r} has no transformers reference to make random weights with")
    check_size(get_catalog().architecture(converter.architecture), converter.architecture_config(config), task,
               source=config)
    torch.manual_seed(seed)
    ref = import_ref(converter.reference)(dict(config), task).eval()
    state = ref.state_dict()
    if converter.hub_layout is not None:
        state = import_ref(converter.hub_layout)(state, dict(config))
    ckpt.save_safetensors({k: v.detach().clone() for k, v in state.items()}, folder / "model.safetensors",
                          metadata={"format": "pt"})
    ref.config.to_json_file(str(folder / "config.json"))
    if converter.tokenizer:
        tinytokenizer.write(folder, converter.tokenizer, {**ref.config.to_dict(), **config})
    return ref


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "zoo").expanduser()


def cached(name: str, converter: Converter, config: Dict[str, Any], task: str, seed: int) -> Path:
    """A folder of seeded random weights for this entry, written once and reused."""
    import transformers

    key = json.dumps({"config": config, "task": task, "seed": seed, "converter": converter.name,
                      "version": converter.version, "transformers": transformers.__version__,
                      "tokenizer": [converter.tokenizer, tinytokenizer.CORPUS]},
                     sort_keys=True, default=str)
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:60]
    folder = cache_dir() / "random-weights" / f"{safe}-seed{seed}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return folder
    try:
        publish(folder, lambda tmp: write(converter, config, task, seed, tmp))
    except PublishError:  # another process wrote it meanwhile
        if not (folder / "model.safetensors").is_file():
            raise
    return folder


def instead_of(checkpoint, entry, converter: Converter, task: str, seed: int = 0) -> Path:
    """The random-weights folder that stands in for ``entry``'s checkpoint; a ``checkpoint``
    given as well is an error (it would be ignored)."""
    if checkpoint is not None:
        raise InputError("random weights or a checkpoint: give one of them, not both")
    return cached(entry.name, converter, dict(entry.config), task, int(seed))
