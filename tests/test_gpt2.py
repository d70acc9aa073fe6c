"""GPT-2 specifics: generation, KV cache, config refusal, run-time input errors, full size."""
from __future__ import annotations

import pytest
import torch

import zoo
from zoo.accel import argmax
from zoo.accel import gpt2 as gpt2_accel
from zoo.errors import ConfigError, InputError
from zoo.registry import get_catalog
from zoo.verification import verify

from conftest import leave_every_other_step, write_checkpoint

CONV = get_catalog().converter("hf_gpt2")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    ref = write_checkpoint(CONV, folder, config={**CONV.tiny_config, "eos_token_id": None})
    return ref, zoo.load(str(folder), device="cpu")


@pytest.mark.parametrize("rows,screen", [(1, False), (1, True), (1, "every other step"), (3, False)])
def test_greedy_generate_matches_transformers(tiny, rows, screen, monkeypatch):
    ref, model = tiny
    # screen: the tokens come through zoo.accel.argmax's bfloat16 screen of the head (at batch 1,
    # for calls of BUILD_AT_TOKENS tokens or more; fewer here, to fit the tiny context)
    monkeypatch.setattr(argmax, "BUILD_AT_TOKENS", 20 if screen else 1000)
    left = leave_every_other_step(monkeypatch) if screen == "every other step" else [0]
    argmax.forget(model)
    ids = torch.randint(0, 96, (rows, 5), generator=torch.Generator().manual_seed(1))
    ours = model.generate(ids, max_new_tokens=20)
    theirs = ref.generate(ids, do_sample=False, max_new_tokens=20, pad_token_id=0, eos_token_id=None)
    assert ours.shape == (rows, 25)
    assert torch.equal(ours, theirs)
    assert (argmax.screen_of(model) is not None) == bool(screen)
    assert left[0] == (10 if screen == "every other step" else 0)


@pytest.mark.parametrize("rows", [1, 2, 5])  # 5: zoo.accel.ops.linear's transposed few-row product
def test_the_decode_step_is_the_blocks_arithmetic_bit_for_bit(tiny, rows):
    _, model = tiny
    from zoo.plugins.gpt2 import KVCache

    ids = torch.randint(0, 96, (rows, 7), generator=torch.Generator().manual_seed(4))
    caches = [KVCache(model.config, rows, 12, "cpu", torch.float32) for _ in range(2)]
    with torch.inference_mode():
        for cache in caches:
            model.hidden(ids, cache)
        plan = gpt2_accel.plan(model)
        assert plan is not None
        for step in range(3):
            token = torch.randint(0, 96, (rows, 1), generator=torch.Generator().manual_seed(step))
            plain = gpt2_accel.step(model, plan, token, caches[0])
            through_modules = model.hidden(token, caches[1])[0][:, -1]
            assert torch.equal(plain, through_modules)
    assert caches[0].length == caches[1].length == 10
    assert torch.equal(caches[0].kv[:, :, :, :, :10], caches[1].kv[:, :, :, :, :10])


def _hook_ways(model):
    """Ways to make code that bypasses the modules wrong: each returns its undo."""
    from torch.nn.modules import module as nn_module

    yield lambda: model.h[0].mlp.register_forward_hook(lambda mod, args, out: None).remove
    yield lambda: model.h[1].ln_1.register_forward_pre_hook(lambda mod, args: None).remove
    yield lambda: nn_module.register_module_forward_hook(lambda mod, args, out: None).remove
    yield lambda: model.h[0].attn.register_full_backward_hook(lambda *a: None).remove

    def instance_forward():  # what accelerate's dispatch hooks do
        model.h[1].mlp.forward = model.h[1].mlp.forward
        return lambda: model.h[1].mlp.__dict__.pop("forward")

    yield instance_forward

    def subclassed():
        from zoo.plugins.gpt2 import MLP

        block, original = model.h[0], model.h[0].mlp
        block.mlp = type("MyMLP", (MLP,), {})(model.config)
        block.mlp.load_state_dict(original.state_dict())

        def undo():
            block.mlp = original
        return undo

    yield subclassed


