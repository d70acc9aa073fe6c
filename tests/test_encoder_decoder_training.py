"""Encoder-decoder training: ``labels=`` gives MarianMTModel's teacher-forced loss and its
gradients for every parameter in each layout of the token tables, the same weights after an
AdamW step (read by the fast paths once back in eval mode), and dropout where and as often as
the config says; the Annotated Transformer's loss is the negative log-likelihood of its
log-probabilities, with the gradients of its formulas."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

import zoo  # noqa: E402
from zoo import accel, losses  # noqa: E402
from zoo.checkpoint import save_safetensors  # noqa: E402
from zoo.converters import annotated, hf_marian  # noqa: E402
from zoo.convert import convert  # noqa: E402
from zoo.errors import ConfigError, InputError  # noqa: E402

from conftest import attention_dropout_recorder, record_dropout, zero_fraction_ok  # noqa: E402
from zoo.plugins.encoder_decoder import MultiHeadedAttention, sinusoids  # noqa: E402

from test_encoder_decoder import annotated_log_probs, annotated_state_dict  # noqa: E402

LOSS_RTOL = 1e-5  # relative, float32
GRAD_RTOL = 1e-4  # max abs difference relative to the gradient's norm
ZERO = 1e-6  # a gradient below this fraction of the whole gradient's norm is zero (rounding noise)

BASE = dict(
    model_type="marian", architectures=["MarianMTModel"], d_model=32, encoder_layers=2, decoder_layers=2,
    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=40,
    max_position_embeddings=64, activation_function="swish", scale_embedding=True, eos_token_id=0,
    dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
)
# the layouts of the token tables (see converters/hf_marian.py)
LAYOUTS = {
    "shared-tied": dict(vocab_size=60),
    "shared-untied": dict(vocab_size=60, tie_word_embeddings=False),
    "separate-tied": dict(vocab_size=60, decoder_vocab_size=50, share_encoder_decoder_embeddings=False),
    "separate-untied": dict(vocab_size=60, decoder_vocab_size=50, share_encoder_decoder_embeddings=False,
                            tie_word_embeddings=False),
}


def marian_config(layout: str = "shared-tied", **over) -> dict:
    """A tiny MarianConfig; pad (also the decoder start token) is the last id of both vocabularies."""
    config = {**BASE, **LAYOUTS[layout], **over}
    pad = min(config["vocab_size"], config.get("decoder_vocab_size") or config["vocab_size"]) - 1
    return {**config, "pad_token_id": pad, "decoder_start_token_id": pad}


def write(folder: Path, layout: str = "shared-tied", files: str = "save_pretrained", seed: int = 0, **over):
    """A random MarianMTModel saved in ``folder`` as save_pretrained writes it, or in the Hub's
    layout (ties and sinusoid tables stored too); returned with its config, in eval mode."""
    config = marian_config(layout, **over)
    torch.manual_seed(seed)
    ref = hf_marian.reference(config, "translation")
    with torch.no_grad():  # LayerNorms at 1/0 and zero biases would hide a swapped tensor: perturb all
        for p in ref.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
        ref.final_logits_bias.normal_(0, 0.5)
    folder.mkdir(parents=True, exist_ok=True)
    if files == "save_pretrained":
        ref.save_pretrained(str(folder))
    else:
        save_safetensors(hf_marian.hub_layout(ref.state_dict(), config), folder / "model.safetensors")
        ref.config.to_json_file(str(folder / "config.json"))
    return ref.eval(), config


def batch(config: dict, seed: int = 1):
    """Right-padded source ids with their mask, and labels with -100 after each row's end."""
    g = torch.Generator().manual_seed(seed)
    pad = config["pad_token_id"]
    tgt_vocab = config.get("decoder_vocab_size") or config["vocab_size"]
    x = torch.randint(1, pad, (4, 7), generator=g)
    mask = torch.ones_like(x)
    labels = torch.randint(0, tgt_vocab - 1, (4, 6), generator=g)
    for row, (src_len, tgt_len) in enumerate(((7, 6), (5, 6), (4, 3), (2, 1))):
        x[row, src_len:] = pad
        mask[row, src_len:] = 0
        labels[row, tgt_len:] = losses.IGNORE
    return x, mask, labels


