"""The conversion engine: applies a converter's key map with strict accounting.

Every source key is consumed (mapped onto a target) or dropped by a named rule; every target
the model expects is filled exactly once; every shape is checked. Any defect raises one
:class:`~zoo.errors.ConversionError` that lists all offending keys, so nothing is half-loaded.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .errors import ConversionError
from .types import Converter, Map

_MAX_LISTED = 12


def _template_regex(template: str) -> "re.Pattern[str]":
    return re.compile("^" + r"(\d+)".join(re.escape(p) for p in template.split("{}")) + "$")


def fill_template(template: str, groups: Tuple[str, ...]) -> str:
    out = template
    for g in groups:
        out = out.replace("{}", g, 1)
    return out


@dataclass
class Report:
    """The key accounting of one conversion."""

    converter: str
    consumed: Dict[str, str] = field(default_factory=dict)  # source key -> target key
    dropped: Dict[str, str] = field(default_factory=dict)  # source key -> reason
    renamed: Dict[str, str] = field(default_factory=dict)  # original -> renamed source key
    transforms: Dict[str, str] = field(default_factory=dict)  # source key -> transform name

    def summary(self) -> str:
        reasons: Dict[str, int] = {}
        for why in self.dropped.values():
            reasons[why] = reasons.get(why, 0) + 1
        parts = [f"{len(self.consumed)} keys loaded"]
        parts += [f"{n} dropped ({why})" for why, n in sorted(reasons.items())]
        return ", ".join(parts)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "converter": self.converter,
            "loaded": len(self.consumed),
            "dropped": dict(sorted(self.dropped.items())),
            "renamed": len(self.renamed),
            "transforms": dict(sorted(self.transforms.items())),
        }


class _Compiled:
    def __init__(self, converter: Converter):
        self.converter = converter
        self.renames = [(re.compile(r.pattern), r.repl) for r in converter.renames]
        self.rules = [(_template_regex(m.source), m) for m in converter.key_map]

    def rename(self, key: str) -> str:
        for pattern, repl in self.renames:
            key = pattern.sub(repl, key)
        return key

    def match(self, key: str) -> Optional[Tuple[Map, Tuple[str, ...]]]:
        for regex, rule in self.rules:
            m = regex.match(key)
            if m:
                return rule, m.groups()
        return None


_compiled: Dict[int, _Compiled] = {}


def compile_key_map(converter: Converter) -> _Compiled:
    c = _compiled.get(id(converter))
    if c is None or c.converter is not converter:
        c = _compiled[id(converter)] = _Compiled(converter)
    return c


def _listing(items: List[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return shown + more


def _expected_source(target: str, compiled: "_Compiled") -> str:
    """``target`` and the source key the key map expects for it (what the file should hold)."""
    for rule in compiled.converter.key_map:
        if rule.target is None:
            continue
        m = _template_regex(rule.target).match(target)
        if m:
            source = fill_template(rule.source, m.groups())
            return target if source == target else f"{target} (source key {source})"
    return target


def convert(
    source: Mapping[str, Any],
    converter: Converter,
    expected: Mapping[str, Any],
) -> Tuple[Dict[str, Any], Report]:
    """Map ``source`` tensors onto the target keys in ``expected`` (key -> a tensor-like with
    ``.shape`` and ``.dtype``, e.g. the model's state dict on the meta device).

    Returns the target state dict and its :class:`Report`; raises :class:`ConversionError`
    listing unknown source keys, missing targets, duplicates and shape mismatches together.
    """
    compiled = compile_key_map(converter)
    report = Report(converter.name)
    out: Dict[str, Any] = {}
    origin: Dict[str, str] = {}
    unknown: List[str] = []
    duplicate: List[str] = []
    shapes: List[str] = []
    mismatched = set()
    for key in sorted(source):
        renamed = compiled.rename(key)
        if renamed != key:
            report.renamed[key] = renamed
        hit = compiled.match(renamed)
        if hit is None:
            unknown.append(key)
            continue
        rule, groups = hit
        if rule.target is None:
            report.dropped[key] = rule.why
            continue
        target = fill_template(rule.target, groups)
        if target not in expected:
            if rule.unused:
                report.dropped[key] = rule.unused
            else:
                unknown.append(f"{key} (-> {target}, which the model does not have)")
            continue
        if target in out:
            duplicate.append(f"{key} and {origin[target]} (both -> {target})")
            continue
        tensor = source[key]
        if rule.transform is not None:
            tensor = rule.transform.forward(tensor)
            report.transforms[key] = rule.transform.name
        want = tuple(expected[target].shape)
        if tensor.is_floating_point() != expected[target].is_floating_point():
            shapes.append(
                f"{key}: checkpoint dtype {tensor.dtype}, model {target} expects "
                f"{expected[target].dtype}"
            )
            mismatched.add(target)
            continue
        if tuple(tensor.shape) != want:
            shapes.append(
                f"{key}: checkpoint {list(tensor.shape)}"
                + (f" ({rule.transform.name})" if rule.transform else "")
                + f", model {target} expects {list(want)}"
            )
            mismatched.add(target)
            continue
        out[target] = tensor
        origin[target] = key
        report.consumed[key] = target
    missing = [_expected_source(t, compiled) for t in sorted(set(expected) - set(out) - mismatched)]
    problems = []
    if shapes:
        problems.append(f"shape/dtype mismatch: {_listing(shapes)}")
    if missing:
        problems.append(f"missing from the checkpoint: {_listing(missing)}")
    if unknown:
        problems.append(f"unexpected keys (no rule maps them): {_listing(unknown)}")
    if duplicate:
        problems.append(f"two source keys for one target: {_listing(duplicate)}")
    if problems:
        raise ConversionError(f"converter {converter.name!r}: " + "; ".join(problems))
    return out, report


def export(
    state: Mapping[str, Any], converter: Converter, layer_counts: Optional[Mapping[str, int]] = None
) -> Dict[str, Any]:
    """Reverse a key map: zoo state dict -> source layout (keys as the map's source templates).

    Renames are not undone: the result uses the canonical source names of the key map.
    """
    reverse = [(_template_regex(m.target), m) for m in converter.key_map if m.target is not None]
    out: Dict[str, Any] = {}
    unknown = []
    for key, tensor in state.items():
        for regex, rule in reverse:
            m = regex.match(key)
            if m:
                value = rule.transform.inverse(tensor) if rule.transform else tensor
                out[fill_template(rule.source, m.groups())] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"converter {converter.name!r} cannot export: {_listing(unknown)}")
    return out