@pytest.mark.parametrize("way", range(6))
def test_generate_runs_through_the_modules_when_bypassing_them_could_be_wrong(tiny, way):
    _, model = tiny
    undo = list(_hook_ways(model))[way]()
    try:
        with torch.inference_mode():
            assert gpt2_accel.plan(model) is None
        ids = torch.tensor([[1, 2, 3]])
        hooked = model.generate(ids, max_new_tokens=4)
    finally:
        undo()
    with torch.inference_mode():
        assert gpt2_accel.plan(model) is not None
    assert torch.equal(hooked, model.generate(ids, max_new_tokens=4))


def test_a_forward_hook_sees_every_decoding_step(tiny):
    _, model = tiny
    seen = []
    handle = model.h[0].mlp.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    try:
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4)
    finally:
        handle.remove()
    assert len(seen) == 4  # the prompt and each of the three later steps


def test_a_model_built_under_inference_mode_generates(tmp_path, monkeypatch):
    write_checkpoint(CONV, tmp_path, config={**CONV.tiny_config, "eos_token_id": None})
    monkeypatch.setattr(argmax, "BUILD_AT_TOKENS", 8)
    with torch.inference_mode():  # weights that are inference tensors: no packed copy, no screen
        model = zoo.load(str(tmp_path), device="cpu")
        out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=10)
    assert argmax.screen_of(model) is None
    assert torch.equal(out, zoo.load(str(tmp_path), device="cpu").generate(torch.tensor([[1, 2, 3]]), max_new_tokens=10))


def test_the_screen_is_dropped_when_the_head_changes_dtype_and_is_not_pickled(tmp_path, monkeypatch):
    import copy

    write_checkpoint(CONV, tmp_path, config={**CONV.tiny_config, "eos_token_id": None})
    model = zoo.load(str(tmp_path), device="cpu")
    monkeypatch.setattr(argmax, "BUILD_AT_TOKENS", 8)
    model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=10)
    assert argmax.screen_of(model) is not None
    assert argmax.screen_of(copy.deepcopy(model)) is None
    model.double()
    model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=10)
    assert argmax.screen_of(model) is None


def test_generation_stops_at_any_of_several_eos_ids(tiny):
    ref, model = tiny
    ids = torch.randint(0, 96, (1, 4), generator=torch.Generator().manual_seed(5))
    free = model.generate(ids, max_new_tokens=12)[0, 4:].tolist()
    stop_at = free[3]  # the fourth new token, not seen before it
    first = free.index(stop_at)
    ours = model.generate(ids, max_new_tokens=12, eos_token_id=[95 if stop_at != 95 else 94, stop_at])
    theirs = ref.generate(ids, do_sample=False, max_new_tokens=12, pad_token_id=0, eos_token_id=[95 if stop_at != 95 else 94, stop_at])
    assert ours.shape[1] == 4 + first + 1 and ours[0, -1] == stop_at
    assert torch.equal(ours, theirs)


def test_kv_cache_matches_full_forward(tiny):
    _, model = tiny
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(2))
    full = model(ids).logits
    from zoo.plugins.gpt2 import KVCache

    cache = KVCache(model.config, 2, 12, "cpu", torch.float32)
    chunks = [model(ids[:, :5], cache=cache).logits, model(ids[:, 5:9], cache=cache).logits]
    chunks += [model(ids[:, t : t + 1], cache=cache).logits for t in range(9, 12)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=1e-5)


def test_sampling_is_seeded_and_respects_top_k(tiny):
    _, model = tiny
    ids = torch.tensor([[1, 2, 3]])
    a = model.generate(ids, max_new_tokens=10, temperature=1.0, top_k=5, seed=7)
    b = model.generate(ids, max_new_tokens=10, temperature=1.0, top_k=5, seed=7)
    assert torch.equal(a, b)
    # with top_k=1 sampling is greedy
    assert torch.equal(model.generate(ids, max_new_tokens=10, temperature=0.8, top_k=1, seed=3),
                       model.generate(ids, max_new_tokens=10))


