"""Task runners behind ``zoo run``: one module per task, named after it with underscores.

``zoo run NAME INPUT...`` loads the model and calls ``zoo.tasks.<task>.run`` (``text-generation``
-> ``zoo.tasks.text_generation``). A runner has the signature::

    def run(loaded: zoo.loading.Loaded, inputs: list[str], opts: RunOptions,
            emit: Callable[[str], None]) -> dict

``emit`` writes human-readable output as it is produced (streamed text, a table); the returned
dict is what ``--json`` prints. Runners raise :class:`zoo.errors.InputError` for bad input.
Each module names the options it reads in ``OPTIONS`` (fields of :class:`RunOptions`); an
option given for a task that does not read it is an error (:func:`check_options`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from ..errors import InputError

DEFAULT_NEW_TOKENS = 32  # --max-new-tokens when the checkpoint sets no length (gpt2's does not)


@dataclass
class RunOptions:
    """Every ``zoo run`` option; a runner reads the ones that mean something for its task."""

    max_new_tokens: Optional[int] = None  # None: the checkpoint's default
    temperature: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None
    ids: Optional[List[int]] = None  # token ids given directly (no tokenizer needed)
    beams: Optional[int] = None  # None: the checkpoint's num_beams
    embed: bool = False
    top: int = 5
    json: bool = False


TASKS = ("text-generation", "translation", "fill-mask", "feature-extraction", "image-classification",
         "image-feature-extraction")


def _module(task: str):
    module_name = f"{__name__}.{task.replace('-', '_')}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise InputError(f"`zoo run` does not support the task {task!r} yet") from None


def get_runner(task: str, given: Sequence[str] = ()) -> Callable:
    """The runner of ``task``; ``given`` names the options the user gave (fields of
    :class:`RunOptions`), each of which the task must read."""
    module = _module(task)
    check_options(task, module.OPTIONS, given)
    return module.run


def check_options(task: str, reads, given: Sequence[str]) -> None:
    for name in given:
        if name not in reads and name != "json":
            users = [t for t in TASKS if name in _module(t).OPTIONS]
            raise InputError(f"--{name.replace('_', '-')} does not apply to {task}"
                             + (f" (it applies to {', '.join(users)})" if users else ""))


def load_tokenizer(loaded):
    """The checkpoint folder's tokenizer (transformers ``AutoTokenizer``), or ``None`` when the
    folder has no tokenizer files."""
    folder = loaded.folder
    if folder is None:
        return None
    names = ("tokenizer.json", "vocab.json", "vocab.txt", "source.spm", "tokenizer_config.json")
    if not any((folder / n).is_file() for n in names):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:
        raise InputError(f"{folder}: cannot read its tokenizer ({exc.__class__.__name__}: {exc})") from None


def parse_ids(text: str) -> List[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise InputError(f"--ids takes comma-separated integers, got {text!r}") from None
    if not ids:
        raise InputError("--ids is empty")
    too_big = [i for i in ids if not 0 <= i < 2**63]
    if too_big:
        raise InputError(f"--ids: {too_big[0]} is not a token id (ids are integers from 0 up)")
    return ids


def prompt_ids(loaded, inputs: List[str], opts: RunOptions, what: str, hint: str):
    """Token ids of the input: ``--ids`` as given, else the joined INPUT text through the
    checkpoint's tokenizer. Returns ``(ids, tokenizer or None)``; ``what`` names the input in
    errors and ``hint`` says which tokenizer files a folder needs."""
    if opts.ids is not None:
        return list(opts.ids), None
    tok = load_tokenizer(loaded)
    if tok is None:
        raise InputError(
            f"{loaded.entry.name}: the checkpoint has no tokenizer files; pass {what} token ids "
            f"with --ids 1,2,3 (or a --checkpoint folder {hint})"
        )
    text = " ".join(inputs).strip()
    if not text:
        raise InputError("empty input: give some text (or --ids)")
    return tok(text)["input_ids"], tok
