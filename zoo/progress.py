"""Progress on long work, on stderr, for a person watching a terminal.

The CLI switches it on (:func:`enable`) for commands that take a while (``verify``, ``bench``,
``run``, ``convert``), except under ``--json``; it shows only when stderr is a terminal, so
pipes, logs and tests stay clean. Steps print one line each (``zoo: building the reference...``);
loops (timed repeats, generated tokens) get a tqdm bar. The library shows nothing by itself.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator, Optional

_on = False


def enable(on: bool = True) -> None:
    global _on
    _on = on


def showing() -> bool:
    return _on and _isatty()


def _isatty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def step(message: str) -> None:
    """One line saying what zoo is doing now."""
    if showing():
        print(f"zoo: {message}...", file=sys.stderr, flush=True)


@contextlib.contextmanager
def bar(total: int, description: str, unit: str = "it", at_least: int = 1) -> Iterator[Optional[object]]:
    """A tqdm bar of ``total`` steps (``bar.update()`` per step), or None when not showing or
    when ``total`` is under ``at_least``."""
    if not showing() or total < at_least:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=f"zoo: {description}", unit=unit, leave=False, file=sys.stderr) as b:
        yield b