@pytest.mark.parametrize(
    "ids, message",
    [
        (torch.zeros(1, 0, dtype=torch.long), "empty"),
        (torch.tensor([[1, 96]]), "token ids must be in"),
        (torch.tensor([[-1, 2]]), "token ids must be in"),
        (torch.zeros(1, 33, dtype=torch.long), "exceed the context"),
        (torch.zeros(3, dtype=torch.long), "shape [B, T]"),
    ],
)
def test_bad_run_time_input(tiny, ids, message):
    _, model = tiny
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        model(ids)


def test_generation_past_the_context_is_refused(tiny):
    _, model = tiny
    with pytest.raises(InputError, match="exceed the context"):
        model.generate(torch.zeros(1, 30, dtype=torch.long), max_new_tokens=5)


@pytest.mark.parametrize(
    "field, value",
    [("activation_function", "mish"), ("scale_attn_by_inverse_layer_idx", True), ("add_cross_attention", True)],
)
def test_unsupported_config_is_refused_by_name(field, value):
    with pytest.raises(ConfigError, match=field):
        CONV.architecture_config({**CONV.tiny_config, field: value})


def test_the_config_json_is_translated_to_gpt2s_own_names():
    from zoo.plugins.gpt2 import GPT2Config

    assert CONV.architecture_config({**CONV.tiny_config, "n_inner": 40, "layer_norm_epsilon": 1e-3}) == {
        "n_vocab": 96, "n_ctx": 32, "n_embd": 32, "n_layer": 2, "n_head": 4, "mlp_width": 40,
        "activation": "gelu_new", "norm_eps": 1e-3}
    # absent or null fields: transformers' defaults, which are GPT-2 small's
    assert CONV.architecture_config({"n_inner": None, "n_embd": None}) == vars(GPT2Config())


@pytest.mark.parametrize("field, value, message", [
    ("activation", "mish", "activation='mish' is not supported"),
    ("n_head", 5, "n_embd=32 is not divisible by n_head=5"),
    ("n_ctx", 0, "n_ctx=0 must be at least 1"),
])
def test_a_config_the_architecture_cannot_build_is_refused_by_its_field(field, value, message):
    from zoo.plugins.gpt2 import from_config

    with pytest.raises(ConfigError, match=message):
        from_config({**CONV.architecture_config(CONV.tiny_config), field: value})


def test_full_size_gpt2_verifies_on_random_weights():
    """The real GPT-2 small (124M) through the whole pipeline, Hub layout, random weights."""
    report = verify("gpt2", device="cpu", seed=0, random_weights=True, new_tokens=4)
    assert report.passed, report.render()
    assert report.weights.startswith("random, seed 0")
    assert report.top1_agreement == 1.0
    assert report.generation["identical"]
    assert report.accounting["loaded"] == 148 and len(report.accounting["dropped"]) == 12


def test_a_checkpoint_max_length_without_room_is_an_input_error():
    from zoo.generation import default_new_tokens

    assert default_new_tokens({"max_length": 10}, 4, 32) == 6
    assert default_new_tokens({"max_new_tokens": 3, "max_length": 4}, 4, 32) == 3
    assert default_new_tokens({}, 4, 32) == 32
    with pytest.raises(InputError, match="max_length=4 leaves no room for new tokens after 4 input tokens"):
        default_new_tokens({"max_length": 4}, 4, 32)


