"""zoo-distilbert's own tests: zoo's plugin kit (zoo.testing) run on this plugin, plus the
command line a user would type once the package is installed. No network."""
import json
import os
import subprocess
import sys

import pytest
import torch

import zoo_distilbert
from zoo import testing
from zoo.errors import ConfigError, InputError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONFIG = zoo_distilbert.CONVERTER.tiny_config


def test_plugin_hooks_names_and_references():
    got = testing.check_plugin(zoo_distilbert)
    assert [a.name for a in got["architecture"]] == ["distilbert"]


def test_architecture_builds_and_runs_for_every_task():
    testing.check_architecture("distilbert", CONFIG)


@pytest.mark.parametrize("task", ["fill-mask", "feature-extraction"])
def test_converter(task):
    testing.check_key_accounting(zoo_distilbert.CONVERTER, task=task)
    testing.check_parity(zoo_distilbert.CONVERTER, task=task)
    testing.check_round_trip(zoo_distilbert.CONVERTER, task=task)


def test_catalog_entry():
    assert testing.check_catalog_entry("distilbert-base-uncased") == 66985530
    assert testing.check_catalog_entry("distilbert/distilbert-base-uncased") == 66985530


@pytest.mark.parametrize("field,value", [("activation", "swish"), ("dim", 30), ("n_layers", 0),
                                         ("tie_weights_", False), ("model_type", "bert")])
def test_unsupported_config_is_named(field, value):
    from zoo_distilbert.model import from_config

    with pytest.raises(ConfigError, match=field):
        from_config({**CONFIG, field: value}, "fill-mask")


def test_bad_input_is_named():
    from zoo_distilbert.model import from_config

    model = from_config(CONFIG, "feature-extraction")
    for bad in (torch.zeros(1, 0, dtype=torch.long), torch.full((1, 3), 99), torch.zeros(1, 65, dtype=torch.long)):
        with pytest.raises(InputError):
            model(bad)


def _zoo(*args):
    zoo = os.path.join(os.path.dirname(sys.executable), "zoo")
    return subprocess.run([zoo, *args], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_installed_cli_lists_the_plugin_and_its_model():
    plugins = json.loads(_zoo("plugins", "--json").stdout)
    mine = [p for p in plugins if p["name"] == "distilbert"]
    assert mine and mine[0]["distribution"] == "zoo-distilbert" and mine[0]["version"] == "0.1.0"
    assert not mine[0]["errors"]
    assert "distilbert-base-uncased" in _zoo("list", "distil*").stdout
