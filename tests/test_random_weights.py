"""--random-weights on `zoo run` and `zoo convert`, random_weights=True in zoo.load: the whole
main job runs without the Hub, on seeded random weights in the Hub's layout, cached."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import zoo
from zoo.cli import cli
from zoo.loading import load_full
from zoo.registry import get_catalog

from conftest import cached_repo

TINY = {
    "hf_gpt2": ("text-generation", ["--ids", "1,2,3", "--max-new-tokens", "3"]),
    "hf_marian": ("translation", ["--ids", "3,4,5", "--max-new-tokens", "3"]),
}


@pytest.fixture
def catalog(tmp_path, monkeypatch):
    """A catalog of tiny entries, one per converter that has a reference."""
    lines = []
    for conv in get_catalog().converters.values():
        if conv.reference is not None and conv.name != "hf_distilbert":
            config = ", ".join(f"{k} = {json.dumps(v)}" for k, v in conv.tiny_config.items()
                               if isinstance(v, (int, float, str, bool)))
            lines.append(f"[models.tiny-{conv.name}]\nconverter = '{conv.name}'\nconfig = {{ {config} }}\n")
    path = tmp_path / "cat.toml"
    path.write_text("\n".join(lines))
    monkeypatch.setenv("ZOO_REGISTRY", str(path))
    return path


@pytest.mark.parametrize("conv", sorted(TINY))
def test_zoo_run_with_random_weights_offline(conv, catalog):
    task, args = TINY[conv]
    result = CliRunner().invoke(cli, ["run", f"tiny-{conv}", "--random-weights", "--device", "cpu", "--json", *args])
    assert result.exit_code == 0, result.output
    assert "random weights" in result.stderr and "mean nothing" in result.stderr
    data = json.loads(result.stdout)
    assert data.get("generated_ids") or data.get("output_ids")


def test_random_weights_are_seeded_cached_and_reused(catalog):
    first = load_full("tiny-hf_gpt2", device="cpu", random_weights=True)
    folder = first.folder
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again = load_full("tiny-hf_gpt2", device="cpu", random_weights=True)
    assert again.folder == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert first.random_seed == 0
    other = load_full("tiny-hf_gpt2", device="cpu", random_weights=True, seed=1)
    assert other.folder != folder
    x = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        assert torch.equal(first.model(x).logits, again.model(x).logits)
        assert not torch.equal(first.model(x).logits, other.model(x).logits)
    model = zoo.load("tiny-hf_gpt2", device="cpu", random_weights=True)
    assert isinstance(model, torch.nn.Module)


def test_convert_with_random_weights_loads_in_transformers(catalog, tmp_path):
    from transformers import AutoModelForCausalLM

    result = CliRunner().invoke(cli, ["convert", "tiny-hf_gpt2", "--random-weights", "--to", "hf",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))


def test_random_weights_and_a_checkpoint_are_exclusive(catalog, tmp_path):
    result = CliRunner().invoke(cli, ["run", "tiny-hf_gpt2", "--random-weights", "--checkpoint", str(tmp_path),
                                      "--ids", "1"])
    assert result.exit_code == 2 and "give one of them" in result.output


def test_info_says_whether_the_weights_are_in_the_cache(tmp_path, monkeypatch):
    import hashlib

    from zoo import hub

    path = tmp_path / "cat.toml"
    path.write_text("[models.m]\nconverter = 'hf_gpt2'\nrepo = 'org/m'\nrevision = 'main'\nconfig = {}\n")
    monkeypatch.setenv("ZOO_REGISTRY", str(path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    result = CliRunner().invoke(cli, ["info", "m"])
    assert result.exit_code == 0 and "cached        no: downloaded on first use" in result.output
    repo, snap = cached_repo(tmp_path / "hub")
    data = b"weights"
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.write_bytes(data)
    (snap / "model.safetensors").symlink_to(blob)
    assert hub.cached("org/m", "main") == snap
    result = CliRunner().invoke(cli, ["info", "m", "--json"])
    assert json.loads(result.stdout)["cached"] == str(snap)


def test_zoo_run_from_python_gives_what_the_cli_prints_as_json(catalog):
    from zoo.errors import InputError

    args = ["tiny-hf_gpt2", "--random-weights", "--ids", "1,2,3", "--max-new-tokens", "4", "--device", "cpu"]
    cli_result = json.loads(CliRunner().invoke(cli, ["run", *args, "--json"]).stdout)
    api_result = zoo.run("tiny-hf_gpt2", random_weights=True, ids=[1, 2, 3], max_new_tokens=4, device="cpu")
    assert api_result == cli_result
    with pytest.raises(InputError, match="unexpected option 'max_tokens'"):
        zoo.run("tiny-hf_gpt2", random_weights=True, ids=[1], max_tokens=4)
    with pytest.raises(InputError, match="top does not apply to text-generation"):
        zoo.run("tiny-hf_gpt2", random_weights=True, ids=[1], top=3)


# --------------------------------------------------------------------------- a tokenizer trained in code

TEXT = {"text-generation": "The zoo opens at", "fill-mask": "Paris is the [MASK] of France.",
        "translation": "The house is wonderful."}
WITH_TOKENIZER = [c for c in get_catalog().converters.values() if c.tokenizer]


@pytest.fixture
def text_catalog(tmp_path, monkeypatch):
    """Tiny entries whose vocabulary is large enough for a trained tokenizer (512 ids)."""
    lines = []
    for conv in WITH_TOKENIZER:
        config = {k: v for k, v in conv.tiny_config.items() if isinstance(v, (int, float, str, bool))}
        config[conv.tokenizer["vocab_size"]] = 512
        for field in ("pad_token_id", "decoder_start_token_id"):
            if field in config:
                config[field] = 511
        body = ", ".join(f"{k} = {json.dumps(v)}" for k, v in config.items())
        lines.append(f"[models.text-{conv.name}]\nconverter = '{conv.name}'\nconfig = {{ {body} }}\n")
    (tmp_path / "cat.toml").write_text("\n".join(lines))
    monkeypatch.setenv("ZOO_REGISTRY", str(tmp_path / "cat.toml"))


@pytest.mark.parametrize("conv", WITH_TOKENIZER, ids=lambda c: c.name)
def test_random_weights_take_text_through_a_tokenizer_trained_in_code(conv, text_catalog):
    """Offline, `zoo run NAME TEXT --random-weights` tokenizes the text with the tokenizer
    written beside the random weights, and the output is decoded text."""
    from transformers import AutoTokenizer

    name = f"text-{conv.name}"
    task = get_catalog().get(name).task
    result = CliRunner().invoke(cli, ["run", name, TEXT[task], "--random-weights", "--device", "cpu", "--json",
                                      *(["--max-new-tokens", "4"] if task != "fill-mask" else [])])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    loaded = load_full(name, device="cpu", random_weights=True)
    tok = AutoTokenizer.from_pretrained(str(loaded.folder))
    assert len(tok) == 512  # every id the model can give decodes
    ids = tok(TEXT[task])["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True).lower().replace(" ", "") == TEXT[task].lower().replace(" ", "").replace("[mask]", "")
    assert zoo.processor(name, random_weights=True).get_vocab() == tok.get_vocab()
    assert data["input_ids"] == ids  # the text went in through that tokenizer
    if task == "fill-mask":  # every candidate id is a token of the tokenizer
        assert all(c["token"] == tok.convert_ids_to_tokens(c["token_id"]) for c in data["masks"][0]["candidates"])
    elif task == "text-generation":
        assert data["text"] == tok.decode(data["generated_ids"])
    else:
        assert isinstance(data["text"], str) and data["output_ids"][0] == loaded.arch_config["decoder_start_token_id"]


def test_tinytokenizer_puts_special_tokens_at_the_config_ids():
    from zoo import tinytokenizer

    spec = get_catalog().converter("hf_marian").tokenizer
    config = {"vocab_size": 300, "eos_token_id": 0, "pad_token_id": 299}
    tok = tinytokenizer.build(spec, config)
    assert tok.token_to_id("</s>") == 0 and tok.token_to_id("<pad>") == 299 and tok.get_vocab_size() == 300
    assert tok.encode("The house").ids[-1] == 0  # </s> after the text, as Marian's tokenizer
    assert all(tok.id_to_token(i) is not None for i in range(300))  # trained tokens, then fillers
    assert tok.decode(tok.encode("The house").ids, skip_special_tokens=True) == "The house"
    assert tinytokenizer.build(spec, {**config, "vocab_size": 50}) is None  # too small to hold one
