"""GPT-2 specifics: generation, KV cache, config refusal, run-time input errors, full size; the
sequence classifier (GPT2ForSequenceClassification, task text-classification)."""
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
        "activation": "gelu_new", "norm_eps": 1e-3, "n_labels": 2, "pad_id": None,
        "embd_pdrop": 0.1, "attn_pdrop": 0.1, "resid_pdrop": 0.1, "problem_type": None}
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


# ----------------------------------------------------------------------------- sequence classification

# a fine-tuned classifier: three named labels, a pad id of its own (eos is 0)
CLASSIFIER = {**CONV.tiny_config, "pad_token_id": 1, "id2label": {"0": "negative", "1": "neutral", "2": "positive"}}
TC = "text-classification"


def _classifier_folder(tmp_path, layout="hub", config=None):
    from zoo import testing

    ref = testing.write_reference_checkpoint(CONV, tmp_path, layout, config or CLASSIFIER, TC)
    return ref.eval()


def _padded(rows, pad, side="right", seed=0):
    """Token ids (none of them ``pad``) [len(rows), max(rows)], each row ``rows[i]`` tokens
    long, padded with ``pad`` on ``side``; and the attention mask."""
    T = max(rows)
    ids = torch.randint(2, 96, (len(rows), T), generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, n in enumerate(rows):
        mask[i, :n] = 1
    if side == "left":
        mask = mask.flip(-1)
    return ids.masked_fill(mask == 0, pad), mask


@pytest.mark.parametrize("layout", ["hub", "save_pretrained"])
def test_the_classifier_matches_transformers_on_padded_batches(layout, tmp_path):
    """GPT2ForSequenceClassification's logits (and hidden states, at real tokens) on the same
    weights, fast and plain, for right and left padding with and without the attention mask."""
    from zoo import testing
    from zoo.loading import load_full

    ref = _classifier_folder(tmp_path, layout)
    fast = load_full(str(tmp_path), device="cpu")
    plain = load_full(str(tmp_path), device="cpu", fast=False)
    assert fast.task == TC and type(fast.model).__name__ == "GPT2Classifier"
    for side, with_mask in [("right", True), ("right", False), ("left", True)]:
        ids, mask = _padded([9, 4, 1, 7], pad=1, side=side)
        inputs = {"input_ids": ids, **({"attention_mask": mask} if with_mask else {})}
        with torch.inference_mode():
            theirs = ref(**inputs, output_hidden_states=True)
            for loaded in (fast, plain):
                ours = loaded.model(**inputs, output_hidden_states=True)
                assert ours.logits.shape == (4, 3)
                compared = testing.assert_outputs_close(ours, theirs, inputs, atol=1e-5)
                assert "logits" in compared and "hidden_states[2]" in compared
    report = verify(str(tmp_path), device="cpu")
    assert report.passed and report.max_abs_diff <= 1e-4, report.render()


def test_the_classifier_hub_layout_and_its_key_accounting(tmp_path):
    """The files of a fine-tuned classifier: the body under ``transformer.`` with the causal-mask
    buffers transformers 4 saved (``masked_bias`` too in older files), ``score.weight``, no
    language-model head; every key loaded or dropped by a named rule."""
    from zoo import testing
    from zoo.checkpoint import read_safetensors, save_safetensors
    from zoo.loading import load_full

    _classifier_folder(tmp_path)
    path = tmp_path / "model.safetensors"
    keys = set(read_safetensors(path))
    assert {"transformer.wte.weight", "transformer.h.1.attn.c_attn.weight", "transformer.h.1.attn.bias",
            "transformer.ln_f.bias", "score.weight"} <= keys
    assert not any(k.startswith(("h.", "lm_head")) for k in keys)
    tensors = dict(read_safetensors(path))
    tensors["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    save_safetensors(tensors, path)
    report = load_full(str(tmp_path), device="cpu").report
    assert report.consumed["score.weight"] == "score.weight"
    assert report.consumed["transformer.h.0.attn.c_attn.weight"] == "h.0.attn.c_attn.weight"
    assert set(report.dropped) == {"transformer.h.0.attn.bias", "transformer.h.1.attn.bias",
                                   "transformer.h.0.attn.masked_bias"}
    assert set(report.consumed) | set(report.dropped) == set(tensors)
    testing.check_key_accounting(CONV, CLASSIFIER, task=TC)
    testing.check_config_translation(CONV, CLASSIFIER)


@pytest.mark.parametrize("pad", [1, 0])  # 0: the pad id is the eos id, as GPT-2 tokenizers set it up
def test_the_score_is_read_where_transformers_reads_it(pad, tmp_path):
    """The rightmost token that is not the pad id: right or left padding, a pad id inside the
    text, a row of padding only (position 0), a row without padding (the last position)."""
    ref = _classifier_folder(tmp_path, config={**CLASSIFIER, "pad_token_id": pad})
    model = zoo.load(str(tmp_path), device="cpu")
    p = pad
    ids = torch.tensor([[5, 6, 7, p, p], [p, p, 5, 6, 7], [5, p, 6, 7, p], [p, p, p, p, p], [5, 6, 7, 8, 9],
                        [5, p, p, p, p]])
    assert model.last_tokens(ids).tolist() == [2, 4, 3, 0, 4, 0]
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, atol=1e-5, rtol=0)


def test_without_a_pad_id_one_row_is_read_at_its_end_and_a_batch_is_refused(tmp_path):
    from zoo.plugins.gpt2 import example_inputs

    config = {k: v for k, v in CLASSIFIER.items() if k != "pad_token_id"}
    ref = _classifier_folder(tmp_path, config=config)
    model = zoo.load(str(tmp_path), device="cpu")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="no padding token"):
            ref(ids.repeat(2, 1))
        with pytest.raises(InputError, match="2 rows need a pad_id to tell where each row ends"):
            model(ids.repeat(2, 1))
    inputs = example_inputs(CONV.architecture_config(config), TC, 2, 8, torch.Generator().manual_seed(0))
    assert list(inputs) == ["input_ids"] and inputs["input_ids"].shape == (1, 8)
    assert verify(str(tmp_path), device="cpu").passed


