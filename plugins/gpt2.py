"""GPT-2 (Radford et al., 2019), readable top to bottom.

A decoder-only transformer: token + learned position embeddings, ``n_layer`` pre-norm blocks
(LayerNorm -> causal self-attention -> residual, LayerNorm -> MLP -> residual), a final
LayerNorm, and an output head that reuses the token embedding matrix (tied weights).

Submodules carry the names of the Hugging Face checkpoint (``wte``, ``h.N.attn.c_attn``, ...)
so the converter's key map is almost 1:1; the only layout change is that GPT-2's ``Conv1D``
stores weights as ``[in, out]`` while ``nn.Linear`` wants ``[out, in]``.

Generation uses a preallocated key/value cache: each new token runs the blocks on that token
alone, writes its keys/values in place, and attends over the cache — no recomputation and no
reallocation per step. Decoding steps run the blocks' arithmetic without module calls where
that is safe (see "decoding" below), and greedy decoding at batch 1 takes each token from a
bfloat16 screen of the tied head, exact against float32 (zoo.argmax).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo import kvcache
from zoo.activations import ACTIVATIONS, activate_, in_place
from zoo.argmax import SCREEN_ATTRIBUTE, screened
from zoo.errors import ConfigError, InputError
from zoo.generation import make_generator, next_token
from zoo.ops import CachesNotState, Linear, hooks_set, linear
from zoo.outputs import ModelOutput



@dataclass
class GPT2Config:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: Optional[int] = None  # MLP width; None means 4 * n_embd
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    eos_token_id: Union[int, List[int], None] = 50256  # one id or several (generation_config.json)

    @classmethod
    def from_hf(cls, config: Dict[str, Any]) -> "GPT2Config":
        """Build from Hugging Face GPT-2 config values; refuse what this file does not implement."""
        unsupported = {
            "scale_attn_weights": (False, "unscaled attention"),
            "scale_attn_by_inverse_layer_idx": (True, "attention scaled by 1/layer"),
            "add_cross_attention": (True, "cross-attention"),
        }
        for key, (bad, what) in unsupported.items():
            if config.get(key) == bad:
                raise ConfigError(f"gpt2: config field {key}={bad!r} ({what}) is not supported")
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in config.items() if k in known and (v is not None or k == "n_inner")})
        if cfg.activation_function not in ACTIVATIONS:
            raise ConfigError(
                f"gpt2: config field activation_function={cfg.activation_function!r} is not "
                f"supported (supported: {', '.join(sorted(ACTIVATIONS))})"
            )
        if cfg.n_embd % cfg.n_head:
            raise ConfigError(f"gpt2: n_embd={cfg.n_embd} is not divisible by n_head={cfg.n_head}")
        return cfg


class KVCache(kvcache.KVCache):
    """Keys and values of every layer, preallocated for ``max_len`` positions (zoo.kvcache)."""

    def __init__(self, cfg: GPT2Config, batch: int, max_len: int, device, dtype):
        super().__init__(cfg.n_layer, batch, cfg.n_head, max_len, cfg.n_embd // cfg.n_head, device, dtype)


class Attention(nn.Module):
    """Causal multi-head self-attention with one fused q|k|v projection."""

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = Linear(cfg.n_embd, 3 * cfg.n_embd)  # columns: q | k | v
        self.c_proj = Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache], layer: int) -> torch.Tensor:
        B, T, C = x.shape
        # (B, T, 3C) -> (3, B, nh, T, hs): q, k and v with their heads apart, as one view
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        if cache is None:
            q, k, v = qkv.unbind(0)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            past = cache.length
            q = qkv[0]
            k, v = cache.update_kv(layer, qkv[1:])  # each (B, nh, past + T, hs)
            if T == 1:  # one new token sees every cached position: no mask needed
                y = F.scaled_dot_product_attention(q, k, v)
            else:  # new token t (at position past + t) sees positions <= past + t
                pos = torch.arange(past + T, device=x.device)
                mask = pos[None, :] <= (pos[past:, None])
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, C)  # re-assemble heads side by side
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        inner = cfg.n_inner or 4 * cfg.n_embd
        self.c_fc = Linear(cfg.n_embd, inner)
        self.c_proj = Linear(inner, cfg.n_embd)
        self.act = ACTIVATIONS[cfg.activation_function]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(activate_(self.act, self.c_fc(x), self.c_fc))


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache], layer: int) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT2(CachesNotState, nn.Module):
    """GPT-2 language model: ``model(input_ids)`` -> output with ``.logits`` [B, T, vocab]."""

    _caches = (SCREEN_ATTRIBUTE,)  # greedy's bfloat16 screen of the head (zoo.argmax)

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # also the output head (tied)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)

    def _check(self, input_ids: torch.Tensor, past: int = 0) -> None:
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int):
            raise InputError(f"gpt2 expects token ids of shape [B, T] (int64), got {list(input_ids.shape)} {input_ids.dtype}")
        if input_ids.size(1) == 0:
            raise InputError("gpt2: empty input (no tokens)")
        if past + input_ids.size(1) > self.config.n_positions:
            raise InputError(
                f"gpt2: {past + input_ids.size(1)} tokens exceed the context of "
                f"{self.config.n_positions} positions"
            )
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise InputError(f"gpt2: token ids must be in [0, {self.config.vocab_size}), got {lo}..{hi}")

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: Optional[KVCache] = None,
        output_hidden_states: bool = False,
        last_token_only: bool = False,
    ) -> ModelOutput:
        self._check(input_ids, cache.length if cache is not None else 0)
        return self._forward(input_ids, cache, output_hidden_states, last_token_only)

    def _forward(self, input_ids, cache, output_hidden_states, last_token_only) -> ModelOutput:
        x, hidden = self._hidden(input_ids, cache, output_hidden_states)
        if last_token_only:
            x = x[:, -1:]
        # output head tied to the token embeddings (not packed: MKL's packed copy of this
        # matrix would cost 60-170 MB more memory for a few percent of a prefill)
        logits = linear(x, self.wte.weight)
        return ModelOutput(logits=logits, hidden_states=tuple(hidden) if hidden else None)

    def _hidden(self, input_ids, cache, output_hidden_states=False):
        """The blocks and the final LayerNorm: (B, T, C), and the hidden states if asked."""
        past = cache.length if cache is not None else 0
        T = input_ids.size(1)
        pos = torch.arange(past, past + T, device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)  # (B, T, C)
        hidden = [x] if output_hidden_states else None
        for i, block in enumerate(self.h):
            x = block(x, cache, i)
            if hidden is not None and i < len(self.h) - 1:
                hidden.append(x)
        x = self.ln_f(x)
        if hidden is not None:  # transformers' convention: the last entry is after ln_f
            hidden.append(x)
        if cache is not None:
            cache.length += T
        return x, hidden

    # -- decoding -------------------------------------------------------------------------
    # A decoding step runs the blocks on one token per row. Its matrix products are
    # matrix-vector products bound by memory bandwidth; the rest is ~300 small operations, and
    # at batch 1 calling them through ~150 modules (each Linear re-checking its packed copy)
    # cost ~10 % of the step here. So generate() binds the weights once (_decode_plan) and
    # runs Block.forward's arithmetic for T = 1 as plain operations (_decode_step). A test
    # checks that the two give the same hidden states bit for bit.

    def _decode_plan(self) -> Optional[List[tuple]]:
        """Per block, what a decoding step reads; None where the step must run through the
        modules: in training mode, under autograd, with hooks set or a ``forward`` set on a
        module (the plain step would bypass them), or when a module is of another kind than
        this file builds (a subclass or a replacement may compute something else)."""
        if self.training or torch.is_grad_enabled() or hooks_set(self):
            return None
        if any(type(m) not in _PLAIN_MODULES or "forward" in m.__dict__ for m in self.modules()):
            return None
        return [((b.ln_1.weight, b.ln_1.bias, b.ln_1.eps), b.attn.n_head, b.attn.c_attn.product(),
                 b.attn.c_proj.product(), (b.ln_2.weight, b.ln_2.bias, b.ln_2.eps), b.mlp.c_fc.product(),
                 in_place(b.mlp.act), b.mlp.c_proj.product()) for b in self.h]

    def _decode_step(self, plan: List[tuple], tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """``_hidden(tokens, cache)[0][:, -1]`` for ``tokens`` [B, 1], through a ``plan``."""
        B, C = tokens.size(0), self.config.n_embd
        x = F.embedding(tokens, self.wte.weight) + self.wpe.weight[cache.length]  # (B, 1, C)
        for layer, ((w1, b1, eps1), nh, c_attn, attn_proj, (w2, b2, eps2), c_fc, act_, mlp_proj) in enumerate(plan):
            qkv = c_attn(F.layer_norm(x, (C,), w1, b1, eps1)).view(B, 1, 3, nh, C // nh).permute(2, 0, 3, 1, 4)
            k, v = cache.update_kv(layer, qkv[1:])
            y = F.scaled_dot_product_attention(qkv[0], k, v)  # one new token: no mask
            # (B, nh, 1, hs) -> (B, 1, C): at one position, row-major order already has the heads side by side
            x = x + attn_proj(y.reshape(B, 1, C))
            # the MLP's hidden layer is fresh and unhooked: activated in place
            x = x + mlp_proj(act_(c_fc(F.layer_norm(x, (C,), w2, b2, eps2))))
        cache.length += 1
        return F.layer_norm(x[:, 0], (C,), self.ln_f.weight, self.ln_f.bias, self.ln_f.eps)

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 20,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        seed: Optional[int] = None,
        eos_token_id: Union[int, Sequence[int], None] = None,
        callback: Optional[Callable[[torch.Tensor], None]] = None,
        top_p: Optional[float] = None,
    ) -> torch.Tensor:
        """Continue ``input_ids`` [B, T] by ``max_new_tokens``; returns [B, T + N] ids.

        Greedy when ``temperature`` is 0 or unset (the same tokens as transformers'
        ``generate(do_sample=False)``), else sampled with ``top_k``/``top_p``/``seed``
        (zoo.generation.sampling_logits). ``callback``
        receives each new column of ids [B] as it is produced (for streaming). Stops early
        only when every row has produced ``eos_token_id`` (if given: one id or several).
        The weights must not change during the call.
        """
        if max_new_tokens < 0:
            raise InputError("max_new_tokens must be >= 0")
        self._check(input_ids, max_new_tokens)
        B, T = input_ids.shape
        head = self.wte.weight
        cache = KVCache(self.config, B, T + max_new_tokens, head.device, head.dtype)
        gen = make_generator(seed, head.device)
        out = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=head.device)
        out[:, :T] = input_ids
        tokens, n = input_ids, T
        done = torch.zeros(B, dtype=torch.bool, device=head.device)
        stop = None if eos_token_id is None else torch.tensor(eos_token_id, device=head.device).view(-1)
        plan = self._decode_plan()
        # greedy at batch 1: the best token from a bfloat16 screen of the head (zoo.argmax)
        best = screened(self, head, B, max_new_tokens) if not temperature else None
        for _ in range(max_new_tokens):
            # the ids were checked above; later ones come from the vocabulary itself
            if plan is not None and n > T:
                x = self._decode_step(plan, tokens, cache)
            else:
                x = self._hidden(tokens, cache)[0][:, -1]
            nxt = best(x) if best is not None else None  # None: the screen cannot tell this step
            if nxt is None:
                nxt = next_token(linear(x, head), temperature, top_k, gen, top_p)
            out[:, n] = nxt
            n += 1
            if callback is not None:
                callback(nxt)
            tokens = out[:, n - 1 : n]
            if stop is not None:
                done |= torch.isin(nxt, stop)
                if bool(done.all()):
                    break
        return out[:, :n]


# the kinds of module GPT2 is built of: a model holding only these runs _decode_step
_PLAIN_MODULES = (GPT2, nn.ModuleList, Block, Attention, MLP, Linear, nn.LayerNorm, nn.Embedding)


def from_config(config: Dict[str, Any], task: Optional[str] = None) -> GPT2:
    return GPT2(GPT2Config.from_hf(config))


def example_inputs(config: Dict[str, Any], task: str, batch: int, seq: int, generator) -> Dict[str, Any]:
    vocab = int(config.get("vocab_size", 50257))
    seq = min(seq, int(config.get("n_positions", 1024)))
    return {"input_ids": torch.randint(0, vocab, (batch, seq), generator=generator)}
