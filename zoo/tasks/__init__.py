"""Task runners behind ``zoo run``, registered as plugins like everything else.

Each task is a :class:`zoo.types.Task` registered through the ``register_tasks`` hook; zoo's own
(this module is the built-in plugin that registers them) live one module per task, named after
it with underscores (``text-generation`` -> ``zoo.tasks.text_generation``). ``zoo run NAME
INPUT...`` loads the model for its task (or ``--task``) and calls the task's runner::

    def run(loaded: zoo.loading.Loaded, inputs: list[str], opts: RunOptions,
            emit: Callable[[str], None]) -> dict

``emit`` writes human-readable output as it is produced (streamed text, a table); the returned
dict is what ``--json`` prints. Runners raise :class:`zoo.errors.InputError` for bad input.
Each task names the options it reads (fields of :class:`RunOptions`); an option given for a task
that does not read it is an error (:func:`check_options`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, List, Optional, Sequence, Union

from ..errors import InputError
from ..hookspecs import hookimpl
from ..types import Task, import_ref

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
    question: Optional[str] = None  # question answering: the question (the inputs are the context)
    json: bool = False


BUILTIN = (
    Task("text-generation", "zoo.tasks.text_generation:run",
         ("ids", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "beams"),
         "continue a prompt (greedy, sampling or beam search), streamed"),
    Task("translation", "zoo.tasks.translation:run", ("ids", "max_new_tokens", "beams"),
         "translate a sentence (greedy or beam search)"),
    Task("fill-mask", "zoo.tasks.fill_mask:run", ("ids", "top", "embed"), "the likeliest tokens for each mask"),
    Task("feature-extraction", "zoo.tasks.feature_extraction:run", ("ids", "embed"), "a sentence embedding"),
    Task("image-classification", "zoo.tasks.image_classification:run", ("top",), "the top labels of an image"),
    Task("image-feature-extraction", "zoo.tasks.image_feature_extraction:run", (), "an image embedding"),
    Task("text-classification", "zoo.tasks.text_classification:run", ("ids", "top"),
         "the labels of a text with their scores"),
    Task("token-classification", "zoo.tasks.token_classification:run", (),
         "the entities of a text: words, spans, scores"),
    Task("question-answering", "zoo.tasks.question_answering:run", ("question", "top"),
         "the span of a context that answers a question"),
    Task("multiple-choice", "zoo.tasks.multiple_choice:run", (), "the choice that best continues a prompt"),
)


@hookimpl
def register_tasks(register):
    for task in BUILTIN:
        register(task)


def get_runner(task: Union[Task, str], given: Sequence[str] = ()) -> Callable:
    """The runner of ``task`` (a registered task or its name); ``given`` names the options the
    user gave (fields of :class:`RunOptions`), each of which the task must read."""
    if isinstance(task, str):
        from ..registry import get_catalog

        task = get_catalog().task(task)
    check_options(task, given)
    return import_ref(task.runner)


def check_options(task: Task, given: Sequence[str]) -> None:
    from ..registry import get_catalog

    known = {f.name for f in fields(RunOptions)}
    for name in given:
        if name not in known:
            raise InputError(f"task {task.name!r}: {name!r} is not a `zoo run` option")
        if name not in task.options and name != "json":
            users = [t.name for t in get_catalog().tasks.values() if name in t.options]
            raise InputError(f"--{name.replace('_', '-')} does not apply to {task.name}"
                             + (f" (it applies to {', '.join(users)})" if users else ""))


def run(name_or_path, *inputs: str, task: Optional[str] = None, checkpoint=None, device: Optional[str] = "auto",
        dtype=None, allow_pickle: bool = False, random_weights: bool = False, device_map=None,
        emit: Optional[Callable[[str], None]] = None, on_loaded: Optional[Callable] = None, **options) -> dict:
    """Load a model and run a task on ``inputs`` (text, image files; or ``ids=[...]``): what
    ``zoo run --json`` prints. ``task`` defaults to the model's own; ``options`` are the task's
    ``zoo run`` options by their field names (``max_new_tokens=``, ``top=``, ``beams=``, ...),
    each checked against what the task reads. ``emit`` receives the human-readable output as it
    is produced (the CLI prints it); ``on_loaded(loaded)`` is called once the model is loaded.
    ``device_map`` spreads the model over devices as in ``zoo.load`` (zoo.placement)."""
    from ..loading import load_full
    from ..registry import get_catalog

    known = {f.name for f in fields(RunOptions)} - {"json"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"zoo.run() got an unexpected option {unknown[0]!r} (options: {', '.join(sorted(known))})")
    if options.get("embed") and task is not None:
        raise InputError("embed is task='feature-extraction': give one of them")
    if options.get("embed"):
        task = "feature-extraction"
    chosen = get_catalog().task(task) if task is not None else None
    runner = get_runner(chosen, list(options)) if chosen is not None else None  # checked before loading
    loaded = load_full(name_or_path, checkpoint=checkpoint, device=device, dtype=dtype, allow_pickle=allow_pickle,
                       task=chosen and (chosen.builds or chosen.name), random_weights=random_weights,
                       device_map=device_map)
    if runner is None:
        runner = get_runner(loaded.task, list(options))
    if on_loaded is not None:
        on_loaded(loaded)
    opts = RunOptions(**options, json=emit is None)
    return runner(loaded, list(inputs), opts, emit or (lambda text: None))


def processor(name_or_path, *, checkpoint=None, revision: Optional[str] = None, allow_pickle: bool = False,
              random_weights: bool = False, seed: int = 0):
    """The checkpoint's own tokenizer (transformers' ``AutoTokenizer``) or image processor
    (``AutoImageProcessor``), from the same folder ``zoo.load`` reads: what turns text or images
    into the model's inputs (with ``random_weights=True``, the tokenizer trained in code beside
    them). Raises :class:`InputError` when the folder has neither."""
    from .. import randomweights
    from ..loading import resolve, weight_files
    from ..registry import get_catalog

    entry = resolve(str(name_or_path))
    if random_weights:
        catalog = get_catalog()
        converter = catalog.converter(entry.converter)
        checkpoint = randomweights.instead_of(checkpoint, entry, converter, entry.task, seed)
    folder, _files = weight_files(entry, checkpoint, allow_pickle, revision)
    if folder is not None and any((folder / n).is_file() for n in TOKENIZER_FILES):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(str(folder))
    raise InputError(f"{entry.name}: {folder or 'the entry'} has no tokenizer or preprocessing files "
                     f"({', '.join(TOKENIZER_FILES)}, preprocessor_config.json)")


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "source.spm", "tokenizer_config.json")


def load_tokenizer(loaded):
    """The checkpoint folder's tokenizer (transformers ``AutoTokenizer``), or ``None`` when the
    folder has no tokenizer files."""
    folder = loaded.folder
    if folder is None:
        return None
    if not any((folder / n).is_file() for n in TOKENIZER_FILES):
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
