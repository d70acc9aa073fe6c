"""`zoo run` for text classification, token classification and question answering, on BERT
checkpoints saved by transformers with a tokenizer trained in code: the output is what
transformers' pipelines give (text and token classification), and for question answering what
transformers 4's pipeline rule picks, written out independently here."""
from __future__ import annotations

import json
import math

import pytest
import torch
import transformers
from click.testing import CliRunner

from zoo import tinytokenizer
from zoo.cli import cli
from zoo.registry import get_catalog

CONFIG = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=64, type_vocab_size=2, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0, initializer_range=0.5)
TAGS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
TEXT = "The cat sat on the mat while the dog slept in the garden of Paris."
CONTEXT = " ".join(["The zoo opens at nine in the morning.", "Paris is the capital of France.",
                    "The house is wonderful.", "Every weight is read from the file, converted, and checked."] * 3)


def _folder(root, cls, **config):
    torch.manual_seed(0)
    model = cls(transformers.BertConfig(**CONFIG, **config)).eval()
    model.save_pretrained(str(root))
    tinytokenizer.write(root, get_catalog().converter("hf_bert").tokenizer, {**CONFIG, "pad_token_id": 0})
    return model, transformers.AutoTokenizer.from_pretrained(str(root))


def _run(*args):
    result = CliRunner().invoke(cli, ["run", *[str(a) for a in args], "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("problem", [None, "multi_label_classification", "regression"])
def test_text_classification_gives_the_pipelines_scores(problem, tmp_path):
    labels = 1 if problem == "regression" else 3
    extra = {"problem_type": problem} if problem else {}
    model, tok = _folder(tmp_path, transformers.BertForSequenceClassification, num_labels=labels,
                         id2label={i: f"class_{i}" for i in range(labels)}, **extra)
    ours = _run(tmp_path, TEXT, "--top", labels)
    pipe = transformers.pipeline("text-classification", model=model, tokenizer=tok, top_k=None)
    theirs = pipe([TEXT], function_to_apply={"regression": "none", "multi_label_classification": "sigmoid"}.get(problem, "softmax"))[0]
    assert [x["label"] for x in ours["labels"]] == [x["label"] for x in theirs]
    for a, b in zip(ours["labels"], theirs):
        assert math.isclose(a["score"], b["score"], rel_tol=1e-4, abs_tol=1e-5)


def test_token_classification_groups_as_the_simple_aggregation(tmp_path):
    model, tok = _folder(tmp_path, transformers.BertForTokenClassification, num_labels=5, id2label=TAGS)
    ours = _run(tmp_path, TEXT)["entities"]
    pipe = transformers.pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy="simple")
    theirs = pipe(TEXT)
    assert theirs, "the random head should tag something"
    assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in ours] == \
           [(e["entity_group"], e["word"], e["start"], e["end"]) for e in theirs]
    for a, b in zip(ours, theirs):
        assert math.isclose(a["score"], float(b["score"]), rel_tol=1e-4)


def _reference_answer(model, tok, question, context, max_len, stride, max_answer=15):
    """transformers 4's rule, written out: every window; softmax of start and end logits over
    the context tokens and the first token; that token's probability then 0; the best
    p(start) * p(end) over context spans of at most ``max_answer`` tokens."""
    enc = tok(question, context, truncation="only_second", max_length=max_len, stride=stride,
              return_overflowing_tokens=True, return_offsets_mapping=True, padding="longest", return_tensors="pt")
    offsets = enc.pop("offset_mapping")
    enc.pop("overflow_to_sample_mapping", None)
    with torch.no_grad():
        out = model(**enc)
    best = (-1.0, None, None)
    for w in range(enc["input_ids"].shape[0]):
        ctx = [i for i, sid in enumerate(enc.sequence_ids(w)) if sid == 1]
        allowed = [0] + ctx

        def probs(logits):
            z = sum(math.exp(float(logits[j]) - float(logits[allowed].max())) for j in allowed)
            return {i: math.exp(float(logits[i]) - float(logits[allowed].max())) / z for i in ctx}

        ps, pe = probs(out.start_logits[w]), probs(out.end_logits[w])
        for s in ctx:
            for e in ctx:
                if s <= e < s + max_answer and ps[s] * pe[e] > best[0]:
                    best = (ps[s] * pe[e], int(offsets[w][s][0]), int(offsets[w][e][1]))
    return best


def test_question_answering_picks_the_span_of_the_pipeline_rule(tmp_path):
    model, tok = _folder(tmp_path, transformers.BertForQuestionAnswering)
    question = "What is the capital of France?"
    ours = _run(tmp_path, "--question", question, CONTEXT)
    assert ours["windows"] > 1  # the context does not fit in one window of 64 tokens
    score, start, end = _reference_answer(model, tok, question, CONTEXT, max_len=64, stride=32)
    assert (ours["start"], ours["end"]) == (start, end) and ours["answer"] == CONTEXT[start:end]
    assert math.isclose(ours["score"], score, rel_tol=1e-4)


def test_question_answering_refuses_bad_input_in_one_line(tmp_path):
    _folder(tmp_path, transformers.BertForQuestionAnswering)
    for args, message in ((["--question", "", CONTEXT], "needs a question"),
                          (["--question", "Why?"], "empty context"),
                          (["--question", "why " * 60, CONTEXT], "too long")):
        result = CliRunner().invoke(cli, ["run", str(tmp_path), *args, "--device", "cpu"])
        lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("zoo: ") or "error" in line]
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output and len([x for x in lines if "error" in x]) == 1


def test_multiple_choice_scores_each_choice_as_the_model_does(tmp_path):
    model, tok = _folder(tmp_path, transformers.BertForMultipleChoice)
    prompt, choices = "The cat sat on", ["the mat.", "the moon in the garden.", "Paris."]
    ours = _run(tmp_path, prompt, *choices)
    enc = tok([prompt] * 3, choices, padding="longest", return_tensors="pt")
    with torch.no_grad():
        want = model(**{k: v[None] for k, v in enc.items()}).logits[0].softmax(-1)
    got = {c["choice"]: c["score"] for c in ours["choices"]}
    for i, choice in enumerate(choices):
        assert math.isclose(got[choice], float(want[i]), rel_tol=1e-4)
    assert ours["best"] == choices[int(want.argmax())]