def trained(folder: Path, **overrides):
    model = zoo.load(folder, device="cpu", **overrides)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    return model.train().requires_grad_(True)


def grad_error(g_ref: torch.Tensor, g_zoo: torch.Tensor, total: float):
    """None if ``g_zoo`` matches ``g_ref`` (max abs difference within GRAD_RTOL of its norm),
    else what differs. A gradient that is zero in exact arithmetic (the key biases': adding one
    number to every attention score of a row changes no probability) is rounding noise on both
    sides: one below ZERO of the whole gradient's norm (``total``) counts as zero, and must be
    zero on both sides."""
    norm, err = g_ref.norm().item(), (g_zoo - g_ref).abs().max().item()
    if norm < ZERO * total:
        return None if g_zoo.norm().item() < ZERO * total else f"zero in the reference, norm {g_zoo.norm().item():.3g}"
    return None if err <= GRAD_RTOL * norm else f"{err:.3g} vs norm {norm:.3g}"


def gradient_mismatches(ref, model, converter) -> list:
    """The parameters whose gradients differ by more than GRAD_RTOL of their norm, each
    transformers parameter named through the converter's key map (the report's ``consumed``;
    a tied tensor is one parameter, its gradient the sum over its uses on both sides). Every zoo
    parameter must be compared once; a transformers parameter no forward reads (a shared table
    the untied layout leaves unused) must map to none."""
    _, report = convert(ref.state_dict(), converter, model.state_dict())
    ours, seen, bad = dict(model.named_parameters()), set(), []
    total = math.sqrt(sum(p.grad.norm().item() ** 2 for p in ref.parameters() if p.grad is not None))
    aliases = {}
    for name, p in ref.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    for p in ref.parameters():
        targets = {report.consumed[n] for n in aliases[id(p)] if n in report.consumed}
        if p.grad is None:
            assert not targets, f"{aliases[id(p)]}: no gradient in transformers, but zoo has {targets}"
            continue
        assert len(targets) == 1, f"{aliases[id(p)]} -> {targets}"
        target = targets.pop()
        seen.add(target)
        assert ours[target].grad is not None, f"{target}: no gradient"
        error = grad_error(p.grad, ours[target].grad, total)
        if error:
            bad.append(f"{target}: {error}")
    assert seen == set(ours), f"zoo parameters never compared: {sorted(set(ours) - seen)}"
    return bad


# ---------------------------------------------------------------------------------- Marian parity


