"""The task a checkpoint is loaded as: its config's `architectures` by default; `--task` /
`task=` choose another one (the body alone, or a head the weights have) in every command."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import zoo
from zoo.cli import cli
from zoo.errors import ConversionError
from zoo.registry import get_catalog

from conftest import write_checkpoint


@pytest.fixture(scope="module")
def vit_classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit-classifier")
    write_checkpoint(get_catalog().converter("hf_vit"), folder)  # ViTForImageClassification
    assert zoo.load(str(folder), device="cpu") is not None
    return folder


@pytest.fixture(scope="module")
def vit_body(tmp_path_factory):
    import torch
    from transformers import ViTConfig, ViTModel

    conv = get_catalog().converter("hf_vit")
    folder = tmp_path_factory.mktemp("vit-body")
    torch.manual_seed(0)
    model = ViTModel(ViTConfig(**{k: v for k, v in conv.tiny_config.items() if k != "architectures"}))
    model.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("command", [["verify"], ["bench", "--repeats", "1", "--seq", "4"], ["info"]])
def test_every_command_takes_task(command, vit_classifier, tmp_path):
    """A classifier folder as its body (image-feature-extraction): the head is dropped by its
    named rule, and verify compares with the matching class (ViTModel)."""
    result = CliRunner().invoke(cli, [command[0], str(vit_classifier), *command[1:], "--task",
                                      "image-feature-extraction", "--device", "cpu", "--json"]
                                if command[0] != "info" else
                                ["info", str(vit_classifier), "--task", "image-feature-extraction", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["task"] == "image-feature-extraction"
    if command[0] == "verify":
        assert data["passed"]


def test_convert_takes_task(vit_classifier, tmp_path):
    from transformers import ViTModel

    result = CliRunner().invoke(cli, ["convert", str(vit_classifier), "--to", "hf", "--out", str(tmp_path / "out"),
                                      "--task", "image-feature-extraction"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == ["ViTModel"]
    # a classifier's body has no pooler (the classifier replaced it): transformers loads it so
    model, info = ViTModel.from_pretrained(str(tmp_path / "out"), add_pooling_layer=False, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_a_head_the_checkpoint_lacks_names_the_keys_and_the_task_it_has(vit_body):
    with pytest.raises(ConversionError) as err:
        zoo.load(str(vit_body), device="cpu", task="image-classification")
    message = str(err.value)
    assert "classifier.weight" in message and "image-feature-extraction checkpoint" in message
    assert "--task image-feature-extraction" in message
    result = CliRunner().invoke(cli, ["run", str(vit_body), "--task", "image-classification", "x.png"])
    assert result.exit_code == 2


def test_an_unknown_task_is_refused_by_every_command(vit_classifier, tmp_path):
    for args in (["verify", str(vit_classifier)], ["info", str(vit_classifier)],
                 ["convert", str(vit_classifier), "--to", "hf", "--out", str(tmp_path / "o")]):
        result = CliRunner().invoke(cli, [*args, "--task", "translation"])
        assert result.exit_code == 2 and "has no task 'translation'" in result.output, (args, result.output)


@pytest.mark.parametrize("keyword, hint", [("dtyp", "dtype"), ("n_layers", "n_layer"), ("num_heads", "n_head"),
                                           ("hidden_size", None)])
def test_a_keyword_zoo_load_does_not_take_is_an_error_naming_the_nearest(keyword, hint, tmp_path):
    """zoo.load's keywords beyond its own are config fields the converter reads; anything else
    (a typo, another family's field) is an error, never a value ignored."""
    from zoo.errors import InputError

    write_checkpoint(get_catalog().converter("hf_gpt2"), tmp_path)
    with pytest.raises(InputError) as err:
        zoo.load(str(tmp_path), device="cpu", **{keyword: 7})
    message = str(err.value)
    assert f"unexpected keyword {keyword!r}" in message and "n_layer" in message  # the fields it takes
    if hint:
        assert f"did you mean {hint!r}" in message
    model = zoo.load(str(tmp_path), device="cpu", layer_norm_epsilon=1e-3)  # a field it reads: taken
    assert model.config.norm_eps == 1e-3
