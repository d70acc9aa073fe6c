"""zoo: a plugin-based model zoo with a weight-conversion registry.

    >>> import zoo
    >>> model = zoo.load("gpt2")                    # registry name, alias, or local folder
    >>> zoo.list_models("bert*")                    # catalog entries matching a pattern

Importing ``zoo`` does not import torch; :func:`load` and :func:`verify` do.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Sequence

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

if TYPE_CHECKING:  # pragma: no cover
    import torch


def load(
    name_or_path,
    *,
    checkpoint=None,
    device: Optional[str] = "auto",
    dtype=None,
    allow_pickle: bool = False,
    revision: Optional[str] = None,
    task: Optional[str] = None,
    fast: bool = True,
    **config_overrides,
) -> "torch.nn.Module":
    """Load a model by catalog name, alias, or local checkpoint folder; returns it in eval mode.

    :param name_or_path: ``"gpt2"``, ``"openai-community/gpt2"``, or ``"path/to/folder"``
        (config.json + model.safetensors, or a sharded index).
    :param checkpoint: where a catalog entry's weights come from instead of the Hub.
    :param device: ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    :param dtype: ``None`` (float32), ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``.
    :param allow_pickle: read ``.bin`` pickles (with ``weights_only=True``); refused otherwise.
    :param revision: the Hub revision (branch, tag or commit sha) instead of the pinned one.
    :param task: build for another task the architecture supports (e.g. without a head).
    :param fast: apply the speed layer (zoo.accel); ``False`` gives the plain model.
    :param config_overrides: config values the weights cannot tell (e.g. ``heads=8``); a
        keyword that reads like a misspelling of another is an error.
    """
    from .loading import load as _load

    return _load(name_or_path, checkpoint=checkpoint, device=device, dtype=dtype, allow_pickle=allow_pickle,
                 revision=revision, task=task, fast=fast, **config_overrides)


def verify(name_or_path, **kwargs):
    """Compare zoo against transformers on the same weights. See :func:`zoo.verification.verify`."""
    from .verification import verify as _verify

    return _verify(name_or_path, **kwargs)


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
