"""zoo: a plugin-based model zoo with a weight-conversion registry.

    >>> import zoo
    >>> model = zoo.load("gpt2")                    # registry name, alias, or local folder
    >>> zoo.list_models("bert*")                    # catalog entries matching a pattern

Importing ``zoo`` does not import torch; :func:`load` and :func:`verify` do.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Sequence

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


def load(name_or_path, **kwargs) -> "torch.nn.Module":
    """Load a model, ready in eval mode. See :func:`zoo.loading.load` for the arguments."""
    from .loading import load as _load

    return _load(name_or_path, **kwargs)


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