def test_example_inputs_pad_the_classifier_rows_on_the_right():
    from zoo.plugins.gpt2 import GPT2Classifier, GPT2Config, example_inputs

    arch = CONV.architecture_config(CLASSIFIER)
    inputs = example_inputs(arch, TC, 4, 8, torch.Generator().manual_seed(0))
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    lengths = mask.sum(-1)
    assert ids.shape == mask.shape == (4, 8) and lengths[0] == 8 and (lengths[1:] < 8).all() and (lengths >= 1).all()
    assert torch.equal(mask, (torch.arange(8) < lengths[:, None]).long())  # tokens first, then padding
    assert ((ids == 1) == (mask == 0)).all()  # the pad id exactly at the padding
    assert GPT2Classifier(GPT2Config(**arch)).last_tokens(ids).tolist() == (lengths - 1).tolist()
    assert list(example_inputs(arch, "text-generation", 2, 8, torch.Generator().manual_seed(0))) == ["input_ids"]


@pytest.mark.parametrize("config, want", [
    ({}, (2, None)),
    ({"num_labels": 5}, (5, None)),
    ({"id2label": {"0": "a", "1": "b", "2": "c"}, "pad_token_id": 50256}, (3, 50256)),
    ({"id2label": {"0": "a", "1": "b", "2": "c"}, "num_labels": 4}, (4, None)),  # transformers: num_labels wins
])
def test_the_label_count_and_pad_id_are_translated(config, want):
    from transformers import GPT2Config as HFConfig

    arch = CONV.architecture_config({**CONV.tiny_config, **config})
    assert (arch["n_labels"], arch["pad_id"]) == want
    hf = HFConfig(**{**CONV.tiny_config, **config})
    assert (hf.num_labels, hf.pad_token_id) == want


def test_a_config_without_labels_is_refused_by_its_field():
    with pytest.raises(ConfigError, match=r"config field id2label=\{\} names no labels"):
        CONV.architecture_config({**CONV.tiny_config, "id2label": {}})


def test_the_classifier_parameter_count_is_transformers_own():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from zoo.plugins.gpt2 import from_config, parameter_count

    arch = CONV.architecture_config(CLASSIFIER)
    with torch.device("meta"):
        built = sum(p.numel() for p in from_config(arch, TC).parameters())
        theirs = sum(p.numel() for p in GPT2ForSequenceClassification(GPT2Config(**CLASSIFIER)).parameters())
    assert parameter_count(arch, TC) == built == theirs == parameter_count(arch, "text-generation") + 32 * 3


def test_a_classifier_head_read_wrong_is_caught_by_verify(tmp_path):
    """The score rows read in reverse order (labels swapped): the body agrees, verify fails and
    says the difference is in the head."""
    import dataclasses

    from zoo.types import Transform

    _classifier_folder(tmp_path)
    flip = Transform("flip-labels", lambda w: w.flip(0), lambda w: w.flip(0), "labels in reverse order")
    broken = dataclasses.replace(CONV, key_map=tuple(
        dataclasses.replace(rule, transform=flip) if rule.source == "score.weight" else rule for rule in CONV.key_map))
    report = verify(str(tmp_path), device="cpu", converter=broken)
    assert not report.passed
    assert report.first_divergence == "hidden states agree; the difference is in the output head", report.render()
    assert verify(str(tmp_path), device="cpu").passed


