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
