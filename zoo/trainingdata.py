"""Training data for ``zoo train``: read a file (or folder) for a task, check every record before
any step runs, and turn batches of records into model inputs with labels.

========================  ==========================================================
task                      data
========================  ==========================================================
text-generation           ``.txt`` (one document a line) or ``.jsonl`` with ``text``
fill-mask                 the same; 15% of tokens masked as BERT was trained
                          (transformers' ``DataCollatorForLanguageModeling``)
translation               ``.tsv`` (source TAB target) or ``.jsonl`` with ``source``/``target``
text-classification       ``.jsonl`` with ``text`` and ``label`` (a label name from the
                          config's ``id2label``, an id, or a number for regression)
image-classification      a folder with one sub-folder per class, named as the labels
copy                      none: random sequences over a small vocabulary, made in code
                          (the Annotated Transformer's first example)
========================  ==========================================================

Tokenizers are the checkpoint's own (transformers' ``AutoTokenizer``), images go through
:mod:`zoo.imaging` as the checkpoint's image processor prepares them. A malformed line, an
unknown label, an empty file or a missing folder is an :class:`InputError` naming the file and
the line. Per-token labels are :data:`zoo.losses.IGNORE` where nothing is to be predicted.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from .errors import InputError
from .losses import IGNORE

TEXT_TASKS = ("text-generation", "fill-mask")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass
class Dataset:
    """Checked records and the function that makes a batch of them into model inputs."""

    records: List[Any]
    collate: Callable[[List[Any]], Dict[str, torch.Tensor]]
    files: List[Path]  # what was read (their sha256 go into trainer_state.json)
    rng: Optional[torch.Generator] = None  # what the collator draws from (masking), saved to resume

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        return self.records[i]


def _lines(path: Path) -> List[tuple]:
    """``(line number, text)`` of the non-blank lines of a UTF-8 file."""
    if not path.is_file():
        raise InputError(f"{path}: no such data file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise InputError(f"{path}: empty: no records to train on")
    return lines


def _jsonl(path: Path, fields: Sequence[str]) -> List[tuple]:
    out = []
    for n, line in _lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{n}: not a JSON object ({exc.msg})") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}:{n}: not a JSON object")
        missing = [f for f in fields if f not in record]
        if missing:
            raise InputError(f"{path}:{n}: no {missing[0]!r} field (a record needs {', '.join(fields)})")
        out.append((n, record))
    return out


def _texts(path: Path) -> List[tuple]:
    if path.suffix == ".jsonl":
        records = _jsonl(path, ("text",))
        for n, r in records:
            if not isinstance(r["text"], str) or not r["text"].strip():
                raise InputError(f"{path}:{n}: 'text' must be a non-empty string")
        return [(n, r["text"]) for n, r in records]
    if path.suffix in (".txt", ""):
        return _lines(path)
    raise InputError(f"{path}: {path.suffix} is not a text data format (.txt or .jsonl)")


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def _mask(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)


def _tokenizer(loaded):
    from .tasks import load_tokenizer

    tok = load_tokenizer(loaded)
    if tok is None:
        raise InputError(f"{loaded.entry.name}: training on text needs the checkpoint's tokenizer "
                         f"(tokenizer.json / vocab.txt in its folder)")
    return tok


def _encoded(tok, path: Path, n: int, text: str, max_length: int) -> List[int]:
    ids = tok(text, truncation=True, max_length=max_length)["input_ids"]
    if len(ids) < 2:
        raise InputError(f"{path}:{n}: fewer than two tokens: nothing to learn from")
    return ids


def text_dataset(loaded, path: Path, task: str, max_length: int, seed: int) -> Dataset:
    tok = _tokenizer(loaded)
    rows = [_encoded(tok, path, n, text, max_length) for n, text in _texts(path)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    if task == "text-generation":
        def collate(batch):  # right padding: a causal model's real tokens never see it
            return {"input_ids": _pad(batch, pad), "labels": _pad(batch, IGNORE)}
        return Dataset(rows, collate, [path])
    if tok.mask_token_id is None:
        raise InputError(f"{loaded.entry.name}: fill-mask training needs a tokenizer with a mask token")
    from transformers import DataCollatorForLanguageModeling

    masker = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.15, return_tensors="pt")
    generator = torch.Generator().manual_seed(seed)

    def collate(batch):
        state = torch.random.get_rng_state()
        torch.random.set_rng_state(generator.get_state())  # the collator draws from torch's RNG
        try:
            out = masker([{"input_ids": ids} for ids in batch])
        finally:
            generator.set_state(torch.random.get_rng_state())
            torch.random.set_rng_state(state)
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"], "labels": out["labels"]}
    return Dataset(rows, collate, [path], generator)


def translation_dataset(loaded, path: Path, max_length: int) -> Dataset:
    tok = _tokenizer(loaded)
    if path.suffix == ".jsonl":
        pairs = [(n, r["source"], r["target"]) for n, r in _jsonl(path, ("source", "target"))]
    elif path.suffix == ".tsv":
        pairs = []
        for n, line in _lines(path):
            parts = line.split("\t")
            if len(parts) != 2 or not all(p.strip() for p in parts):
                raise InputError(f"{path}:{n}: a line holds a source, a TAB, and a target")
            pairs.append((n, parts[0], parts[1]))
    else:
        raise InputError(f"{path}: {path.suffix} is not a data format for translation (.tsv or .jsonl)")
    rows = []
    for n, source, target in pairs:
        enc = tok(source, text_target=target, truncation=True, max_length=max_length)
        if not enc["input_ids"] or not enc["labels"]:
            raise InputError(f"{path}:{n}: an empty source or target")
        rows.append((enc["input_ids"], enc["labels"]))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def collate(batch):
        sources, targets = [b[0] for b in batch], [b[1] for b in batch]
        return {"input_ids": _pad(sources, pad), "attention_mask": _mask(sources), "labels": _pad(targets, IGNORE)}
    return Dataset(rows, collate, [path])


def classification_dataset(loaded, path: Path, max_length: int) -> Dataset:
    tok = _tokenizer(loaded)
    if path.suffix != ".jsonl":
        raise InputError(f"{path}: text classification reads .jsonl records with 'text' and 'label'")
    id2label = {int(k): str(v) for k, v in (loaded.config.get("id2label") or {}).items()}
    label2id = {v: k for k, v in id2label.items()}
    num_labels = int(loaded.config.get("num_labels") or len(id2label) or 2)
    regression = loaded.config.get("problem_type") == "regression" or num_labels == 1
    rows = []
    for n, r in _jsonl(path, ("text", "label")):
        label = r["label"]
        if regression:
            if not isinstance(label, (int, float)) or isinstance(label, bool):
                raise InputError(f"{path}:{n}: label {label!r}: a regression label is a number")
            value: Any = float(label)
        elif isinstance(label, str) and label in label2id:
            value = label2id[label]
        elif isinstance(label, int) and not isinstance(label, bool) and 0 <= label < num_labels:
            value = label
        else:
            names = ", ".join(id2label.get(i, str(i)) for i in range(num_labels))
            raise InputError(f"{path}:{n}: unknown label {label!r} (labels: {names})")
        rows.append((_encoded(tok, path, n, r["text"], max_length), value))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def collate(batch):
        ids = [b[0] for b in batch]
        labels = torch.tensor([b[1] for b in batch], dtype=torch.float if regression else torch.long)
        return {"input_ids": _pad(ids, pad), "attention_mask": _mask(ids), "labels": labels}
    return Dataset(rows, collate, [path])


def image_dataset(loaded, folder: Path) -> Dataset:
    from .imaging import preprocess, settings_for

    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder (image classification reads one sub-folder per class)")
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise InputError(f"{folder}: no class sub-folders (one per label, named as the label)")
    id2label = {int(k): str(v) for k, v in (loaded.config.get("id2label") or {}).items()}
    label2id = {v: k for k, v in id2label.items()}
    records = []
    for c in classes:
        if c.name not in label2id:
            raise InputError(f"{c}: the model has no label {c.name!r} (its labels: "
                             f"{', '.join(sorted(label2id)[:10]) or 'none named'})")
        images = sorted(p for p in c.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise InputError(f"{c}: no images ({', '.join(IMAGE_SUFFIXES)})")
        records += [(p, label2id[c.name]) for p in images]
    settings = settings_for(loaded)

    def collate(batch):
        return {"pixel_values": preprocess([str(p) for p, _ in batch], settings),
                "labels": torch.tensor([label for _, label in batch], dtype=torch.long)}
    return Dataset(records, collate, sorted(p for p, _ in records))


def copy_dataset(arch_config, n: int, length: int, seed: int) -> Dataset:
    """The Annotated Transformer's copy task: ``n`` random sequences of ``length`` tokens over
    the vocabulary's ids 1.. (at most 10 distinct ones), to be copied; each starts with 1, the
    start symbol, as in the original. The vocabulary comes from the model's config."""
    vocab = int(arch_config.get("src_vocab_size", 11))
    high = min(vocab, 11)
    if high < 3:
        raise InputError(f"the copy task needs a vocabulary of at least 3 tokens, the model has {vocab}")
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(2, high, (n, length), generator=g)
    data[:, 0] = 1
    rows = [row.tolist() for row in data]

    def collate(batch):
        ids = torch.tensor(batch, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    return Dataset(rows, collate, [])


def load_dataset(loaded, task: str, data: Optional[str], max_length: int, seed: int,
                 copy_examples: int = 2000, copy_length: int = 10) -> Dataset:
    """The checked dataset of ``data`` for ``task`` (``copy`` makes its own)."""
    if task == "copy":
        if data is not None:
            raise InputError("the copy task makes its own data: drop --data")
        return copy_dataset(loaded.arch_config, copy_examples, copy_length, seed)
    if data is None:
        raise InputError(f"--data is required for {task} (a file, or a folder for images)")
    path = Path(data).expanduser()
    if task in TEXT_TASKS:
        return text_dataset(loaded, path, task, max_length, seed)
    if task == "translation":
        return translation_dataset(loaded, path, max_length)
    if task == "text-classification":
        return classification_dataset(loaded, path, max_length)
    if task == "image-classification":
        return image_dataset(loaded, path)
    raise InputError(f"zoo train has no data reader for {task!r} (tasks: {', '.join(TRAINABLE)})")


TRAINABLE = ("text-generation", "fill-mask", "translation", "text-classification", "image-classification", "copy")