def test_the_classifier_exports_to_a_folder_transformers_auto_class_loads(tmp_path):
    """``zoo convert --to hf``: AutoModelForSequenceClassification loads it with every weight,
    the label names and pad id kept, the same logits as zoo's; and the Hub files come back
    bit for bit (the causal-mask buffers regenerated)."""
    from transformers import AutoModelForSequenceClassification

    from zoo import testing
    from zoo.export import convert_checkpoint

    _classifier_folder(tmp_path / "hf")
    result = convert_checkpoint(str(tmp_path / "hf"), "hf", tmp_path / "out")
    assert not result.skipped and len(result.filled) == 2
    ref, info = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert type(ref).__name__ == "GPT2ForSequenceClassification"
    assert not info["missing_keys"] and not info.get("mismatched_keys"), info
    assert ref.config.id2label == {0: "negative", 1: "neutral", 2: "positive"} and ref.config.pad_token_id == 1
    model = zoo.load(str(tmp_path / "out"), device="cpu")
    ids, mask = _padded([6, 3, 8], pad=1)
    with torch.inference_mode():
        torch.testing.assert_close(model(ids, attention_mask=mask).logits, ref.eval()(ids, attention_mask=mask).logits,
                                   atol=1e-5, rtol=0)
    testing.check_round_trip(CONV, CLASSIFIER, task=TC)


def test_text_generation_on_a_classifier_drops_its_head_by_name(tmp_path):
    """A classifier's body loads as a language model (its head the tied token embedding, as
    GPT2LMHeadModel.from_pretrained reads the same folder): ``score.weight`` is dropped by its
    named rule, not ignored silently."""
    from transformers import GPT2LMHeadModel

    from zoo.loading import load_full

    _classifier_folder(tmp_path)
    loaded = load_full(str(tmp_path), device="cpu", task="text-generation")
    assert loaded.report.dropped["score.weight"].startswith("the sequence classifier's head")
    assert not hasattr(loaded.model, "score")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(ids).logits, GPT2LMHeadModel.from_pretrained(str(tmp_path))(ids).logits,
                                   atol=1e-5, rtol=0)


def test_text_classification_on_a_language_model_names_the_missing_head(tmp_path):
    from zoo.errors import ConversionError
    from zoo.loading import load_full

    write_checkpoint(CONV, tmp_path)
    with pytest.raises(ConversionError, match=r"missing from the checkpoint: score\.weight") as err:
        load_full(str(tmp_path), device="cpu", task=TC)
    assert "\n" not in str(err.value)


def test_the_fast_paths_leave_the_classifier_to_the_packed_products(tmp_path):
    """The decoding step and the few-row tied head are the language model's: a classifier gets
    neither, its fast model equals its plain one, and in training both step aside."""
    from zoo import accel
    from zoo.accel import ops
    from zoo.loading import load_full
    from zoo.plugins.gpt2 import GPT2Classifier, example_inputs

    _classifier_folder(tmp_path)
    fast = load_full(str(tmp_path), device="cpu")
    assert type(fast.model) is GPT2Classifier
    assert accel.applied(fast.model) == (["packed-linear"] if ops.packing_available() else [])
    assert gpt2_accel.decode_step(fast.model) is None
    inputs = example_inputs(fast.arch_config, TC, 3, 8, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = load_full(str(tmp_path), device="cpu", fast=False).model(**inputs).logits
        torch.testing.assert_close(fast.model(**inputs).logits, want, atol=1e-5, rtol=1e-5)
    model = fast.model.train().requires_grad_(True)
    model(**inputs).logits.square().mean().backward()
    assert model.score.weight.grad is not None and bool(model.score.weight.grad.abs().sum() > 0)


@pytest.mark.parametrize("inputs, message", [
    ({"input_ids": torch.tensor([[5, 6]]), "attention_mask": torch.tensor([[1, 1, 0]])},
     r"attention_mask has shape \[1, 3\], the input ids \[1, 2\]"),
    ({"input_ids": torch.tensor([[5, 96]])}, "token ids must be in"),
])
def test_bad_classifier_input_is_an_input_error(inputs, message, tmp_path):
    _classifier_folder(tmp_path)
    with pytest.raises(InputError, match=message):
        zoo.load(str(tmp_path), device="cpu")(**inputs)


def test_zoo_run_classifies_a_text_with_the_label_names(tmp_path):
    """``zoo run FOLDER --ids ...`` on a classifier: its labels by name, one row (no pad id needed)."""
    from zoo import testing

    ref = _classifier_folder(tmp_path, config={k: v for k, v in CLASSIFIER.items() if k != "pad_token_id"})
    result = testing.check_task(TC, str(tmp_path), ids=[5, 6, 7], top=3)
    with torch.inference_mode():
        want = ref(torch.tensor([[5, 6, 7]])).logits[0].softmax(-1)
    assert [item["label"] for item in result["labels"]] == [
        ref.config.id2label[i] for i in want.argsort(descending=True).tolist()]
    assert abs(result["labels"][0]["score"] - float(want.max())) < 1e-5
