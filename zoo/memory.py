"""Sizes read from files are checked before anything is allocated.

A config with ``n_layer = 10**7`` or ``num_beams = 10**7`` would otherwise allocate until the
machine runs out. The loader asks the architecture for its parameter count
(``Architecture.parameter_count``, computed from the config alone) and generation computes its
key/value cache's size; either is refused, in one line naming the fields, the estimate and the
memory there is, when it cannot fit. ``ZOO_MEMORY_CHECK=0`` lets a user who means it go past.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from .errors import InputError
from .types import Architecture, import_ref

ENV = "ZOO_MEMORY_CHECK"


class MemoryBoundError(InputError):
    """A build or a generation that cannot fit in this machine's (or device's) memory."""


def human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def _meminfo(field: str) -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory(device=None, available: bool = False) -> Optional[int]:
    """Bytes of memory on ``device`` (a torch.device or None for the host): the total, or with
    ``available`` what is free now. None where it cannot be told."""
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info(device)
        return free if available else total
    if available:
        found = _meminfo("MemAvailable")
        if found is not None:
            return found
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check(need: int, what: str, fields: str, device=None, available: bool = False) -> None:
    """Refuse ``need`` bytes for ``what`` when the memory of ``device`` cannot hold them."""
    if os.environ.get(ENV, "1") == "0":
        return
    have = memory(device, available)
    if have is not None and need > have:
        where = "free on " + str(device) if available else ("of memory on " + str(device) if device is not None else "of memory")
        raise MemoryBoundError(
            f"{what} needs about {human(need)} ({fields}); this machine has {human(have)} {where}. "
            f"Check those values; {ENV}=0 goes past this check"
        )


def check_size(arch: Architecture, config: Mapping[str, Any], task: str, itemsize: int = 4, device=None,
               source: Optional[Mapping[str, Any]] = None) -> None:
    """Refuse a model whose parameters (``Architecture.parameter_count`` of the architecture's
    ``config``, at ``itemsize`` bytes) cannot fit in the memory of ``device``, naming the largest
    sizes of ``source`` (the config as its file spells it; by default ``config``)."""
    if arch.parameter_count is None:
        return
    n = import_ref(arch.parameter_count)(dict(config), task)
    shown = config if source is None else source
    sizes = sorted(((v, k) for k, v in shown.items() if isinstance(v, int) and not isinstance(v, bool)), reverse=True)
    named = ", ".join(f"{k}={v}" for v, k in sizes[:4]) or "its config"
    check(n * itemsize, f"{arch.name} with {n:,} parameters", f"from {named}", device)
