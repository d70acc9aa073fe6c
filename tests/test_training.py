"""`zoo train` / zoo.train: the data each task reads (checked before any step), the loop, its
checkpoints (loaded back by transformers and by zoo), --resume, determinism, the copy task,
and torch.distributed with two processes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import zoo
from zoo import tinytokenizer
from zoo.errors import InputError
from zoo.registry import get_catalog
from zoo.trainingdata import load_dataset

TEXTS = ["The zoo opens at nine in the morning.", "Paris is the capital of France.", "The house is wonderful.",
         "The cat sat on the mat while the dog slept in the garden.", "Every weight is read from the file."]


def _gpt2(root: Path) -> Path:
    conv = get_catalog().converter("hf_gpt2")
    config = {**conv.tiny_config, "vocab_size": 512, "n_positions": 64, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
              "attn_pdrop": 0.0}
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).save_pretrained(str(root))
    tinytokenizer.write(root, conv.tokenizer, config)
    return root


def _bert_classifier(root: Path, **extra) -> Path:
    conv = get_catalog().converter("hf_bert")
    config = {**conv.tiny_config, "vocab_size": 512, "num_labels": 2, "id2label": {0: "NEG", 1: "POS"},
              "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, **extra}
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(transformers.BertConfig(**config)).save_pretrained(str(root))
    tinytokenizer.write(root, conv.tokenizer, config)
    return root


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return _gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return _bert_classifier(tmp_path_factory.mktemp("bert-cls"))


# ----------------------------------------------------------------------------- data


def _loaded(folder, task=None):
    from zoo.loading import load_full

    return load_full(str(folder), device="cpu", task=task)


@pytest.mark.parametrize("content, message", [
    ("", "empty: no records"),
    ('{"text": "fine"}\n{"text": 3}\n', ":2: 'text' must be a non-empty string"),
    ('{"text": "fine"}\nnot json\n', ":2: not a JSON object"),
    ('{"txt": "typo"}\n', ":1: no 'text' field"),
])
def test_bad_text_data_names_the_file_and_line(content, message, gpt2, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    with pytest.raises(InputError) as err:
        load_dataset(_loaded(gpt2), "text-generation", str(path), 32, 0)
    assert message in str(err.value) and str(path) in str(err.value)


def test_bad_classification_and_translation_data_are_named(classifier, gpt2, tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"text": "good", "label": "POS"}\n{"text": "bad", "label": "MEH"}\n')
    with pytest.raises(InputError, match=r"labels.jsonl:2: unknown label 'MEH' \(labels: NEG, POS\)"):
        load_dataset(_loaded(classifier), "text-classification", str(path), 32, 0)
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("a house\tein Haus\nno tab here\n")
    with pytest.raises(InputError, match=r"pairs.tsv:2: a line holds a source, a TAB, and a target"):
        load_dataset(_loaded(gpt2), "translation", str(tsv), 32, 0)
    with pytest.raises(InputError, match="no such folder"):
        load_dataset(_loaded(gpt2), "image-classification", str(tmp_path / "nothing"), 32, 0)
    with pytest.raises(InputError, match="no such data file"):
        load_dataset(_loaded(gpt2), "text-generation", str(tmp_path / "missing.txt"), 32, 0)