@pytest.mark.parametrize("files", ["save_pretrained", "hub"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_marian_loss_and_gradients_match_transformers(layout, files, tmp_path):
    """Given labels only, both sides shift them right behind the decoder start token (the pad
    token, whose table row gets no gradient from lookups in MarianMTModel); loss within 1e-5
    relative, every gradient within 1e-4 of its norm. Loaded with the speed layer, which steps
    aside in training mode."""
    ref, config = write(tmp_path, layout, files)
    ref.train()
    model = trained(tmp_path)
    assert accel.applied(model)
    x, mask, labels = batch(config)
    theirs = ref(input_ids=x, attention_mask=mask, labels=labels)
    ours = model(x, attention_mask=mask, labels=labels)
    assert ours.loss.shape == () and ours.loss.requires_grad
    assert abs(ours.loss.item() - theirs.loss.item()) <= LOSS_RTOL * abs(theirs.loss.item()), (ours.loss, theirs.loss)
    assert torch.equal(ours.loss, losses.token_cross_entropy(ours.logits, labels))
    theirs.loss.backward()
    ours.loss.backward()
    assert not gradient_mismatches(ref, model, hf_marian.CONVERTER)


def test_marian_labels_with_explicit_decoder_inputs(tmp_path):
    ref, config = write(tmp_path)
    ref.train()
    model = trained(tmp_path)
    x, mask, labels = batch(config)
    dec = losses.shift_right(labels, config["decoder_start_token_id"], config["pad_token_id"])
    dec[:, 1] = 5  # not the shifted labels: the given decoder inputs are used
    theirs = ref(input_ids=x, attention_mask=mask, decoder_input_ids=dec, labels=labels)
    ours = model(x, dec, attention_mask=mask, labels=labels)
    assert abs(ours.loss.item() - theirs.loss.item()) <= LOSS_RTOL * abs(theirs.loss.item())
    shifted = model(x, attention_mask=mask, labels=labels).loss
    assert abs(shifted.item() - ours.loss.item()) > 1e-4


@pytest.mark.parametrize("layout", ["shared-tied", "separate-untied"])
def test_marian_adamw_step_then_eval_matches(layout, tmp_path):
    """One AdamW step on both sides, then eval mode: the same logits from the fast model (its
    packed weights and few-row head must read the updated weights) and from the plain one."""
    ref, config = write(tmp_path, layout)
    ref.train()
    model = trained(tmp_path)
    x, mask, labels = batch(config)
    dec = losses.shift_right(labels, config["decoder_start_token_id"], config["pad_token_id"])
    with torch.no_grad():
        before = model.eval()(x, dec, attention_mask=mask).logits.clone()
    model.train()
    for m in (ref, model):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2, betas=(0.9, 0.98), weight_decay=0.1)
        opt.zero_grad()
        out = m(input_ids=x, attention_mask=mask, labels=labels)
        out.loss.backward()
        opt.step()
    ref.eval()
    model.eval()
    assert accel.applied(model)
    with torch.no_grad():
        want = ref(input_ids=x, attention_mask=mask, decoder_input_ids=dec).logits
        got = model(x, dec, attention_mask=mask).logits
        assert (got - before).abs().max() > 1e-3, "the step changed nothing: the check would be vacuous"
        assert (got - want).abs().max() <= 1e-5, (got - want).abs().max()
        # one row at a time: the few-row head and the packed products see the new weights too
        one = model(x[:1], dec[:1], attention_mask=mask[:1]).logits
        assert (one - want[:1]).abs().max() <= 1e-5
        assert (accel.plain(model)(x, dec, attention_mask=mask).logits - want).abs().max() <= 1e-5


def test_gradient_check_catches_broken_mappings(tmp_path):
    """Not vacuous: swapping the query and key weights of one layer changes the loss or the
    gradients, and so does letting the pad row learn from lookups (nn.Embedding without
    padding_idx), which MarianMTModel does not."""
    ref, config = write(tmp_path)
    ref.train()
    x, mask, labels = batch(config)
    theirs = ref(input_ids=x, attention_mask=mask, labels=labels)
    theirs.loss.backward()

    model = trained(tmp_path)
    attn = model.encoder.layers[0].self_attn
    with torch.no_grad():
        q = attn.linears[0].weight.clone()
        attn.linears[0].weight.copy_(attn.linears[1].weight)
        attn.linears[1].weight.copy_(q)
    model(x, attention_mask=mask, labels=labels).loss.backward()
    assert any("encoder.layers.0.self_attn" in line for line in gradient_mismatches(ref, model, hf_marian.CONVERTER))

    model = trained(tmp_path)
    assert model.shared.lut.padding_idx == config["pad_token_id"]
    model.shared.lut.padding_idx = None
    ours = model(x, attention_mask=mask, labels=labels)
    assert abs(ours.loss.item() - theirs.loss.item()) <= LOSS_RTOL * abs(theirs.loss.item())  # forward unchanged
    ours.loss.backward()
    assert [line for line in gradient_mismatches(ref, model, hf_marian.CONVERTER) if line.startswith("shared.lut")]


def test_bad_labels_are_input_errors(tmp_path):
    _, config = write(tmp_path)
    model = zoo.load(tmp_path, device="cpu")
    x, mask, labels = batch(config)

    def with_first(value):
        out = labels.clone()
        out[0, 0] = value
        return out

    for bad, match in ((labels[:2], "one row per input row"), (labels.float(), "int64"),
                       (with_first(60), "label 60 is neither"), (with_first(-5), "label -5 is neither")):
        with pytest.raises(InputError, match=match):
            model(x, attention_mask=mask, labels=bad)
    with pytest.raises(InputError, match="differ in shape"):
        model(x, labels[:, :3], attention_mask=mask, labels=labels)
    with pytest.raises(InputError, match="give decoder_input_ids, or labels"):
        model(x, attention_mask=mask)


# ---------------------------------------------------------------------------------- dropout


def test_marian_dropout_sites_and_rates(tmp_path, monkeypatch):
    """Where MarianMTModel applies them: ``dropout`` on each stack's embeddings (after the
    positions) and on every sublayer's output before its residual sum, ``activation_dropout``
    after the feed-forward's activation, ``attention_dropout`` on every attention's
    probabilities; measured zero fractions within 5 standard errors of p."""
    write(tmp_path, dropout=0.3, attention_dropout=0.2, activation_dropout=0.25)
    model = trained(tmp_path)
    cfg = model.config
    assert (cfg.dropout, cfg.attention_dropout, cfg.activation_dropout) == (0.3, 0.2, 0.25)
    n_enc, n_dec = cfg.encoder_layers, cfg.decoder_layers
    sites = {m: m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert sorted(sites.values()) == sorted([0.3] * (2 + 2 * n_enc + 3 * n_dec) + [0.25] * (n_enc + n_dec))
    stats, handles = record_dropout(model)
    seen, counts = attention_dropout_recorder(monkeypatch)
    x, mask, labels = batch(marian_config())
    with torch.no_grad():
        for _ in range(8):
            model(x, attention_mask=mask, labels=labels)
    for h in handles:
        h.remove()
    assert set(stats) == set(sites)
    for module, (zeroed, n, scaled) in stats.items():
        assert n > 400 and scaled
        assert zero_fraction_ok(zeroed / n, module.p, n), (module, zeroed / n, n)
    assert seen == [0.2] * 8 * (n_enc + 2 * n_dec)  # self-attention, and the decoder's cross-attention
    assert zero_fraction_ok(counts[0] / counts[1], 0.2, counts[1])
    seen.clear()
    with torch.no_grad():
        model.eval()(x, attention_mask=mask, labels=labels)
    assert seen and set(seen) == {0.0}


def test_eval_mode_is_deterministic_and_unchanged_by_dropout_rates(tmp_path):
    """In eval mode dropout is the identity: the same logits bit for bit, whatever the
    probabilities; in training mode two runs differ."""
    _, config = write(tmp_path)
    x, mask, labels = batch(config)
    plain = zoo.load(tmp_path, device="cpu")
    dropping = zoo.load(tmp_path, device="cpu", dropout=0.4, attention_dropout=0.3, activation_dropout=0.2)
    with torch.no_grad():
        want = plain(x, attention_mask=mask, labels=labels)
        for _ in range(2):
            got = dropping(x, attention_mask=mask, labels=labels)
            assert torch.equal(got.logits, want.logits) and torch.equal(got.loss, want.loss)
        dropping.train()
        a, b = (dropping(x, attention_mask=mask, labels=labels).loss for _ in range(2))
    assert a != b


def test_layerdrop_is_refused(tmp_path):
    write(tmp_path)
    with pytest.raises(ConfigError, match="encoder_layerdrop"):
        zoo.load(tmp_path, device="cpu", encoder_layerdrop=0.1)


# ---------------------------------------------------------------------------------- Annotated Transformer


def test_annotated_loss_is_the_nll_of_its_log_probabilities_with_its_formulas_gradients(tmp_path):
    """The Annotated Transformer's output is log-probabilities; the cross-entropy of
    log-probabilities is their negative log-likelihood (log_softmax leaves them unchanged), so
    ``.loss`` is the NLL of the labels, -100 ignored. Loss and every gradient match the
    Annotated Transformer's formulas (stated in tests/test_encoder_decoder.py) on the same
    weights, differentiated by autograd."""
    sd = annotated_state_dict()
    d, max_len = sd["src_embed.0.lut.weight"].shape[1], sd["src_embed.1.pe"].shape[1]
    for key in ("src_embed.1.pe", "tgt_embed.1.pe"):  # zoo's table: the comparison is of gradients only
        sd[key] = sinusoids(max_len, d, "interleaved")[None]
    save_safetensors(sd, tmp_path / "model.safetensors")
    model = trained(tmp_path, heads=4, dropout=0.0, attention_dropout=0.0, decoder_start_token_id=1, pad_token_id=0)
    g = torch.Generator().manual_seed(3)
    src = torch.randint(1, 23, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    labels = torch.randint(1, 19, (3, 7), generator=g)
    labels[2, 4:] = losses.IGNORE
    out = model(src, attention_mask=mask, labels=labels)
    logp = out.logits
    nll = F.nll_loss(logp.reshape(-1, logp.shape[-1]), labels.reshape(-1), ignore_index=losses.IGNORE)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(()), atol=1e-5)
    assert abs(out.loss.item() - nll.item()) <= 1e-6 * nll.item()

    params = {k: v.clone().requires_grad_(not k.endswith(".pe")) for k, v in sd.items()}
    tgt = losses.shift_right(labels, 1, 0)
    want_logp = annotated_log_probs(params, src, tgt, mask[:, None, :], h=4)
    want = F.nll_loss(want_logp.reshape(-1, want_logp.shape[-1]), labels.reshape(-1), ignore_index=losses.IGNORE)
    assert abs(out.loss.item() - want.item()) <= LOSS_RTOL * want.item(), (out.loss, want)
    out.loss.backward()
    want.backward()
    _, report = convert(sd, annotated.CONVERTER, model.state_dict())
    ours = dict(model.named_parameters())
    assert set(report.consumed.values()) == set(ours)
    total = math.sqrt(sum(p.grad.norm().item() ** 2 for p in params.values() if p.grad is not None))
    bad = [f"{target}: {error}" for key, target in report.consumed.items()
           for error in [grad_error(params[key].grad, ours[target].grad, total)] if error]
    assert not bad


def test_annotated_dropout_where_make_model_applies_it():
    """make_model(..., dropout): that rate on the embeddings, on every sublayer's output and
    inside the feed-forward; the attention probabilities get MultiHeadedAttention's default 0.1,
    which make_model does not override."""
    arch = annotated.to_architecture({"src_vocab": 11, "tgt_vocab": 11, "N": 1, "d_model": 16, "d_ff": 32,
                                      "h": 2, "dropout": 0.3})
    assert (arch["dropout"], arch["activation_dropout"], arch["attention_dropout"]) == (0.3, 0.3, 0.1)
    assert annotated.to_architecture({"dropout": 0.3, "attention_dropout": 0.0})["attention_dropout"] == 0.0
    assert annotated.to_architecture(annotated.from_architecture(arch)) == arch
    model = zoo.load("transformer-base", device="cpu", N=1, d_model=16, d_ff=32, heads=2, src_vocab=11,
                     tgt_vocab=11, dropout=0.3)
    drops = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert drops == {0.3}
    assert {m.dropout for m in model.modules() if isinstance(m, MultiHeadedAttention)} == {0.1}


def test_dropout_probability_out_of_range_is_refused():
    with pytest.raises(ConfigError, match="activation_dropout"):
        annotated.to_architecture({"activation_dropout": 1.5})
