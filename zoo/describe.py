"""``zoo info``: what zoo knows of a catalog name or a checkpoint folder, without running it.

For a catalog entry: its fields, and whether its weights are in the Hugging Face cache (no
request is made). For a local folder or file: the architecture, converter and task it would be
loaded as, its config, its tensors (count, dtypes, bytes, size on disk) and the key accounting
of the conversion for that task (what loads, what would be dropped and why), computed on the
meta device: no weights are copied, nothing is built for real.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from .errors import UnknownModelError, ZooError
from .registry import get_catalog
from .types import import_ref


def ignored_fields(converter, config: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The config fields set here that the format's reference reads but ignores, with how."""
    return {k: {"value": config[k], "read_as": why} for k, why in converter.ignored_fields.items() if k in config}


def labels(config: Mapping[str, Any], from_file: bool) -> Optional[Dict[str, Any]]:
    """How many labels a classifier's config names, and where their names come from."""
    id2label = config.get("id2label") or {}
    count = config.get("num_labels") or len(id2label)
    if not count:
        return None
    if id2label:
        source = "id2label of config.json" if from_file else "id2label of the catalog entry's config"
    else:
        source = f"none named: LABEL_0 .. LABEL_{count - 1}" + (
            "" if from_file else " (the checkpoint's config.json names them once downloaded)")
    return {"count": int(count), "source": source}


def describe(name_or_path: str, *, task: Optional[str] = None, allow_pickle: bool = False) -> Dict[str, Any]:
    """What ``zoo info`` shows, as a dict (its ``--json``). A catalog entry is described
    without importing torch; a checkpoint is read (memory-mapped) and converted on the meta
    device."""
    catalog = get_catalog()
    entry = catalog.find(str(name_or_path))
    if entry is None:  # a path (resolving one reads files: torch comes in here)
        from .loading import resolve

        entry = resolve(str(name_or_path), catalog)
    arch = catalog.architecture(entry.architecture)
    conv = catalog.converter(entry.converter)
    task = task or entry.task
    if task not in arch.tasks:  # as zoo.loading.check_task, without importing torch
        raise UnknownModelError(f"architecture {arch.name!r} has no task {task!r} (tasks: {', '.join(arch.tasks)})")
    data: Dict[str, Any] = {
        "name": entry.name,
        "description": entry.description,
        "architecture": entry.architecture,
        "converter": entry.converter,
        "task": task,
        "tasks": list(arch.tasks),
        "repo": entry.repo,
        "revision": entry.revision if entry.repo else None,
        "aliases": list(entry.aliases),
        "params": entry.params,
        "config": dict(entry.config),
        "ignored_fields": ignored_fields(conv, entry.config),
        "labels": labels(entry.config, from_file=entry.path is not None),
        "preprocessing": dict(entry.preprocessing),
        "origin": entry.origin,
        "converter_rules": len(conv.key_map),
        "cached": None,
    }
    if entry.path is None:
        if entry.repo:
            from .hub import cached

            folder = cached(entry.repo, entry.revision) or cached(entry.repo, entry.revision, allow_pickle=True)
            data["cached"] = str(folder) if folder else None
        return data
    data.update(_checkpoint(Path(entry.path), entry, arch, conv, task, allow_pickle))
    return data


def _checkpoint(path: Path, entry, arch, conv, task: str, allow_pickle: bool) -> Dict[str, Any]:
    """Tensors, sizes and key accounting of a local checkpoint for ``task``."""
    from . import checkpoint as ckpt
    from .convert import convert
    from .loading import build_model, configure, weight_files

    folder, files = weight_files(entry, None, allow_pickle, None)
    tensors = ckpt.read_weights(files)
    dtypes = Counter(str(t.dtype).replace("torch.", "") for t in tensors.values())
    out: Dict[str, Any] = {
        "files": [str(p) for p in files.paths],
        "format": "zoo-native" if (folder / ckpt.ZOO_META).is_file() else files.format,
        "tensors": len(tensors),
        "dtypes": dict(dtypes.most_common()),
        "tensor_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "size_on_disk": sum(p.stat().st_size for p in files.paths),
    }
    config = configure(entry, folder, conv)
    if conv.config_from_weights is not None:
        config = dict(import_ref(conv.config_from_weights)(config, list(tensors)))
    model = build_model(arch, conv.architecture_config(config), task, source=config)  # meta device
    expected = model.state_dict()
    out["params"] = sum(p.numel() for p in model.parameters())
    if out["format"] == "zoo-native":
        out["accounting"] = {"loaded": len(tensors), "dropped": {}}
        return out
    try:
        _, report = convert(tensors, conv, expected)
    except ZooError as exc:
        out["accounting"] = {"loads": False, "problem": str(exc)}
        return out
    reasons = Counter(report.dropped.values())
    out["accounting"] = {"loads": True, "loaded": len(report.consumed),
                         "dropped": {why: n for why, n in reasons.most_common()}}
    return out

