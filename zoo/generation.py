"""Generation, in one place: greedy, sampling and beam search, the stopping rules, and the
default length of a generation.

A causal language model decodes through :func:`generate` when it offers this small step
interface (GPT-2 does; any architecture plugin can):

- ``model.new_cache(batch, max_len)``: a key/value cache (zoo.kvcache.KVCache);
- ``model.hidden(input_ids, cache)``: ``(x, _)``, the final hidden states (B, T, C) of
  ``input_ids`` continuing what the cache holds, the cache advanced;
- ``model.head()``: ``(weight [V, C], bias or None)``, the output projection;
- ``model.check_ids(input_ids, room)``: refuses ids the model cannot take, or a prompt that
  leaves fewer than ``room`` positions.

The speed layer comes in through two questions only: :func:`zoo.accel.decode_step` (a faster
step for one new token, or None) and :func:`zoo.accel.argmax.screened` (greedy's token at
batch 1 from a bfloat16 screen of the head, or None where it cannot tell).

:func:`beam_search` is transformers' beam search, bookkeeping included, so the chosen ids are
identical; the encoder-decoder's ``generate`` uses it too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from . import progress
from .errors import ConfigError, InputError

# the tasks whose models generate (and whose checkpoints carry decoding defaults)
GENERATIVE_TASKS = ("text-generation", "translation")
NEG = -1.0e9  # "impossible" score of transformers' beam search bookkeeping (kept identical)


def make_generator(seed: Optional[int], device: torch.device) -> Optional[torch.Generator]:
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def check_sampling(temperature: Optional[float], top_k: Optional[int], top_p: Optional[float]) -> None:
    """Refuse sampling settings that make no sense (they would sample the least likely tokens,
    be ignored, or fail inside torch)."""
    if temperature is not None and not (math.isfinite(temperature) and temperature >= 0):
        raise InputError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 0):
        raise InputError(f"top_k must be an integer >= 0 (0: all tokens), got {top_k}")
    if top_p is not None and not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise InputError(f"top_p must be in (0, 1], got {top_p}")


def sampling_logits(
    logits: torch.Tensor, temperature: float, top_k: Optional[int] = None, top_p: Optional[float] = None
) -> torch.Tensor:
    """``logits`` [B, V] as sampling sees them, in transformers' order: divided by
    ``temperature``, then all but the ``top_k`` best set to -inf, then all but the smallest set
    of best tokens whose probabilities sum past ``top_p`` (nucleus; at least one token kept)."""
    logits = logits.float() / float(temperature)
    if top_k:
        k = min(int(top_k), logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ascending, order = torch.sort(logits, dim=-1)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - float(top_p)
        drop[..., -1] = False  # the best token always stays
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def next_token(
    logits: torch.Tensor,
    temperature: Optional[float] = None,
    top_k: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    top_p: Optional[float] = None,
) -> torch.Tensor:
    """Pick one token per row of ``logits`` [B, V]: argmax when ``temperature`` is 0/None,
    else a sample from the softmax of :func:`sampling_logits`."""
    if not temperature:
        return logits.argmax(dim=-1)
    probs = torch.softmax(sampling_logits(logits, temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def single_tokens(bad_words_ids) -> Tuple[int, ...]:
    """``bad_words_ids`` as token ids: entries are ids or one-token lists (transformers' form,
    ``[[58100]]``); a sequence of several tokens is refused."""
    out = []
    for ids in bad_words_ids or ():
        if isinstance(ids, int):
            out.append(ids)
        elif isinstance(ids, (list, tuple)) and len(ids) == 1:
            out.append(int(ids[0]))
        else:
            raise ConfigError(f"config field bad_words_ids entry {ids!r}: only single tokens are supported")
    return tuple(out)


def default_new_tokens(config: Mapping[str, Any], start_length: int, fallback: int) -> int:
    """How many tokens transformers' ``generate`` adds when not told: the config's
    ``max_new_tokens``, else its ``max_length`` less the ``start_length`` tokens the output
    starts with (the prompt; an encoder-decoder's decoder start token), else ``fallback``."""
    if config.get("max_new_tokens") is not None:
        return int(config["max_new_tokens"])
    if config.get("max_length") is not None:
        room = int(config["max_length"]) - start_length
        if room <= 0:
            raise InputError(
                f"the checkpoint's max_length={config['max_length']} leaves no room for new tokens after "
                f"{start_length} input tokens; pass --max-new-tokens"
            )
        return room
    return fallback


@torch.inference_mode()
def generate(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int = 20,
    temperature: Optional[float] = None,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: Optional[int] = None,
    eos_token_id: Union[int, Sequence[int], None] = None,
    callback: Optional[Callable[[torch.Tensor], None]] = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: Union[bool, str] = False,
    pad_token_id: Optional[int] = None,
) -> torch.Tensor:
    """Continue ``input_ids`` [B, T] by up to ``max_new_tokens``; returns [B, T + n] ids.

    Greedy when ``temperature`` is 0 or unset (the same tokens as transformers'
    ``generate(do_sample=False)``), else sampled with ``top_k``/``top_p``/``seed``
    (:func:`sampling_logits`). ``num_beams`` > 1 is beam search with transformers' scoring
    (``length_penalty``, ``early_stopping``); rows that finished early are padded with
    ``pad_token_id`` (default: the first eos id, as transformers does). ``callback`` receives
    each new column of ids [B] as it is produced (greedy and sampling: streaming). Stops early
    only when every row (every beam hypothesis) has produced ``eos_token_id`` (one id or
    several). The weights must not change during the call.
    """
    from . import accel
    from .accel.argmax import screened

    if max_new_tokens < 0:
        raise InputError("max_new_tokens must be >= 0")
    check_sampling(temperature, top_k, top_p)
    if int(num_beams) < 1:
        raise InputError(f"num_beams must be >= 1, got {num_beams}")
    if num_beams > 1 and temperature:
        raise InputError("beam search does not sample: leave temperature unset (or 0) with num_beams > 1")
    if num_beams > 1 and callback is not None:
        raise InputError("beam search cannot stream tokens: its hypotheses change until the end")
    model.check_ids(input_ids, max_new_tokens)
    B, T = input_ids.shape
    stop = None if eos_token_id is None else torch.tensor(eos_token_id, device=input_ids.device).view(-1)
    weight, bias = model.head()
    head = accel.head_product(model)
    fast = accel.decode_step(model)
    # rows that finished get padding: transformers' default is the (first) eos id
    pad = pad_token_id if pad_token_id is not None else (int(stop[0]) if stop is not None else 0)

    def last_hidden(tokens: torch.Tensor, cache) -> torch.Tensor:  # (B, C) of the last token
        if fast is not None and tokens.size(1) == 1 and cache.length > 0:
            return fast(tokens, cache)
        return model.hidden(tokens, cache)[0][:, -1]

    if num_beams > 1 and max_new_tokens > 0:
        cache = model.new_cache(B * num_beams, T + max_new_tokens)

        def step(tokens: torch.Tensor, cur_len: int) -> torch.Tensor:
            logits = head(last_hidden(tokens, cache), weight, bias)
            return F.log_softmax(logits.float(), dim=-1)

        return beam_search(step, cache.reorder, input_ids, num_beams=int(num_beams), max_length=T + max_new_tokens,
                           eos_token_id=stop, pad_token_id=pad, length_penalty=float(length_penalty),
                           early_stopping=early_stopping)

    cache = model.new_cache(B, T + max_new_tokens)
    gen = make_generator(seed, input_ids.device)
    # greedy at batch 1: the best token from a bfloat16 screen of the head (zoo.accel.argmax)
    best = screened(model, weight, B, max_new_tokens, bias=bias) if not temperature else None

    def pick(tokens: torch.Tensor, cur_len: int) -> torch.Tensor:
        x = last_hidden(tokens, cache)  # later ids come from the vocabulary itself
        nxt = best(x) if best is not None else None  # None: the screen cannot tell this step
        if nxt is None:
            nxt = next_token(head(x, weight, bias), temperature, top_k, gen, top_p)
        return nxt

    return token_by_token(pick, input_ids, max_new_tokens, stop, pad, callback)


def token_by_token(
    pick: Callable[[torch.Tensor, int], torch.Tensor],
    start: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: Optional[torch.Tensor],
    pad_token_id: int,
    callback: Optional[Callable[[torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Greedy decoding and sampling: ``start`` [B, T0] continued by ``pick(tokens, cur_len)``
    (the new tokens [B, t], all of ``start`` first; ``cur_len`` the position being filled) ->
    next token [B]. As transformers does, a row that produced an eos id gets ``pad_token_id``
    from then on, and decoding stops when every row has. Returns [B, T0 + n]."""
    B, T0 = start.shape
    out = torch.empty(B, T0 + max_new_tokens, dtype=torch.long, device=start.device)
    out[:, :T0] = start
    done = torch.zeros(B, dtype=torch.bool, device=start.device)
    tokens, n = start, T0
    # streamed tokens show themselves; otherwise a bar for long generations
    with progress.bar(0 if callback else max_new_tokens, "generating", unit="token", at_least=64) as shown:
        for _ in range(max_new_tokens):
            if shown is not None:
                shown.update()
            nxt = pick(tokens, n)
            if eos_token_id is not None:
                nxt = torch.where(done, pad_token_id, nxt)  # finished rows get padding
            out[:, n] = nxt
            n += 1
            if callback is not None:
                callback(nxt)
            tokens = out[:, n - 1 : n]
            if eos_token_id is not None:
                done |= torch.isin(nxt, eos_token_id)
                if bool(done.all()):
                    break
    return out[:, :n]


@dataclass(frozen=True)
class Processors:
    """transformers' logits processors that zoo's models use, as data, applied by
    :func:`process` in transformers' order."""

    banned: Sequence[int] = ()  # token ids never generated (bad_words_ids of one token, but not eos)
    forced_eos_token_id: Optional[int] = None  # the only choice on the last step
    renormalize: bool = False  # log_softmax once the others are applied


def process(logits: torch.Tensor, cur_len: int, max_length: int, p: Processors, log_probs: bool) -> torch.Tensor:
    """``logits`` [R, V] as a step scores them: (log_softmax for beam search), banned tokens ->
    -inf, forced eos on the last step, renormalization."""
    scores = logits.float()
    if log_probs:
        scores = F.log_softmax(scores, dim=-1)
    if p.banned:
        scores[:, list(p.banned)] = float("-inf")
    if forces_eos(p, cur_len, max_length):
        scores = torch.full_like(scores, float("-inf"))
        scores[:, p.forced_eos_token_id] = 0
    if p.renormalize:
        scores = F.log_softmax(scores, dim=-1)
    return scores


def forces_eos(p: Processors, cur_len: int, max_length: int) -> bool:
    """Whether the step filling ``cur_len`` is the last one, where eos is forced."""
    return p.forced_eos_token_id is not None and cur_len == max_length - 1


@torch.inference_mode()
def generate_seq2seq(
    model,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    max_new_tokens: int,
    num_beams: int,
    length_penalty: float,
    early_stopping: Union[bool, str],
    start_token_id: int,
    eos_token_id: Optional[int],
    pad_token_id: int,
) -> torch.Tensor:
    """Encoder-decoder generation: the source encoded once, then the decoder one token at a time
    from ``start_token_id``, greedy (``num_beams`` 1) or beam search; returns [B, 1 + n].

    The model offers ``encode(input_ids, attention_mask)`` -> ``(memory, src_mask)``,
    ``decode(memory, src_mask, tgt_ids, cache)`` -> states (cache advanced),
    ``new_cache(batch, max_len)``, ``head()`` -> ``(weight, bias)`` and ``processors()`` ->
    :class:`Processors`. Greedy at batch 1 takes its token from the bfloat16 screen of the head
    where it can tell (not on a forced-eos step)."""
    from . import accel
    from .accel.argmax import screened

    memory, src_mask = model.encode(input_ids, attention_mask)
    B, dev = memory.size(0), memory.device
    max_length = 1 + max_new_tokens
    weight, bias = model.head()
    head = accel.head_product(model)
    p = model.processors()
    start = torch.full((B, 1), start_token_id, dtype=torch.long, device=dev)
    eos = None if eos_token_id is None else torch.tensor([eos_token_id], device=dev)

    if num_beams > 1:
        nb = num_beams
        memory = memory.repeat_interleave(nb, dim=0)  # (B * nb, S, C): each beam reads its item's source
        src_mask = src_mask.repeat_interleave(nb, dim=0)
        cache = model.new_cache(B * nb, max_length)

        def step(tokens: torch.Tensor, cur_len: int) -> torch.Tensor:
            x = model.decode(memory, src_mask, tokens, cache)[:, -1]
            return process(head(x, weight, bias), cur_len, max_length, p, log_probs=True)

        return beam_search(step, cache.reorder, start, num_beams=nb, max_length=max_length, eos_token_id=eos,
                           pad_token_id=pad_token_id, length_penalty=length_penalty, early_stopping=early_stopping)

    cache = model.new_cache(B, max_length)
    best = screened(model, weight, B, max_new_tokens, bias=bias)
    banned = torch.tensor(list(p.banned), dtype=torch.long, device=dev)

    def pick(tokens: torch.Tensor, cur_len: int) -> torch.Tensor:
        x = model.decode(memory, src_mask, tokens, cache)[:, -1]
        nxt = None  # from the screen where it can tell (never on a forced-eos step)
        if best is not None and not forces_eos(p, cur_len, max_length):
            nxt = best(x, exclude=banned, renormalize=p.renormalize)
        if nxt is None:
            nxt = process(head(x, weight, bias), cur_len, max_length, p, log_probs=False).argmax(dim=-1)
        return nxt

    return token_by_token(pick, start, max_new_tokens, eos, pad_token_id)


def beam_search(
    step: Callable[[torch.Tensor, int], torch.Tensor],
    reorder: Callable[[torch.Tensor], None],
    start: torch.Tensor,
    *,
    num_beams: int,
    max_length: int,
    eos_token_id: Optional[torch.Tensor],
    pad_token_id: int,
    length_penalty: float,
    early_stopping: Union[bool, str],
) -> torch.Tensor:
    """Beam search with transformers' bookkeeping (so the chosen ids are identical).

    ``start`` [B, T0]: what every beam of an item starts from (a prompt; an encoder-decoder's
    decoder start token). ``step(tokens, cur_len)`` gets the beams' new tokens [B * nb, t]
    (all of ``start`` first, then one token) with ``cur_len`` the position being filled, and
    returns their processed log-probabilities [B * nb, V]; ``reorder(rows)`` makes row i of the
    model's cache old row ``rows[i]``.

    Per batch item it keeps ``nb`` running beams and the ``nb`` best finished hypotheses. Each
    step scores every (beam, token) continuation by the summed log-probability, takes the best
    ``2 * nb``; of those, the ones among the first ``nb`` that end in eos (or reach the length
    limit) become finished hypotheses with score ``sum / generated ** length_penalty``, and the
    best ``nb`` that did not end continue. An item stops improving when (``early_stopping`` not
    True) its best running beam, scored at the current length, cannot beat its worst finished
    hypothesis. Returns the best finished hypothesis of each item, [B, T0 + generated].
    """
    B, T0 = start.shape
    nb, dev = num_beams, start.device
    n_eos = 0 if eos_token_id is None else eos_token_id.numel()
    K = max(2, 1 + n_eos) * nb  # candidates kept per step: enough that nb survive the eos ones

    running = torch.full((B, nb, max_length), pad_token_id, dtype=torch.long, device=dev)
    running[:, :, :T0] = start[:, None, :]
    finished = running.clone()
    run_scores = torch.zeros(B, nb, device=dev)
    run_scores[:, 1:] = NEG  # only beam 0 is real at the start: no duplicate beams
    fin_scores = torch.full((B, nb), NEG, device=dev)
    fin_len = torch.zeros(B, nb, dtype=torch.long, device=dev)  # generated tokens per hypothesis
    is_fin = torch.zeros(B, nb, dtype=torch.bool, device=dev)
    can_improve = torch.ones(B, 1, dtype=torch.bool, device=dev)
    top_nb = torch.arange(K, device=dev) < nb  # only the first nb candidates may finish
    item = torch.arange(B, device=dev)[:, None]

    cur = T0
    tokens = running[:, :, :T0].reshape(B * nb, T0)
    with progress.bar(max_length - T0, f"beam search, {nb} beams", unit="token", at_least=64) as shown:
        while True:
            if shown is not None:
                shown.update()
            logp = step(tokens, cur)  # (B*nb, V)
            V = logp.size(-1)
            total = (logp.view(B, nb, V) + run_scores[:, :, None]).view(B, nb * V)
            cand_scores, cand = torch.topk(total, K)  # (B, K)
            beam, token = cand // V, cand % V
            cand_seqs = torch.take_along_dim(running, beam[:, :, None], dim=1)  # (B, K, max_length)
            cand_seqs[:, :, cur] = token
            generated = cur + 1 - T0
            stop = torch.isin(token, eos_token_id) if eos_token_id is not None else torch.zeros_like(token, dtype=torch.bool)
            stop = stop | (cur + 1 >= max_length)  # the length limit ends every candidate

            # the best nb candidates that did not stop keep running
            alive_scores = cand_scores + stop.float() * NEG
            keep = torch.topk(alive_scores, nb).indices
            running = torch.take_along_dim(cand_seqs, keep[:, :, None], dim=1)
            run_scores = torch.take_along_dim(alive_scores, keep, dim=1)
            rows = (item * nb + torch.take_along_dim(beam, keep, dim=1)).reshape(-1)

            # candidates that stopped join the finished hypotheses if they are among the best
            just_fin = stop & top_nb[None, :]
            new_scores = cand_scores / (generated**length_penalty)
            full = is_fin.all(dim=1, keepdim=True) & (early_stopping is True)
            new_scores = new_scores + full.float() * NEG + (~can_improve).float() * NEG + (~just_fin).float() * NEG
            all_seqs = torch.cat((finished, cand_seqs), dim=1)
            all_scores = torch.cat((fin_scores, new_scores), dim=1)
            all_len = torch.cat((fin_len, torch.full_like(cand, generated)), dim=1)
            all_fin = torch.cat((is_fin, just_fin), dim=1)
            best = torch.topk(all_scores, nb).indices
            finished = torch.take_along_dim(all_seqs, best[:, :, None], dim=1)
            fin_scores = torch.take_along_dim(all_scores, best, dim=1)
            fin_len = torch.take_along_dim(all_len, best, dim=1)
            is_fin = torch.take_along_dim(all_fin, best, dim=1)

            reorder(rows)
            cur += 1
            tokens = running[:, :, cur - 1].reshape(B * nb, 1)
            # can the best running beam still beat the worst finished hypothesis?
            best_len = (max_length - T0) if (early_stopping == "never" and length_penalty > 0.0) else (cur - T0)
            best_possible = run_scores[:, :1] / (best_len**length_penalty)
            worst = torch.where(is_fin, fin_scores.min(dim=1, keepdim=True).values, NEG)
            can_improve = can_improve & (best_possible > worst).any(dim=-1, keepdim=True)
            if not bool(can_improve.any()):
                break
            if bool(is_fin.all()) and early_stopping is True:
                break
            if bool(stop.all()):
                break
    return finished[:, 0, : T0 + int(fin_len[:, 0].max())]
