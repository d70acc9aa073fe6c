"""Exceptions raised by zoo's library code.

Each one subclasses a builtin so callers can catch the usual thing (``KeyError`` for an unknown
name, ``ValueError`` for bad data, ...). Only the CLI turns them into one-line messages and exit
codes; ``ZooError.exit_code`` says which.
"""
from __future__ import annotations


class ZooError(Exception):
    """Base of every error zoo raises on purpose. ``exit_code`` is what the CLI exits with."""

    exit_code = 2

    def __str__(self) -> str:  # KeyError would otherwise print the repr of its message
        return str(self.args[0]) if self.args else self.__class__.__name__


class UnknownModelError(ZooError, KeyError):
    """A name that is neither a registry entry, an alias, nor a local checkpoint folder."""


class RegistryError(ZooError, ValueError):
    """``registry.toml`` (or a plugin's catalog entry) is malformed; names file, table and field."""


class PluginError(ZooError, RuntimeError):
    """A plugin failed to load, raised in a hook, or collided with another plugin."""


class ConfigError(ZooError, ValueError):
    """A model config value the architecture does not implement; names the field and value."""


class CheckpointError(ZooError, ValueError):
    """A checkpoint that cannot be read: missing, truncated, corrupt, or refused (pickle)."""


class ConversionError(ZooError, ValueError):
    """Source keys and target parameters do not line up; lists every offending key and shape."""


class DownloadError(ZooError, OSError):
    """The weights are not on this machine and could not be fetched (offline, no network)."""


class DeviceError(ZooError, ValueError):
    """A device or dtype this machine cannot run; lists what is available."""


class InputError(ZooError, ValueError):
    """Bad run-time input: empty prompt, ids out of vocabulary, too long for the context, ..."""