def test_kv_cache_grows_to_what_is_used_and_keeps_its_contents():
    from zoo.kvcache import INITIAL_POSITIONS, KVCache

    cache = KVCache(2, 1, 2, 500, 4, "cpu", torch.float32)
    assert cache.kv.size(4) == INITIAL_POSITIONS  # not 500
    written = []
    for step in range(3 * INITIAL_POSITIONS // 2):  # past the first capacity
        kv = torch.full((2, 1, 2, 1, 4), float(step))
        keys, values = cache.update_kv(1, kv)
        cache.length += 1
        written.append(float(step))
    assert INITIAL_POSITIONS < cache.kv.size(4) <= 2 * INITIAL_POSITIONS
    assert keys[0, 0, :, 0].tolist() == written and values[0, 1, :, 3].tolist() == written
    small = KVCache(1, 1, 1, 3, 2, "cpu", torch.float32)
    small.length = 2
    with pytest.raises(InputError, match="KV cache holds 3 positions; 4 needed"):
        small.update(0, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, 0.9), (0.7, 20, None), (1.3, 50, 0.5), (1.0, None, 0.0)])
def test_sampling_filters_as_transformers_does(temperature, top_k, top_p):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from zoo.generation import sampling_logits

    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(0)) * 3
    theirs = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        theirs = TopKLogitsWarper(top_k)(None, theirs)
    if top_p is not None:
        theirs = TopPLogitsWarper(top_p)(None, theirs)
    ours = sampling_logits(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    torch.testing.assert_close(ours[~torch.isinf(ours)], theirs[~torch.isinf(theirs)])


@pytest.mark.parametrize("beams,rows,eos,length_penalty,early_stopping", [
    (2, 1, False, 1.0, False),
    (4, 2, False, 1.0, False),
    (3, 2, True, 1.0, False),
    (3, 2, True, 2.0, True),
    (3, 1, True, 0.5, "never"),
])
def test_beam_search_matches_transformers(tiny, beams, rows, eos, length_penalty, early_stopping):
    """zoo.generation.beam_search on GPT-2: the same ids as transformers' generate(num_beams=N),
    with an eos token the model actually produces (so hypotheses finish early) or none."""
    ref, model = tiny
    ids = torch.randint(0, 96, (rows, 4), generator=torch.Generator().manual_seed(7))
    stop = int(ref.generate(ids[:1], do_sample=False, max_new_tokens=2, pad_token_id=0, eos_token_id=None)[0, -1]) if eos else None
    kwargs = dict(num_beams=beams, max_new_tokens=10, length_penalty=length_penalty, early_stopping=early_stopping)
    ours = model.generate(ids, eos_token_id=stop, pad_token_id=0, **kwargs)
    theirs = ref.generate(ids, do_sample=False, eos_token_id=stop, pad_token_id=0, **kwargs)
    assert torch.equal(ours, theirs), (ours, theirs)


def test_beam_search_options_that_do_not_apply_are_errors(tiny):
    _, model = tiny
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(InputError, match="does not sample"):
        model.generate(ids, num_beams=2, temperature=0.8)
    with pytest.raises(InputError, match="cannot stream"):
        model.generate(ids, num_beams=2, callback=print)
    with pytest.raises(TypeError):
        model.generate(ids, num_beam=2)  # a misspelt keyword


def test_greedy_pads_rows_that_finished_as_transformers_does(tiny):
    """Batch greedy with an eos id some rows produce early: those rows get the pad token after
    it, and decoding goes on for the others (transformers' _sample)."""
    ref, model = tiny
    ids = torch.randint(0, 96, (4, 3), generator=torch.Generator().manual_seed(11))
    first = ref.generate(ids, do_sample=False, max_new_tokens=1, pad_token_id=0, eos_token_id=None)[:, -1]
    stop = int(first[0])  # the first row's first token: it finishes at once
    ours = model.generate(ids, max_new_tokens=8, eos_token_id=stop, pad_token_id=5)
    theirs = ref.generate(ids, do_sample=False, max_new_tokens=8, eos_token_id=stop, pad_token_id=5)
    assert torch.equal(ours, theirs), (ours, theirs)
    assert (ours[0, 4:] == 5).all() and ours.shape[1] > 4
