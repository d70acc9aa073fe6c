"""The catalog: named checkpoints from ``registry.toml`` and from plugins' ``register_models``.

``registry.toml`` is validated on load; every error names the file, the table and the field.
Set ``ZOO_REGISTRY=/path/to/file.toml`` to read another catalog instead of the built-in one.
"""
from __future__ import annotations

import difflib
import fnmatch
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from . import fields, pluginmanager
from .errors import RegistryError, UnknownModelError
from .types import Architecture, Converter, ModelEntry, Task

BUILTIN = Path(__file__).with_name("registry.toml")
ENV = "ZOO_REGISTRY"

# field -> (type(s), required, description)
_FIELDS: Dict[str, tuple] = {
    "converter": (str, True, "the converter that maps the checkpoint's keys"),
    "architecture": (str, False, "the architecture that builds the model (default: the converter's)"),
    "task": (str, False, "what the model does (default: from config 'architectures', else the architecture's first)"),
    "config": (dict, True, "the Hugging Face config values needed to build the model"),
    "repo": (str, False, "the Hugging Face repo id holding the weights"),
    "revision": (str, False, "a commit sha (or branch) of the repo, pinned"),
    "aliases": (list, False, "other names that resolve to this entry"),
    "description": (str, False, "one line for `zoo list`/`zoo info`"),
    "params": (int, False, "parameter count"),
    "preprocessing": (dict, False, "input preprocessing values (image size, mean, std, ...)"),
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


def entry_from_table(name: Any, table: Any, where: str) -> ModelEntry:
    """Validate one ``[models.NAME]`` table; ``where`` names the file for error messages."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise RegistryError(f"{where}: [models.{name}]: invalid model name {name!r}")
    ctx = f"{where}: [models.{name}]"
    if not isinstance(table, Mapping):
        raise RegistryError(f"{ctx}: must be a table, got {type(table).__name__}")
    for key in table:
        if key not in _FIELDS:
            close = difflib.get_close_matches(str(key), _FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RegistryError(f"{ctx}: unknown field {key!r}{hint}")
    for key, (typ, required, what) in _FIELDS.items():
        if key not in table:
            if required:
                raise RegistryError(f"{ctx}: missing field {key!r} ({what})")
            continue
        value = table[key]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise RegistryError(
                f"{ctx}: field {key!r} must be {typ.__name__}, got {type(value).__name__}"
            )
        if typ is str and not value.strip():
            raise RegistryError(f"{ctx}: field {key!r} is empty")
    aliases = table.get("aliases", [])
    for alias in aliases:
        if not isinstance(alias, str) or not _NAME.match(alias):
            raise RegistryError(f"{ctx}: field 'aliases' has an invalid alias {alias!r}")
    if "params" in table and table["params"] <= 0:
        raise RegistryError(f"{ctx}: field 'params' must be positive")
    return ModelEntry(
        name=name,
        architecture=table.get("architecture", ""),  # derived from the converter by the catalog
        converter=table["converter"],
        task=table.get("task", ""),
        config=dict(table["config"]),
        repo=table.get("repo"),
        revision=table.get("revision", "main"),
        aliases=tuple(aliases),
        description=table.get("description", ""),
        params=table.get("params"),
        preprocessing=dict(table.get("preprocessing", {})),
        origin=where,
    )


def parse_registry(text: str, where: str = "registry.toml") -> List[ModelEntry]:
    """Parse and validate catalog TOML; raise :class:`RegistryError` naming where it is wrong."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{where}: not valid TOML: {exc}") from None
    for key in doc:
        if key != "models":
            raise RegistryError(f"{where}: unknown top-level table [{key}] (expected [models.NAME])")
    models = doc.get("models", {})
    if not isinstance(models, dict):
        raise RegistryError(f"{where}: [models] must be a table of tables")
    return [entry_from_table(name, table, where) for name, table in models.items()]


