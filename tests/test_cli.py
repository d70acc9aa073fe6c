"""The zoo CLI, through click's CliRunner and as the installed console script."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from zoo.cli import cli
from zoo.registry import get_catalog

from conftest import digest, write_checkpoint

ZOO = str(Path(sys.executable).with_name("zoo"))
CONV = get_catalog().converter("hf_gpt2")


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    write_checkpoint(CONV, folder)
    return folder


def test_list_table_and_json():
    result = invoke("list")
    assert result.exit_code == 0
    header = result.output.splitlines()[0].split()
    assert header == ["NAME", "ARCHITECTURE", "TASK", "PARAMS", "SOURCE"]
    assert "openai-community/gpt2" in result.output and "124M" in result.output
    data = json.loads(invoke("list", "gpt2*", "--json").output)
    assert [d["name"] for d in data] == ["gpt2", "gpt2-large", "gpt2-medium", "gpt2-xl"]
    assert {"name", "architecture", "converter", "task", "aliases"} <= set(data[0])


def test_list_no_match_exits_nonzero():
    result = invoke("list", "nothing-like-this*")
    assert result.exit_code == 1 and "no models match" in result.output


def test_info_and_plugins():
    result = invoke("info", "openai-community/gpt2")
    assert result.exit_code == 0 and "124,439,808" in result.output and "n_layer = 12" in result.output
    plugins = json.loads(invoke("plugins", "--json").output)
    gpt2 = next(p for p in plugins if p["name"] == "hf_gpt2")
    assert gpt2["distribution"] == "zoo" and gpt2["registered"] == {"converter": ["hf_gpt2"]}


@pytest.mark.parametrize("args", [["info", "gtp2"], ["verify", "gtp2"], ["run", "gtp2", "hi"]])
def test_unknown_name_is_one_line_exit_2(args):
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0, result.output
    assert "did you mean 'gpt2'" in result.output and "Traceback" not in result.output


def test_debug_shows_traceback():
    result = invoke("--debug", "info", "gtp2")
    assert result.exit_code == 2 and "Traceback" in result.output


def test_verify_json_on_a_local_checkpoint(tiny):
    before = digest(tiny)
    result = invoke("verify", str(tiny), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] is True and report["max_abs_diff"] <= report["tolerance"]
    assert "sha256:" in report["weights"] and report["generation"]["identical"]
    assert digest(tiny) == before


def test_verify_registry_entry_with_checkpoint_override(tiny):
    result = invoke("verify", "gpt2", "--checkpoint", str(tiny), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("PASSED")


@pytest.mark.parametrize("device, dtype, message", [("cuda:7", None, "not available here (available: cpu"),
                                                    ("tpu", None, "unknown device"),
                                                    ("cpu", "float8", "unknown dtype")])
def test_bad_device_or_dtype(tiny, device, dtype, message):
    args = ["run", str(tiny), "--ids", "1,2", "--device", device] + (["--dtype", dtype] if dtype else [])
    result = invoke(*args)
    assert result.exit_code == 2 and message in result.output


def test_run_with_ids_streams_ids(tiny):
    result = invoke("run", str(tiny), "--ids", "1,2,3", "--max-new-tokens", "5", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["input_ids"] == [1, 2, 3] and len(data["generated_ids"]) == 5


def test_run_without_tokenizer_says_to_use_ids(tiny):
    result = invoke("run", str(tiny), "hello")
    assert result.exit_code == 2 and "--ids" in result.output


def _with_tokenizer(checkpoint, folder):
    """A copy of ``checkpoint`` in ``folder`` with a tiny byte-level BPE tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=96, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:60])
    tok.train_from_iterator(["hello world, the zoo says hello"] * 20, trainer)
    folder.mkdir()
    for f in checkpoint.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    return folder


def test_run_with_a_tokenizer_prints_text(tiny, tmp_path):
    folder = _with_tokenizer(tiny, tmp_path / "with-tok")
    result = invoke("run", str(folder), "hello world", "--max-new-tokens", "4", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["generated_ids"]) <= 4 and isinstance(data["text"], str)


