"""Discovers plugins through the ``zoo`` entry-point group and collects what they register.

Every entry point loads in isolation: one that fails to import, implements a hook that does not
exist, raises inside a hook, registers garbage, or registers a name another plugin already took
is recorded (``zoo plugins`` shows it), reported in one line on stderr, and skipped; everything
else keeps working. Environment switches:

``ZOO_STRICT_PLUGINS=1``
    any of those problems raises :class:`~zoo.errors.PluginError` instead.
``ZOO_PLUGINS=a,b``
    load only the entry points with these names.
``ZOO_DISABLE_PLUGINS=a,b``
    skip the entry points with these names.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Dict, List, Optional, Tuple

import pluggy

from . import hookspecs
from .errors import PluginError
from .types import Architecture, Converter, Task

GROUP = "zoo"
STRICT_ENV = "ZOO_STRICT_PLUGINS"
ONLY_ENV = "ZOO_PLUGINS"
DISABLE_ENV = "ZOO_DISABLE_PLUGINS"


@dataclass
class PluginInfo:
    """What ``zoo plugins`` reports about one plugin."""

    name: str
    value: str
    distribution: Optional[str] = None
    version: Optional[str] = None
    registered: Dict[str, List[str]] = field(default_factory=dict)
    errors: List[str] = field(default_factory=list)
    loaded: bool = False

    @property
    def label(self) -> str:
        dist = f"{self.distribution} {self.version}" if self.distribution else "no distribution"
        return f"plugin {self.name!r} ({dist})"

    def as_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "distribution": self.distribution,
            "version": self.version,
            "loaded": self.loaded,
            "registered": self.registered,
            "errors": self.errors,
        }


@dataclass
class Plugins:
    """Everything the plugins registered, by name, with who registered it."""

    manager: pluggy.PluginManager
    infos: Dict[str, PluginInfo]
    architectures: Dict[str, Architecture] = field(default_factory=dict)
    converters: Dict[str, Converter] = field(default_factory=dict)
    tasks: Dict[str, Task] = field(default_factory=dict)
    models: List[Tuple[str, Any]] = field(default_factory=list)  # (plugin name, entry or dict)
    owner: Dict[Tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> plugin

    def problems(self) -> List[str]:
        return [f"{info.label}: {e}" for info in self.infos.values() for e in info.errors]


def _env_names(var: str) -> Optional[set]:
    raw = os.environ.get(var, "").strip()
    return {n.strip() for n in raw.split(",") if n.strip()} if raw else None


def strict() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() not in ("", "0", "false", "no")


_extra: List[Tuple[str, Any]] = []  # plugins registered in-process (tests, notebooks)
_cache: Optional[Plugins] = None


def add_plugin(obj: Any, name: str) -> None:
    """Register a plugin object in this process, as if it came from an entry point."""
    _extra.append((name, obj))
    reset()


def remove_plugin(name: str) -> None:
    _extra[:] = [(n, o) for n, o in _extra if n != name]
    reset()


def reset() -> None:
    """Forget what was discovered; the next :func:`get_plugins` looks again (and the next
    ``zoo.registry.get_catalog()`` builds the catalog again, since it is built from them)."""
    global _cache
    _cache = None


def get_plugins() -> Plugins:
    """Load every plugin once per process (cached) and return what they registered."""
    global _cache
    if _cache is None:
        _cache = _discover()
    return _cache


def report_failure(info: PluginInfo, message: str) -> None:
    """Record a plugin's failure: a warning on stderr, or :class:`PluginError` in strict mode."""
    info.errors.append(message)
    if strict():
        raise PluginError(f"{info.label}: {message}")
    print(
        f"zoo: warning: {info.label}: {message} — skipped (`zoo plugins` for details; "
        f"{STRICT_ENV}=1 makes this an error)",
        file=sys.stderr,
    )


def isolated(info: PluginInfo, what: str, fn: Callable[[], Any]) -> Tuple[bool, Any]:
    """Run a plugin's code: (True, its result), or (False, None) after reporting what it raised.

    Everything a plugin raises is caught, ``SystemExit`` included (a plugin that calls
    ``sys.exit()`` must not end zoo); only an interrupt (Ctrl-C) goes on, to end zoo."""
    try:
        return True, fn()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: B036 - SystemExit and GeneratorExit from a plugin too
        report_failure(info, f"{what} {exc.__class__.__name__}: {exc}")
        return False, None


