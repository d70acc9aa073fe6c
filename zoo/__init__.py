"""zoo: a plugin-based model zoo with a weight-conversion registry.

    >>> import zoo
    >>> model = zoo.load("gpt2")                    # registry name, alias, or local folder
    >>> zoo.list_models("bert*")                    # catalog entries matching a pattern

Importing ``zoo`` does not import torch; :func:`load` and :func:`verify` do.
"""
from __future__ import annotations

from typing import List, Sequence

from .errors import (  # noqa: F401
    CheckpointError,
    ConfigError,
    ConversionError,
    DeviceError,
    DownloadError,
    InputError,
    PluginError,
    RegistryError,
    UnknownModelError,
    ZooError,
)
from .hookspecs import hookimpl  # noqa: F401
from .types import Architecture, Converter, Drop, Map, ModelEntry, Rename, Task, Transform  # noqa: F401

from .version import __version__  # noqa: F401


def __getattr__(name: str):
    """``zoo.load``, ``zoo.verify``, ``zoo.run``, ``zoo.processor`` and ``zoo.train`` are
    :func:`zoo.loading.load`, :func:`zoo.verification.verify`, :func:`zoo.tasks.run`,
    :func:`zoo.tasks.processor` and :func:`zoo.training.train` themselves (real signatures,
    ``help()`` shows them), imported on first use so that ``import zoo`` does not import torch."""
    if name == "load":
        from .loading import load

        return load
    if name == "verify":
        from .verification import verify

        return verify
    if name == "run":  # what `zoo run --json` prints, from Python
        from .tasks import run

        return run
    if name == "processor":  # the checkpoint's tokenizer or image processor
        from .tasks import processor

        return processor
    if name == "train":  # what `zoo train --json` prints, from Python
        from .training import train

        return train
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


def list_models(include: Sequence[str] | str = (), exclude: Sequence[str] | str = ()) -> List[str]:
    """Sorted names of catalog entries matching fnmatch patterns (all when none given)."""
    from .registry import get_catalog

    include = [include] if isinstance(include, str) else include
    exclude = [exclude] if isinstance(exclude, str) else exclude
    return [e.name for e in get_catalog().list(include, exclude)]


def get_entry(name: str) -> ModelEntry:
    """The catalog entry for a name or alias; unknown names raise with suggestions."""
    from .registry import get_catalog

    return get_catalog().get(name)