@dataclass
class Catalog:
    """Catalog entries plus the architectures and converters the plugins registered."""

    models: Dict[str, ModelEntry]
    aliases: Dict[str, str]  # alias (lower-case) -> entry name
    architectures: Dict[str, Architecture]
    converters: Dict[str, Converter]
    tasks: Dict[str, Task] = field(default_factory=dict)

    def find(self, name: str) -> Optional[ModelEntry]:
        if name in self.models:
            return self.models[name]
        target = self.aliases.get(name.lower())
        return self.models[target] if target else None

    def get(self, name: str) -> ModelEntry:
        entry = self.find(name)
        if entry is None:
            raise UnknownModelError(self.unknown_message(name))
        return entry

    def unknown_message(self, name: str) -> str:
        candidates = sorted(set(self.models) | set(self.aliases))
        close = difflib.get_close_matches(name.lower(), candidates, n=6, cutoff=0.6)
        names = list(dict.fromkeys(self.aliases.get(c, c) for c in close))[:3]
        hint = f" — did you mean {' or '.join(repr(c) for c in names)}?" if names else "."
        return (
            f"unknown model {name!r}{hint} `zoo list` shows all names; a local checkpoint "
            f"folder (config.json + *.safetensors) works too"
        )

    def list(self, patterns: Sequence[str] = (), exclude: Sequence[str] = ()) -> List[ModelEntry]:
        """Entries whose name (or an alias) matches any fnmatch pattern, sorted by name."""

        def hit(entry: ModelEntry, pats: Iterable[str]) -> bool:
            names = (entry.name,) + entry.aliases
            return any(fnmatch.fnmatchcase(n.lower(), p.lower()) for p in pats for n in names)

        out = [
            e
            for e in self.models.values()
            if (not patterns or hit(e, patterns)) and not (exclude and hit(e, exclude))
        ]
        return sorted(out, key=lambda e: e.name)

    def architecture(self, name: str) -> Architecture:
        if name not in self.architectures:
            raise UnknownModelError(
                f"no plugin provides architecture {name!r} (known: "
                f"{', '.join(sorted(self.architectures)) or 'none'}; see `zoo plugins`)"
            )
        return self.architectures[name]

    def converter(self, name: str) -> Converter:
        if name not in self.converters:
            raise UnknownModelError(
                f"no plugin provides converter {name!r} (known: "
                f"{', '.join(sorted(self.converters)) or 'none'}; see `zoo plugins`)"
            )
        return self.converters[name]

    def task(self, name: str) -> Task:
        if name not in self.tasks:
            close = difflib.get_close_matches(name, self.tasks, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UnknownModelError(
                f"no plugin provides the task {name!r} for `zoo run` ({hint}known: "
                f"{', '.join(sorted(self.tasks)) or 'none'}; see `zoo plugins`)"
            )
        return self.tasks[name]

    def converter_for_config(self, config: Mapping[str, Any], where: str) -> Converter:
        """The converter for a checkpoint folder, chosen by its config's ``model_type``."""
        model_type = config.get("model_type")
        matches = [c for c in self.converters.values() if model_type in c.model_types]
        if not matches:
            known = sorted({t for c in self.converters.values() for t in c.model_types})
            raise UnknownModelError(
                f"{where}: no converter reads model_type {model_type!r} "
                f"(supported: {', '.join(known)})"
            )
        return sorted(matches, key=lambda c: c.name)[0]


_catalog: Optional[Catalog] = None
_built_from: Optional[tuple] = None  # (plugins, catalog path) the cached catalog was built from


def reset() -> None:
    """Forget the catalog; the next :func:`get_catalog` reads it again."""
    global _catalog
    _catalog = None


class _Unregistered(RegistryError):
    """An entry names a converter or architecture that no loaded plugin registered."""


def task_for(converter: Converter, arch: Architecture, config: Mapping[str, Any]) -> str:
    """The task a checkpoint's config names (its ``architectures`` classes, through the
    converter's table), else the architecture's default task."""
    classes = config.get("architectures") or []
    task = next((converter.tasks[c] for c in classes if isinstance(c, str) and c in converter.tasks), None)
    return task or arch.tasks[0]


def complete_entry(entry: ModelEntry, architectures: Mapping[str, Architecture],
                   converters: Mapping[str, Converter]) -> ModelEntry:
    """An entry with its architecture (the converter's) and task filled in and checked against
    what the plugins registered; :class:`RegistryError` names the entry and the field."""
    ctx = f"{entry.origin}: [models.{entry.name}]"
    converter = converters.get(entry.converter)
    if converter is None:
        raise _Unregistered(f"{ctx}: field 'converter': no converter {entry.converter!r} is registered "
                            f"(registered: {', '.join(sorted(converters)) or 'none'})")
    if entry.architecture and entry.architecture != converter.architecture:
        raise RegistryError(f"{ctx}: field 'architecture' is {entry.architecture!r}, but converter "
                            f"{converter.name!r} fills {converter.architecture!r} (the field can be left out)")
    arch = architectures.get(converter.architecture)
    if arch is None:
        raise _Unregistered(f"{ctx}: converter {converter.name!r} fills architecture {converter.architecture!r}, "
                            f"which no plugin registered")
    fields.check(entry.config, converter.config_fields, f"{ctx}: config", RegistryError)
    task = entry.task or task_for(converter, arch, entry.config)
    if task not in arch.tasks:
        raise RegistryError(f"{ctx}: field 'task' is {task!r}; architecture {arch.name!r} has {', '.join(arch.tasks)}")
    return replace(entry, architecture=arch.name, task=task)


def registry_path() -> Path:
    return Path(os.environ.get(ENV) or BUILTIN)


def get_catalog() -> Catalog:
    """The catalog of this process: ``registry.toml`` plus plugin entries (cached)."""
    global _catalog, _built_from
    plugins = pluginmanager.get_plugins()
    path = registry_path()
    if _catalog is not None and _built_from[0] is plugins and _built_from[1] == path:
        return _catalog
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read the catalog: {exc.strerror}") from None
    entries = parse_registry(text, str(path))
    models: Dict[str, ModelEntry] = {}
    aliases: Dict[str, str] = {}

    def add(entry: ModelEntry) -> None:
        for key in (entry.name,) + entry.aliases:
            owner = aliases.get(key.lower())
            if owner is not None:
                raise RegistryError(
                    f"{entry.origin}: [models.{entry.name}]: name {key!r} is already used by "
                    f"[models.{owner}] from {models[owner].origin}"
                )
        models[entry.name] = entry
        for key in (entry.name,) + entry.aliases:
            aliases[key.lower()] = entry.name

    filtered = bool(os.environ.get(pluginmanager.ONLY_ENV) or os.environ.get(pluginmanager.DISABLE_ENV))
    for entry in entries:
        try:
            add(complete_entry(entry, plugins.architectures, plugins.converters))
        except _Unregistered:
            if not filtered:  # with plugins switched off, their converters' entries go too
                raise
    for plugin_name, obj in plugins.models:
        info = plugins.infos[plugin_name]
        try:
            if isinstance(obj, Mapping):
                table = dict(obj)
                entry = entry_from_table(table.pop("name", None), table, info.label)
            elif isinstance(obj, ModelEntry):
                entry = obj
            else:
                raise RegistryError(f"{info.label}: registered {obj!r}, not a model entry")
            if entry.origin == "registry.toml":
                entry = ModelEntry(**{**entry.__dict__, "origin": info.label})
            add(complete_entry(entry, plugins.architectures, plugins.converters))
        except RegistryError as exc:
            pluginmanager.report_failure(info, str(exc))
    _catalog = Catalog(models, aliases, plugins.architectures, plugins.converters, plugins.tasks)
    _built_from = (plugins, path)
    return _catalog