def call_hook(info: PluginInfo, hook: str, impl, args: Dict[str, Any]) -> bool:
    """Call one plugin's implementation of a collecting hook; whether it ran as the contract says
    (returned nothing: what it offers goes through the callback)."""
    ok, result = isolated(info, f"{hook} raised", lambda: impl.function(*[args[a] for a in impl.argnames]))
    if ok and result is not None:
        callback = next(iter(args))
        report_failure(info, f"{hook} returned {_short(result)} instead of calling {callback}(...); "
                             f"nothing it returned was used")
        return False
    return ok


def _short(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


def _entry_points() -> List[Tuple[PluginInfo, Callable[[], Any]]]:
    only, disabled = _env_names(ONLY_ENV), _env_names(DISABLE_ENV)
    found = []
    seen = set()
    # zoo's own plugins first, so that a third party cannot take a built-in name.
    eps = metadata.entry_points(group=GROUP)
    builtin = lambda e: getattr(getattr(e, "dist", None), "name", None) == "zoo"
    for ep in sorted(eps, key=lambda e: (not builtin(e), e.name)):
        if (only is not None and ep.name not in only) or (disabled and ep.name in disabled):
            continue
        dist = getattr(ep, "dist", None)
        key = (ep.name, ep.value)
        if key in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(key)
        info = PluginInfo(
            name=ep.name,
            value=ep.value,
            distribution=dist.metadata["Name"] if dist else None,
            version=dist.version if dist else None,
        )
        found.append((info, ep.load))
    for name, obj in _extra:
        found.append((PluginInfo(name=name, value=repr(obj)), lambda obj=obj: obj))
    return found


def _discover() -> Plugins:
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    plugins = Plugins(manager=pm, infos={})
    for info, load in _entry_points():
        if info.name in plugins.infos:
            report_failure(info, f"entry-point name {info.name!r} is used by two plugins")
            continue
        plugins.infos[info.name] = info
        # ImportError, SyntaxError, a bad hookimpl signature, a sys.exit() at import, ...
        loaded, _ = isolated(info, "failed to load:", lambda: pm.register(load(), name=info.name))
        if not loaded:
            continue
        try:
            pm.check_pending()  # hookimpls for hooks that do not exist (misspelled names)
        except pluggy.PluginValidationError as exc:
            pm.unregister(name=info.name)
            report_failure(info, f"implements an unknown hook: {exc}")
            continue
        info.loaded = True

    _collect(plugins, "register_architectures", "architecture", Architecture, plugins.architectures)
    _collect(plugins, "register_converters", "converter", Converter, plugins.converters)
    _collect(plugins, "register_tasks", "task", Task, plugins.tasks)
    _collect(plugins, "register_models", "model", None, None)
    return plugins


def _collect(plugins: Plugins, hook: str, kind: str, cls, into: Optional[dict]) -> None:
    caller = getattr(plugins.manager.hook, hook)
    for impl in caller.get_hookimpls():  # registration order: built-ins first
        info = plugins.infos[impl.plugin_name]
        got: List[Any] = []
        if not call_hook(info, hook, impl, {"register": got.append}):
            continue
        for obj in got:
            if into is None:  # models are validated by the registry
                plugins.models.append((impl.plugin_name, obj))
                name = obj.get("name") if isinstance(obj, dict) else getattr(obj, "name", None)
                info.registered.setdefault(kind, []).append(str(name))
                continue
            if not isinstance(obj, cls):
                report_failure(info, f"{hook} registered {obj!r}, not a zoo.types.{cls.__name__}")
                continue
            owner = plugins.owner.get((kind, obj.name))
            if owner is not None:
                report_failure(
                    info,
                    f"{kind} {obj.name!r} is already registered by "
                    f"{plugins.infos[owner].label}",
                )
                continue
            plugins.owner[(kind, obj.name)] = impl.plugin_name
            into[obj.name] = obj
            info.registered.setdefault(kind, []).append(obj.name)


def register_commands(cli) -> None:
    """Let plugins add CLI commands; a failing plugin is reported and skipped."""
    plugins = get_plugins()
    caller = plugins.manager.hook.register_commands
    for impl in caller.get_hookimpls():
        info = plugins.infos[impl.plugin_name]
        before = set(cli.commands)
        if not call_hook(info, "register_commands", impl, {"cli": cli}):
            continue
        info.registered.setdefault("command", []).extend(sorted(set(cli.commands) - before))
