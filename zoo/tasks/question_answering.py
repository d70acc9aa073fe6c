"""``zoo run NAME --question Q CONTEXT...`` for extractive question answering: the span of the
context that answers, its score and character offsets.

The span is picked as transformers 4's question-answering pipeline picked it (transformers 5
no longer has that pipeline):

* question and context are tokenized together, the context cut into windows of at most
  ``MAX_SEQ_LEN`` tokens (384, or less when the model's context is shorter) that overlap by
  ``DOC_STRIDE`` tokens (128, at most half a window);
* in each window, the start and end logits of tokens outside the context are set to -10000
  (the first token, [CLS], stays in), each is normalized by a softmax, and the first token's
  probability is then set to 0;
* a span's score is p(start) * p(end), over context tokens with start <= end and at most
  ``MAX_ANSWER_LEN`` (15) tokens; the best spans of every window compete, best first;
* the answer's character offsets come from the fast tokenizer's offset mapping.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from ..errors import InputError
from . import load_tokenizer

MAX_SEQ_LEN = 384
DOC_STRIDE = 128
MAX_ANSWER_LEN = 15
MASKED = -10000.0


def windows(tok, question: str, context: str, max_len: int):
    """The tokenized windows of ``(question, context)``: input ids, attention mask, token
    types, offsets and which tokens belong to the context."""
    stride = min(DOC_STRIDE, max_len // 2)
    question_len = len(tok(question, add_special_tokens=False)["input_ids"])
    if question_len + 4 + stride >= max_len:  # no room left for the context
        raise InputError(f"the question has {question_len} tokens: too long for windows of {max_len} tokens "
                         f"that keep {stride} tokens of overlap; shorten it")
    return tok(question, context, truncation="only_second", max_length=max_len, stride=stride,
               return_overflowing_tokens=True, return_offsets_mapping=True, padding="longest",
               return_token_type_ids=True)


def best_spans(start: torch.Tensor, end: torch.Tensor, in_context: torch.Tensor, top: int) -> List[tuple]:
    """``(score, start, end)`` of the ``top`` best spans of one window: ``start``/``end`` are
    the logits [T], ``in_context`` [T] the tokens an answer may use (plus the first token,
    which takes part in the softmax only)."""
    keep = in_context.clone()
    keep[0] = True
    p_start = torch.where(keep, start, torch.tensor(MASKED)).softmax(-1)
    p_end = torch.where(keep, end, torch.tensor(MASKED)).softmax(-1)
    p_start[0] = p_end[0] = 0.0
    scores = p_start[:, None] * p_end[None, :]  # [start, end]
    scores = torch.triu(scores) - torch.triu(scores, diagonal=MAX_ANSWER_LEN)  # start <= end < start + 15
    flat = scores.flatten()
    order = flat.argsort(descending=True)
    out = []
    T = scores.shape[0]
    for index in order.tolist():
        s, e = divmod(index, T)
        if flat[index] <= 0:
            break
        if in_context[s] and in_context[e]:
            out.append((float(flat[index]), s, e))
            if len(out) == top:
                break
    return out


def run(loaded, inputs, opts, emit):
    question, context = (opts.question or "").strip(), " ".join(inputs).strip()
    if not question:
        raise InputError("question answering needs a question: zoo run MODEL --question 'Who ...?' CONTEXT")
    if not context:
        raise InputError("empty context: give the text to find the answer in")
    if opts.top < 1:
        raise InputError(f"--top must be >= 1, got {opts.top}")
    tok = load_tokenizer(loaded)
    if tok is None or not getattr(tok, "is_fast", False):
        raise InputError(f"{loaded.entry.name}: question answering needs the checkpoint's fast tokenizer "
                         f"(tokenizer.json), for the answer's character offsets")
    limit = int(loaded.config.get("max_position_embeddings", MAX_SEQ_LEN))
    enc = windows(tok, question, context, min(MAX_SEQ_LEN, tok.model_max_length, limit))
    ids = torch.tensor(enc["input_ids"], device=loaded.device)
    mask = torch.tensor(enc["attention_mask"], device=loaded.device)
    types = torch.tensor(enc["token_type_ids"], device=loaded.device)
    with torch.inference_mode():
        out = loaded.model(ids, attention_mask=mask, token_type_ids=types)
    if out.start_logits is None or out.end_logits is None:
        raise InputError(f"{loaded.entry.name} was loaded for {loaded.task!r}: it gives no answer spans")
    found: List[tuple] = []
    for w in range(ids.shape[0]):
        in_context = torch.tensor([s == 1 for s in enc.sequence_ids(w)]) & mask[w].bool().cpu()
        for score, s, e in best_spans(out.start_logits[w].float().cpu(), out.end_logits[w].float().cpu(),
                                      in_context, opts.top):
            found.append((score, enc["offset_mapping"][w][s][0], enc["offset_mapping"][w][e][1]))
    answers: List[Dict[str, Any]] = []
    for score, a, b in sorted(found, key=lambda f: -f[0]):
        if any(x["start"] == a and x["end"] == b for x in answers):  # the same span seen in two windows
            continue
        answers.append({"answer": context[a:b], "score": score, "start": int(a), "end": int(b)})
        if len(answers) == opts.top:
            break
    if not answers:
        raise InputError("no answer span found in the context")
    if not opts.json:
        for x in answers:
            emit(f"{x['score']:.4f}  {x['answer']!r} [{x['start']}:{x['end']}]\n")
    return {"model": loaded.entry.name, "question": question, "windows": int(ids.shape[0]), "answers": answers,
            **answers[0]}