def test_run_takes_eos_and_length_from_generation_config(tiny, tmp_path):
    """gpt2 keeps its eos_token_id in generation_config.json: that one wins over config.json's,
    and the file's max_new_tokens is the default length, as in transformers' generate()."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, GPT2LMHeadModel

    folder = _with_tokenizer(tiny, tmp_path / "gen")
    prompt = torch.tensor([AutoTokenizer.from_pretrained(str(folder))("hello world")["input_ids"]])
    mask = torch.ones_like(prompt)
    first = GPT2LMHeadModel.from_pretrained(str(folder)).generate(prompt, attention_mask=mask, max_new_tokens=1)
    eos = int(first[0, -1])  # an eos that stops the generation after its first token
    assert json.loads((folder / "config.json").read_text())["eos_token_id"] != eos
    GenerationConfig(eos_token_id=eos, max_new_tokens=6).save_pretrained(str(folder))
    result = invoke("run", str(folder), "hello world", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    ref = GPT2LMHeadModel.from_pretrained(str(folder)).eval()  # with the generation config now
    want = ref.generate(prompt, attention_mask=mask)[0, prompt.shape[1]:].tolist()
    assert json.loads(result.stdout)["generated_ids"] == want == [eos]
    result = invoke("run", str(folder), "--ids", "1,2,3", "--device", "cpu", "--json")  # --ids: no eos
    assert len(json.loads(result.stdout)["generated_ids"]) == 6


def test_run_samples_when_the_checkpoint_says_so(tiny, tmp_path):
    """do_sample in generation_config.json: zoo run samples with the file's temperature, top_k
    and top_p (seeded: reproducible); --temperature 0 is greedy whatever the file says."""
    import torch

    import zoo

    folder = tmp_path / "sampling"
    shutil.copytree(tiny, folder)
    args = ("run", str(folder), "--ids", "1,2,3", "--max-new-tokens", "12", "--device", "cpu", "--json")
    greedy = json.loads(invoke(*args).stdout)["generated_ids"]
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 1.5, "top_k": 40, "top_p": 0.95}))
    sampled = [json.loads(invoke(*args, "--seed", str(seed)).stdout)["generated_ids"] for seed in (0, 0, 1)]
    model = zoo.load(str(folder), device="cpu")
    want = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=12, temperature=1.5, top_k=40, top_p=0.95, seed=0)
    assert sampled[0] == sampled[1] == want[0, 3:].tolist()
    assert sampled[0] != greedy or sampled[2] != greedy
    assert json.loads(invoke(*args, "--temperature", "0").stdout)["generated_ids"] == greedy


@pytest.mark.parametrize("content", ["{not json", '{"num_beams": "4"}'])
def test_malformed_generation_config_is_one_line(tiny, tmp_path, content):
    folder = tmp_path / "bad"
    shutil.copytree(tiny, folder)
    (folder / "generation_config.json").write_text(content)
    before = digest(folder)
    result = invoke("run", str(folder), "--ids", "1,2", "--device", "cpu")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith(f"zoo: error: {folder / 'generation_config.json'}: ")
    assert result.output.count("\n") == 1 and digest(folder) == before


def _subprocess(args, **env):
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env={**os.environ, **env})


def test_installed_console_script_runs():
    result = _subprocess([ZOO, "list", "distil*"])
    assert result.returncode == 0, result.stderr
    assert "distilgpt2" in result.stdout
    result = _subprocess([ZOO, "info", "nope-model"])
    assert result.returncode == 2 and result.stderr.startswith("zoo: error: unknown model 'nope-model'")


@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "--json"], ["info", "gpt2"], ["plugins"]])
def test_listing_commands_do_not_import_torch(args):
    code = (
        "import sys\n"
        "from zoo.cli import main\n"
        f"sys.argv = ['zoo'] + {args!r}\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = _subprocess([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr


def test_closed_pipe_is_quiet():
    """`zoo info x | head -1`: when the reader leaves early, writing raises BrokenPipeError;
    zoo stops without an error message or traceback (exit 141, as a shell reports SIGPIPE)."""
    from zoo.cli import ZooGroup

    group = ZooGroup(name="zoo")

    @group.command()
    def talk():
        raise BrokenPipeError(32, "Broken pipe")

    result = CliRunner().invoke(group, ["talk"], obj={})
    assert result.exit_code == 141
    assert "error" not in result.output.lower() and result.exception is None or isinstance(result.exception, SystemExit)


def test_verify_says_why_it_fell_back_to_random_weights(tmp_path, monkeypatch):
    catalog = tmp_path / "cat.toml"
    catalog.write_text('[models.tiny]\narchitecture = "gpt2"\nconverter = "hf_gpt2"\ntask = "text-generation"\n'
                       'repo = "me/tiny-gpt2"\nconfig = { n_layer = 1, n_embd = 16, n_head = 2, vocab_size = 50, '
                       'n_positions = 32 }\n')
    monkeypatch.setenv("ZOO_REGISTRY", str(catalog))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    from zoo import pluginmanager

    pluginmanager.reset()
    result = invoke("verify", "tiny", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    weights = json.loads(result.stdout)["weights"]
    assert weights.startswith("random, seed 0 (no checkpoint available: me/tiny-gpt2@main is not in")


def test_run_beam_search_gives_transformers_ids(tiny):
    """`zoo run gpt2 --beams 3`: the best hypothesis of transformers' beam search."""
    import torch
    from transformers import GPT2LMHeadModel

    ref = GPT2LMHeadModel.from_pretrained(str(tiny)).eval()
    result = invoke("run", str(tiny), "--ids", "5,6,7", "--beams", "3", "--max-new-tokens", "6", "--device", "cpu",
                    "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    want = ref.generate(torch.tensor([[5, 6, 7]]), num_beams=3, max_new_tokens=6, do_sample=False,
                        eos_token_id=None, pad_token_id=0)[0, 3:].tolist()
    assert data["generated_ids"] == want and data["beams"] == 3


@pytest.mark.parametrize("args, message", [
    (["--beams", "2", "--temperature", "0.7"], "--beams searches, it does not sample"),
    (["--top", "3"], "--top does not apply to text-generation (it applies to fill-mask, image-classification, text-classification"),
    (["--embed"], None),
])
def test_an_option_that_does_not_apply_is_an_error(tiny, args, message):
    result = invoke("run", str(tiny), "--ids", "1,2", "--max-new-tokens", "2", "--device", "cpu", *args)
    assert result.exit_code == 2, result.output
    if message:
        assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2


def test_zoo_processor_gives_the_checkpoints_tokenizer(tiny, tmp_path):
    import zoo

    folder = _with_tokenizer(tiny, tmp_path / "with-tok")
    tok = zoo.processor(str(folder))
    ids = tok("hello world")["input_ids"]
    assert ids and all(isinstance(i, int) for i in ids)
    result = json.loads(invoke("run", str(folder), "hello world", "--max-new-tokens", "2", "--device", "cpu",
                               "--json").stdout)
    assert result["input_ids"] == ids  # the tokenizer zoo run uses
