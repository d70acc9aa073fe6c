"""Checkpoint reading: every defect is a clear error, nothing runs, inputs stay unchanged."""
from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch

import zoo
from zoo.checkpoint import read_safetensors, save_safetensors
from zoo.errors import CheckpointError
from zoo.registry import get_catalog

from conftest import digest, write_checkpoint

CONV = get_catalog().converter("hf_gpt2")


@pytest.fixture
def folder(tmp_path):
    write_checkpoint(CONV, tmp_path)
    return tmp_path


def _corrupt(path, how):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    if how == "truncated":
        path.write_bytes(data[: len(data) - 100])
    elif how == "header-json":
        path.write_bytes(data[:8] + b"{" * n + data[8 + n:])
    elif how == "header-too-long":
        path.write_bytes(struct.pack("<Q", len(data) * 2) + data[8:])
    elif how == "tiny":
        path.write_bytes(data[:5])
    elif how == "lfs-pointer":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")


@pytest.mark.parametrize(
    "how, message",
    [
        ("truncated", "truncated"),
        ("header-json", "corrupt safetensors header"),
        ("header-too-long", "claims"),
        ("tiny", "truncated"),
        ("lfs-pointer", "git lfs pull"),
    ],
)
def test_broken_safetensors_are_named(folder, how, message):
    _corrupt(folder / "model.safetensors", how)
    before = digest(folder)
    with pytest.raises(CheckpointError, match=message) as err:
        zoo.load(str(folder), device="cpu")
    assert "model.safetensors" in str(err.value)
    assert digest(folder) == before


def test_tensors_are_copy_on_write_views(folder):
    path = folder / "model.safetensors"
    before = digest(folder)
    tensors = read_safetensors(path)
    tensors["wte.weight"].add_(1.0)  # writes go to private pages, never to the file
    assert digest(folder) == before


def test_sharded_checkpoint_loads_and_missing_shard_is_named(folder):
    tensors = {k: v.clone() for k, v in read_safetensors(folder / "model.safetensors").items()}
    from safetensors.torch import save_file

    keys = sorted(tensors)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: tensors[k] for k in ks}, str(folder / name))
    (folder / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    model = zoo.load(str(folder), device="cpu")
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 96)

    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        zoo.load(str(folder), device="cpu")


class _Boom:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['ZOO_PWNED'], 'w').write('pwned')",))


def test_pickle_is_refused_without_opt_in_and_never_runs_code(folder, tmp_path_factory, monkeypatch):
    marker = tmp_path_factory.mktemp("m") / "pwned"
    monkeypatch.setenv("ZOO_PWNED", str(marker))
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"wte.weight": _Boom()}, f)
    before = digest(folder)
    with pytest.raises(CheckpointError, match="allow_pickle"):
        zoo.load(str(folder), device="cpu")
    with pytest.raises(CheckpointError, match="refused or unreadable pickle"):
        zoo.load(str(folder), device="cpu", allow_pickle=True)
    assert not marker.exists(), "unpickling ran code"
    assert digest(folder) == before


def test_pickle_with_opt_in_loads_with_weights_only(folder):
    tensors = {k: v.clone() for k, v in read_safetensors(folder / "model.safetensors").items()}
    (folder / "model.safetensors").unlink()
    torch.save(tensors, folder / "pytorch_model.bin")
    model = zoo.load(str(folder), device="cpu", allow_pickle=True)
    assert model(torch.tensor([[1, 2]])).logits.shape == (1, 2, 96)


@pytest.mark.parametrize(
    "content, message",
    [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"), ('{"model_type": "nope"}', "no converter reads model_type 'nope'")],
)
def test_bad_config_json(folder, content, message):
    (folder / "config.json").write_text(content)
    with pytest.raises(zoo.ZooError, match=message):
        zoo.load(str(folder), device="cpu")


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[4]", "must hold a JSON object, got list"),
        ('{"num_beams": "4"}', 'field num_beams must be an integer >= 1, got "4"'),
        ('{"max_length": true}', "field max_length must be an integer >= 1, got true"),
        ('{"eos_token_id": -1}', "field eos_token_id must be a token id (an integer >= 0) or a list of token ids, got -1"),
        ('{"bad_words_ids": [58100]}', "field bad_words_ids must be a list of token-id lists, e.g. [[58100]], got [58100]"),
        ('{"early_stopping": "sometimes"}', 'field early_stopping must be true, false or "never", got "sometimes"'),
        ('{"renormalize_logits": 1}', "field renormalize_logits must be true or false, got 1"),
        ('{"decoder_start_token_id": [5]}', "field decoder_start_token_id must be a token id (an integer >= 0), got [5]"),
    ],
)
def test_bad_generation_config_json(folder, content, message):
    path = folder / "generation_config.json"
    path.write_text(content)
    before = digest(folder)
    with pytest.raises(CheckpointError) as err:
        zoo.load(str(folder), device="cpu")
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert digest(folder) == before


def test_generation_config_nulls_and_other_entries_are_ignored(folder):
    from zoo.checkpoint import read_generation_config

    (folder / "generation_config.json").write_text(
        json.dumps({"eos_token_id": None, "num_beams": 2, "use_cache": True, "transformers_version": "5.0.0"})
    )
    assert read_generation_config(folder) == {"num_beams": 2}


def test_unsupported_config_value_is_named(folder):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "activation_function": "mish"}))
    with pytest.raises(zoo.ConfigError, match="activation_function='mish'"):
        zoo.load(str(folder), device="cpu")


def test_non_finite_weights_warn(folder):
    path = folder / "model.safetensors"
    tensors = {k: v.clone() for k, v in read_safetensors(path).items()}
    tensors["ln_f.weight"][0] = float("nan")
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    with pytest.warns(RuntimeWarning, match="ln_f.weight"):
        zoo.load(str(folder), device="cpu")
    with pytest.warns(RuntimeWarning):
        report = zoo.verify(str(folder), device="cpu")
    assert report.non_finite_weights == ["ln_f.weight"] and "non-finite weights" in report.render()
    assert not report.passed  # NaN logits never pass


def test_release_gives_pages_back_and_keeps_values(tmp_path):
    """release() drops a mapped tensor's resident pages; touching it again reads the file's
    values. Pages zoo has written (write_in_place) are never released."""
    from zoo.checkpoint import release, write_in_place

    big = torch.arange(64 * 1024, dtype=torch.float32).view(64, 1024)  # 256 KiB: many pages
    save_safetensors({"a": big, "b": big + 1}, tmp_path / "model.safetensors")
    before = digest(tmp_path)
    tensors = read_safetensors(tmp_path / "model.safetensors")
    assert torch.equal(tensors["a"], big)
    assert release(tensors["a"]) > 0
    assert torch.equal(tensors["a"], big) and torch.equal(tensors["a"].t(), big.t())
    write_in_place(tensors["b"], torch.zeros(64, 1024))
    assert release(tensors["b"]) == 0
    assert torch.equal(tensors["b"], torch.zeros(64, 1024))
    assert release(big) == 0  # not in a checkpoint map: nothing to give back
    assert digest(tmp_path) == before
