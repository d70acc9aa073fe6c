"""The README stays true: its CLI synopsis names every option each command has, and nothing
the commands lack."""
from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from zoo.cli import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
SYNOPSIS = README[README.index("## The CLI"):]
SYNOPSIS = SYNOPSIS[SYNOPSIS.index("```"):SYNOPSIS.index("```", SYNOPSIS.index("```") + 3)]


def _commands(group: click.Group, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))
        else:
            yield " ".join(prefix + (name,)), cmd


COMMANDS = dict(_commands(cli))


def _lines_of(command: str) -> str:
    """The synopsis lines of one command: its first line and the indented ones after it."""
    lines = SYNOPSIS.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"zoo {command} ") or line == f"zoo {command}")
    block = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith(" "):
            break
        block.append(line)
    return "\n".join(block)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_synopsis_names_every_option(command):
    text = _lines_of(command)
    for param in COMMANDS[command].params:
        if isinstance(param, click.Option) and not param.hidden:
            longest = max(param.opts, key=len)
            if longest == "--help":
                continue
            assert re.search(re.escape(longest) + r"\b", text), f"README: `zoo {command}` lacks {longest}"


def test_the_synopsis_names_no_option_that_does_not_exist():
    for command in COMMANDS:
        named = set(re.findall(r"(--[a-z][a-z-]*)", _lines_of(command).split("#")[0]))
        real = {o for p in COMMANDS[command].params for o in getattr(p, "opts", [])}
        assert named <= real | {"--help"}, f"README: `zoo {command}` names {sorted(named - real)}"


# ----------------------------------------------------------------------------- every command runs

README_MODELS = {"gpt2": "hf_gpt2", "bert-base-uncased": "hf_bert", "vit-base-patch16-224": "hf_vit",
                 "opus-mt-en-de": "hf_marian"}
ROOM = {"n_positions": 128}  # the tiny GPT-2 reads a prompt and zoo run's default continuation
REVISION = "a" * 40


def _readme_model(conv, folder):
    """A tiny random checkpoint of ``conv`` in ``folder``, with a tokenizer trained in code when
    the format has one (a vocabulary of 512 ids leaves room for it); returns its config."""
    import json as _json

    from zoo.randomweights import write

    config = {k: v for k, v in conv.tiny_config.items()}
    config.update({k: v for k, v in ROOM.items() if k in config})
    if conv.tokenizer:
        config[conv.tokenizer["vocab_size"]] = 512
        for field in ("pad_token_id", "decoder_start_token_id"):
            if field in config:
                config[field] = 511
    task = next(iter(conv.tasks.values()))
    write(conv, config, task, 0, folder)
    return _json.loads((folder / "config.json").read_text())


def _into_cache(cache, repo_id, folder):
    """``folder``'s files as the Hugging Face cache holds a download: blobs named by their
    sha256, linked from the snapshot of ``REVISION``."""
    import hashlib

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / REVISION
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / path.name).symlink_to(blob)


FINE_TUNED = {"bert-sst2": ("BertForSequenceClassification", {"id2label": {0: "NEGATIVE", 1: "POSITIVE"}}),
              "bert-ner": ("BertForTokenClassification", {"id2label": {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC",
                                                                          4: "I-LOC"}}),
              "bert-squad": ("BertForQuestionAnswering", {})}


def _fine_tuned_folders(root):
    """The README's fine-tuned BERT folders (./bert-sst2, ...): tiny random models saved by
    transformers, with a tokenizer trained in code."""
    import torch
    import transformers

    from zoo import tinytokenizer
    from zoo.registry import get_catalog

    conv = get_catalog().converter("hf_bert")
    config = {**conv.tiny_config, "vocab_size": 512}
    for name, (cls, extra) in FINE_TUNED.items():
        torch.manual_seed(0)
        model = getattr(transformers, cls)(transformers.BertConfig(**config, **extra))
        model.save_pretrained(str(root / name))
        tinytokenizer.write(root / name, conv.tokenizer, config)


@pytest.fixture(scope="module")
def readme_world(tmp_path_factory):
    """The README's models under the README's names: a catalog of tiny entries whose weights
    (and tokenizers) sit in a prepared Hugging Face cache, as after a download. The commands
    then run verbatim, offline, through the real path (catalog, cache, checks, load)."""
    import json as _json

    from zoo.registry import get_catalog

    root = tmp_path_factory.mktemp("readme")
    cache, lines = root / "hub", []
    for name, conv_name in README_MODELS.items():
        conv = get_catalog().converter(conv_name)
        folder = root / "models" / name
        folder.mkdir(parents=True)
        config = _readme_model(conv, folder)
        _into_cache(cache, f"readme/{name}", folder)
        keep = {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))}
        body = ", ".join(f"{k} = {_json.dumps(v)}" for k, v in keep.items())
        lines.append(f"[models.{name}]\nconverter = '{conv_name}'\nrepo = 'readme/{name}'\n"
                     f"revision = '{REVISION}'\nconfig = {{ {body} }}\n")
        if conv_name == "hf_vit":
            size = config["image_size"]
            lines.append(f"preprocessing = {{ size = {{ height = {size}, width = {size} }}, "
                         f"image_mean = [0.5, 0.5, 0.5], image_std = [0.5, 0.5, 0.5] }}\n")
    (root / "catalog.toml").write_text("\n".join(lines))
    _fine_tuned_folders(root)
    from PIL import Image

    Image.linear_gradient("L").convert("RGB").save(root / "cat.jpg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZOO_REGISTRY", str(root / "catalog.toml"))
        mp.setenv("HF_HUB_CACHE", str(cache))
        mp.chdir(root)
        yield root


def _table_commands():
    return re.findall(r"`(zoo run [^`]+)`", README[:README.index("## The CLI")])


@pytest.mark.parametrize("command", _table_commands())
def test_every_command_of_the_catalog_table_runs(command, readme_world):
    import shlex

    args = shlex.split(command)[1:]
    result = CliRunner().invoke(cli, [*args, "--device", "cpu", "--json"])
    assert result.exit_code == 0, f"README: `{command}` fails: {result.output}"
    assert json.loads(result.stdout)["model"] == args[1].removeprefix("./"), command


def test_the_python_example_runs(readme_world, capsys):
    """The README's Python section, run as written (a complete program from text to output)."""
    start = README.index("```python", README.index("## The Python API"))
    code = README[start + len("```python"):README.index("```", start + 3)]
    namespace = {}
    exec(compile(code, "README.md (Python)", "exec"), namespace)
    assert namespace["report"].passed
    assert capsys.readouterr().out.strip()  # the decoded continuation was printed
