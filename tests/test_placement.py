"""Models larger than one device (zoo.placement): ``zoo.load(..., device_map=...)`` through
accelerate, on the CPU.

A tiny GPT-2, BERT and encoder-decoder (Marian), four blocks each, are loaded with a
``max_memory`` that leaves room on "cpu" for the parts outside the blocks and some of the
blocks, so accelerate puts the other blocks on disk: the outputs equal those of the model in one piece (atol 1e-6), greedy
and beam-search ids equal the undivided model's, the temporary offload folder goes away with the
model and nothing else is touched. Bad placement arguments are one-line InputErrors; without
accelerate, a device map says how to install it.
"""
from __future__ import annotations

import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import zoo
from zoo import accel, placement
from zoo.cli import cli
from zoo.errors import InputError
from zoo.loading import load_full
from zoo.registry import get_catalog
from zoo.types import import_ref

from conftest import digest, write_checkpoint

FAMILIES = ("hf_gpt2", "hf_bert", "hf_marian")
FOUR_BLOCKS = {"hf_gpt2": {"n_layer": 4}, "hf_bert": {"num_hidden_layers": 4}, "hf_marian": {}}  # Marian: 2 + 2
OUTPUTS = ("logits", "last_hidden_state", "pooler_output", "start_logits", "end_logits")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny random checkpoint of each family with four blocks, in the Hub layout."""
    root = tmp_path_factory.mktemp("placement")
    for name in FAMILIES:
        conv = get_catalog().converter(name)
        write_checkpoint(conv, root / name, config={**conv.tiny_config, **FOUR_BLOCKS[name]})
    return root


def budget(model: torch.nn.Module) -> int:
    """A "cpu" budget for the parts outside the blocks and not quite three of the largest
    block: accelerate keeps room on the main device for the largest block still to place (to
    load an offloaded one into), so one or two blocks stay on the CPU and the others go to disk."""
    from accelerate.utils import compute_module_sizes

    sizes = compute_module_sizes(model)
    blocks = [sizes[name] for name, _ in placement.blocks(model)]
    return sizes[""] - sum(blocks) + 3 * max(blocks) - 64


def whole_and_split(folder: Path, offload_folder: Path, **kwargs):
    whole = load_full(str(folder), device="cpu", fast=False, **kwargs)
    split = load_full(str(folder), device_map="sequential", max_memory={"cpu": budget(whole.model)},
                      offload_folder=str(offload_folder), **kwargs)
    return whole, split


def outputs(loaded, batch: int = 2, seq: int = 8):
    gen = torch.Generator().manual_seed(0)
    inputs = import_ref(loaded.architecture.example_inputs)(loaded.arch_config, loaded.task, batch, seq, gen)
    with torch.inference_mode():
        out = loaded.model(**inputs, output_hidden_states=True)
    fields = {name: getattr(out, name) for name in OUTPUTS if getattr(out, name, None) is not None}
    return inputs, fields, out.hidden_states


def offload_folders(where: Path):
    return sorted(where.glob("zoo-offload-*"))


@pytest.mark.parametrize("name", FAMILIES)
def test_split_over_cpu_and_disk_gives_the_outputs_of_the_whole(name, folders, tmp_path):
    before = digest(folders / name)
    whole, split = whole_and_split(folders / name, tmp_path)
    device_map = split.model.hf_device_map
    block_names = [n for n, _ in placement.blocks(split.model)]
    on = {device_map[placement_key(device_map, n)] for n in block_names}
    assert on == {"cpu", "disk"}, device_map  # some blocks in memory, some on disk
    assert split.device == torch.device("cpu") and split.dtype == torch.float32
    assert accel.applied(split.model) == []  # accelerate's hooks wrap forward: no speed layer
    assert any(p.is_meta for p in split.model.parameters())  # the disk blocks hold no memory

    inputs, ours, our_hidden = outputs(split)
    _, theirs, their_hidden = outputs(whole)
    assert set(ours) == set(theirs) and ours
    for field in ours:
        torch.testing.assert_close(ours[field], theirs[field], atol=1e-6, rtol=0)
    assert len(our_hidden) == len(their_hidden)
    for a, b in zip(our_hidden, their_hidden):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)

    (offload,) = offload_folders(tmp_path)
    assert (offload / "index.json").is_file()
    del split
    gc.collect()
    assert offload_folders(tmp_path) == []  # zoo's folder goes with the model
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # and nothing else was written
    assert digest(folders / name) == before  # the checkpoint is untouched


def placement_key(device_map, name):
    """The key of ``device_map`` that places module ``name``."""
    return max((k for k in device_map if k == "" or name == k or name.startswith(k + ".")), key=len)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_parts_outside_the_blocks_stay_on_the_main_device(name, folders, tmp_path):
    """Embeddings and heads (whose weights the model also reads outside their modules: tied
    heads, the KV cache's device) are never offloaded, whatever the budget."""
    _, split = whole_and_split(folders / name, tmp_path)
    blocks = [n for n, _ in placement.blocks(split.model)]
    outside = [n for n, _ in split.model.named_parameters() if placement_key(split.model.hf_device_map, n) not in blocks
               and not any(n.startswith(b + ".") for b in blocks)]
    assert outside
    for n in outside:
        assert not split.model.get_parameter(n).is_meta, n


def test_the_blocks_are_the_items_of_module_lists(folders):
    names = {n: [b for b, _ in placement.blocks(load_full(str(folders / n), device="cpu", fast=False).model)]
             for n in FAMILIES}
    assert names["hf_gpt2"] == ["h.0", "h.1", "h.2", "h.3"]
    assert names["hf_bert"] == [f"encoder.layer.{i}" for i in range(4)]
    assert names["hf_marian"] == ["encoder.layers.0", "encoder.layers.1", "decoder.layers.0", "decoder.layers.1"]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_of_a_dispatched_gpt2(num_beams, folders, tmp_path):
    whole, split = whole_and_split(folders / "hf_gpt2", tmp_path)
    assert "disk" in split.model.hf_device_map.values()
    ids = torch.tensor([[5, 17, 3, 44]])
    kwargs = {"max_new_tokens": 12} if num_beams == 1 else {"max_new_tokens": 8, "num_beams": num_beams}
    expected = whole.model.generate(ids, **kwargs)
    assert torch.equal(split.model.generate(ids, **kwargs), expected)


def test_generation_of_a_dispatched_encoder_decoder(folders, tmp_path):
    whole, split = whole_and_split(folders / "hf_marian", tmp_path)
    assert "disk" in split.model.hf_device_map.values()
    src = torch.tensor([[5, 17, 3, 44, 0]])
    for beams in (1, 2):
        expected = whole.model.generate(src, max_new_tokens=8, num_beams=beams)
        assert torch.equal(split.model.generate(src, max_new_tokens=8, num_beams=beams), expected)


def test_dtype_applies_to_a_split_model(folders, tmp_path):
    whole, split = whole_and_split(folders / "hf_gpt2", tmp_path, dtype="bfloat16")
    assert split.dtype == torch.bfloat16 and split.model.wte.weight.dtype == torch.bfloat16
    _, ours, _ = outputs(split)
    _, theirs, _ = outputs(whole)
    torch.testing.assert_close(ours["logits"], theirs["logits"], atol=1e-6, rtol=0)


def test_the_default_offload_folder_is_temporary(folders, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    whole = load_full(str(folders / "hf_gpt2"), device="cpu", fast=False)
    model = zoo.load(str(folders / "hf_gpt2"), device_map="auto", max_memory={"cpu": budget(whole.model)})
    assert "disk" in model.hf_device_map.values()
    assert len(offload_folders(tmp_path)) == 1
    del model
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_an_explicit_map(folders, tmp_path):
    whole = load_full(str(folders / "hf_gpt2"), device="cpu", fast=False)
    split = load_full(str(folders / "hf_gpt2"), device_map={"": "cpu", "h.1": "disk"}, offload_folder=tmp_path)
    assert split.model.hf_device_map == {"": "cpu", "h.1": "disk"}
    assert len(offload_folders(tmp_path)) == 1
    assert split.model.h[1].mlp.c_fc.weight.is_meta and not split.model.h[0].mlp.c_fc.weight.is_meta
    torch.testing.assert_close(outputs(split)[1]["logits"], outputs(whole)[1]["logits"], atol=1e-6, rtol=0)


def test_a_model_without_blocks_stays_whole_on_the_main_device():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    assert placement.blocks(model) == []
    plan = placement.plan("sequential", max_memory={"cpu": 10_000})
    assert placement.dispatch(model, plan) == torch.device("cpu")
    assert model.hf_device_map == {"": "cpu"}
    with pytest.raises(InputError, match="whose budget is 100 bytes"):
        placement.dispatch(model, placement.plan("sequential", max_memory={"cpu": 100}))


def test_everything_on_one_device_is_the_plain_model(folders):
    """Without a budget, a tiny model fits the CPU: accelerate sets no hooks."""
    loaded = load_full(str(folders / "hf_gpt2"), device_map="auto")
    assert set(loaded.model.hf_device_map.values()) == {"cpu"}
    assert not any(hasattr(m, "_hf_hook") for m in loaded.model.modules())
    assert loaded.device == torch.device("cpu")


@pytest.mark.parametrize("kwargs, message", [
    ({"device_map": "fastest"}, "device_map='fastest': give auto, balanced, sequential or a dict"),
    ({"device_map": "cpu"}, "for one device, use device="),
    ({"device_map": {}}, "give auto, balanced, sequential or a dict"),
    ({"device_map": {"": "tpu"}}, "device_map['']: unknown device 'tpu'"),
    ({"device_map": {"": "cuda:7"}}, "device 'cuda:7' is not available here"),
    ({"device_map": {"": 3}}, "device 3 is not available here"),
    ({"device_map": "auto", "device": "cpu"}, "device='cpu' and device_map= both given"),
    ({"max_memory": {"cpu": "1GiB"}}, "max_memory applies to a model loaded with a device_map"),
    ({"offload_folder": "."}, "offload_folder applies to a model loaded with a device_map"),
    ({"device_map": "auto", "max_memory": {"cpu": "lots"}}, "max_memory['cpu']: 'lots' is not a memory size"),
    ({"device_map": "auto", "max_memory": {"cpu": -1}}, "max_memory['cpu']: -1 is negative"),
    ({"device_map": "auto", "max_memory": {"gpu": "1GiB"}}, "max_memory['gpu']: unknown device 'gpu'"),
    ({"device_map": "auto", "max_memory": {"disk": "1GiB"}}, "disk takes no budget"),
    ({"device_map": {"": "cpu"}, "max_memory": {"cpu": "1GiB"}}, "max_memory applies to device_map='auto'"),
    ({"device_map": "auto", "offload_folder": "/nonexistent/zoo"}, "offload_folder '/nonexistent/zoo': no such folder"),
    ({"device_map": {"h.0": "cpu", "h.1": "disk"}}, "device_map places no device for wte.weight, wpe.weight"),
    ({"device_map": {"": "cpu", "h.7": "disk"}}, "device_map: 'h.7' is no module of the model"),
    ({"device_map": {"": "cpu", "h.0.mlp": "disk"}}, "'h.0.mlp' is part of the block 'h.0'"),
    ({"device_map": {"": "cpu", "wte": "disk"}}, "the parts outside the blocks (wte.weight"),
    ({"device_map": "sequential", "max_memory": {"cpu": 100}}, "stay on the main device cpu, whose budget is 100 bytes"),
])
def test_bad_placement_is_one_line(kwargs, message, folders, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(InputError) as exc:
        load_full(str(folders / "hf_gpt2"), **kwargs)
    text = str(exc.value)
    assert message in text and "\n" not in text, text
    assert list(tmp_path.iterdir()) == []  # no offload folder left behind


def test_without_accelerate_a_device_map_says_how_to_install_it(folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # `import accelerate` fails
    with pytest.raises(InputError, match=r"^device_map needs accelerate, which is not installed: "
                                         r"pip install 'zoo\[big\]'$"):
        zoo.load(str(folders / "hf_gpt2"), device_map="auto")
    result = CliRunner().invoke(cli, ["run", str(folders / "hf_gpt2"), "--ids", "1,2", "--device-map", "auto"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "zoo: error: device_map needs accelerate, which is not installed: pip install 'zoo[big]'"]
    assert zoo.load(str(folders / "hf_gpt2"), device="cpu") is not None  # the rest works without it


def test_load_keywords_name_the_placement_ones():
    from zoo.loading import LOAD_KEYWORDS

    assert {"device_map", "max_memory", "offload_folder"} <= set(LOAD_KEYWORDS)


def test_zoo_run_with_a_device_map(folders):
    args = ["run", str(folders / "hf_gpt2"), "--ids", "5,17,3", "--max-new-tokens", "6", "--json"]
    plain = CliRunner().invoke(cli, args)
    spread = CliRunner().invoke(cli, args + ["--device-map", "auto"])
    assert plain.exit_code == 0 and spread.exit_code == 0, spread.output
    assert json.loads(spread.stdout) == json.loads(plain.stdout)
    both = CliRunner().invoke(cli, args + ["--device-map", "auto", "--device", "cpu"])
    assert both.exit_code == 2 and "device='cpu' and device_map= both given" in both.output
    bad = CliRunner().invoke(cli, args + ["--device-map", "everywhere"])
    assert bad.exit_code == 2 and "'everywhere' is not one of 'auto', 'balanced', 'sequential'" in bad.output


def test_zoo_verify_with_a_device_map_over_cpu_and_disk(folders, monkeypatch):
    """`zoo verify --device-map auto` on a machine whose CPU has room for about one block:
    the split model (no fast paths) against transformers, generation included."""
    import accelerate.utils

    whole = load_full(str(folders / "hf_gpt2"), device="cpu", fast=False)
    monkeypatch.setattr(accelerate.utils, "get_max_memory", lambda max_memory=None: {"cpu": budget(whole.model)})
    result = CliRunner().invoke(cli, ["verify", str(folders / "hf_gpt2"), "--device-map", "auto", "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 0, result.output
    assert report["passed"] and report["fast_paths"] == [] and report["generation"]["identical"]


def test_listing_and_help_import_no_accelerate():
    code = (
        "import sys\n"
        "from zoo.cli import main\n"
        "for args in (['--help'], ['run', '--help'], ['verify', '--help'], ['list']):\n"
        "    sys.argv = ['zoo'] + args\n"
        "    try:\n        main()\n    except SystemExit as e:\n        assert not e.code, e.code\n"
        "assert 'accelerate' not in sys.modules and 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
