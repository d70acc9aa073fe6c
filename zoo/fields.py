"""What a value read from a file must be, as data: one table of field kinds, shared by every
source format.

A converter declares the config.json fields its architecture reads (``Converter.config_fields``:
field name -> kind); :func:`check` refuses a value that is not of its kind in one line naming the
file (or catalog entry), the field and the value. A field left out or ``null`` is not checked
(the architecture's default applies); fields a converter does not name are not read.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping, Tuple

Kind = Tuple[Callable[[Any], bool], str]  # (is the value of this kind?, what it must be)


def _int(v: Any, least: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


COUNT: Kind = (lambda v: _int(v, 1), "an integer >= 1")
SIZE = COUNT
TOKEN_ID: Kind = (lambda v: _int(v, 0), "a token id (an integer >= 0)")
TOKEN_IDS: Kind = (lambda v: _int(v, 0) or (isinstance(v, list) and bool(v) and all(_int(t, 0) for t in v)),
                   "a token id (an integer >= 0) or a list of token ids")
NUMBER: Kind = (_number, "a finite number")
POSITIVE: Kind = (lambda v: _number(v) and v > 0, "a finite number > 0")
PROBABILITY: Kind = (lambda v: _number(v) and 0 <= v <= 1, "a number from 0 to 1")
FLAG: Kind = (lambda v: isinstance(v, bool), "true or false")
NAME: Kind = (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string")
NAMES: Kind = (lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of strings")
SIZE_2D: Kind = (lambda v: _int(v, 1) or (isinstance(v, list) and len(v) == 2 and all(_int(s, 1) for s in v)),
                 "an integer >= 1 or [height, width]")
def _label_names(v: Any) -> bool:
    """``{"0": "NEG", "1": "POS"}``: a name for every id from 0 to n - 1, none missing."""
    if not isinstance(v, dict) or not all(isinstance(s, str) for s in v.values()):
        return False
    try:
        ids = {int(k) for k in v if not isinstance(k, bool)}
    except (TypeError, ValueError):
        return False
    return len(ids) == len(v) and ids == set(range(len(v)))


LABELS: Kind = (_label_names, "an object naming every label id from 0 to n - 1")

# a classifier's training loss, as transformers' configs name it (``problem_type``)
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
PROBLEM_TYPE: Kind = (lambda v: v in PROBLEM_TYPES, "one of " + ", ".join(PROBLEM_TYPES))


# the fields that together say a classifier's labels (transformers derives num_labels from id2label)
LABEL_FIELDS = ("num_labels", "id2label", "label2id")


def label_count(config: Mapping[str, Any], family: str, error=ValueError) -> int:
    """A classifier's outputs as transformers counts them: ``num_labels`` when given (it wins
    over ``id2label``), else the entries of ``id2label``, else 2; an empty ``id2label`` is
    refused with ``error`` naming ``family``."""
    if config.get("num_labels") is not None:
        return config["num_labels"]
    labels = config.get("id2label")
    if labels is None:
        return 2
    if not labels:
        raise error(f"{family}: config field id2label={{}} names no labels")
    return len(labels)


# fields every Hugging Face config.json may hold, whatever the format
COMMON = {"architectures": NAMES, "model_type": NAME, "id2label": LABELS, "label2id": (
    lambda v: isinstance(v, dict) and all(_int(i, 0) for i in v.values()), "an object of label ids")}


def check(config: Mapping[str, Any], fields: Mapping[str, Kind], where: str, error=ValueError) -> None:
    """Raise ``error`` naming ``where``, the field and the value for the first field of
    ``fields`` (and :data:`COMMON`) whose value in ``config`` is not of its kind."""
    for key, (valid, what) in {**COMMON, **fields}.items():
        value = config.get(key)
        if value is not None and not valid(value):
            raise error(f"{where}: field {key} must be {what}, got {_show(value)}")


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
