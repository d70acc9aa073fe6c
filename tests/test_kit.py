"""zoo.testing (the plugin kit) on the core's own plugins, and proof that each check fails on
the defect it exists to catch."""
from __future__ import annotations

import dataclasses
import types

import pytest

from zoo import Architecture, hookimpl, testing
from zoo.registry import get_catalog
from zoo.types import Transform

from conftest import converters


def _plugin(**hooks):
    return types.SimpleNamespace(**{name: hookimpl(fn) for name, fn in hooks.items()})


@pytest.mark.parametrize("conv", converters(), ids=lambda c: c.name)
def test_every_architecture_passes_the_kit(conv):
    testing.check_architecture(conv.architecture, conv.architecture_config(conv.tiny_config))


@pytest.mark.parametrize("conv", converters(), ids=lambda c: c.name)
def test_every_config_translation_inverts(conv):
    testing.check_config_translation(conv)


def test_a_whole_converter_passes_the_kit():
    testing.check_converter("hf_gpt2")


def test_installed_plugins_pass_check_plugin():
    import zoo.converters.hf_bert
    import zoo.plugins

    testing.check_plugin(zoo.plugins)
    testing.check_plugin(zoo.converters.hf_bert)


@pytest.mark.parametrize("entry", ["gpt2", "bert-base-uncased", "vit-base-patch16-224"])
def test_catalog_entries_pass(entry):
    assert testing.check_catalog_entry(entry) == get_catalog().get(entry).params


def _arch(name):
    return Architecture(name=name, factory="zoo.plugins.gpt2:from_config", tasks=("text-generation",))


BROKEN_PLUGINS = {
    "hook typo": (_plugin(register_architecture=lambda register: None), "register_architecture"),
    "bad argument name": (_plugin(register_models=lambda reg: None), "reg"),
    "taken by another plugin": (_plugin(register_architectures=lambda register: register(_arch("gpt2"))),
                                "already registered by plugin 'architectures'"),
    "twice in one plugin": (_plugin(register_architectures=lambda register: [register(_arch("x")), register(_arch("x"))]),
                            "more than once"),
    "model name taken": (_plugin(register_models=lambda register: register(
        {"name": "gpt2-small", "architecture": "gpt2", "converter": "hf_gpt2", "task": "text-generation", "config": {}})),
        "already used by [models.gpt2]"),
    "wrong type": (_plugin(register_converters=lambda register: register("hf_x")), "not a zoo.types.Converter"),
    "unknown architecture": (_plugin(register_models=lambda register: register(
        {"name": "new-one", "architecture": "gtp2", "converter": "hf_gpt2", "task": "text-generation", "config": {}})),
        "unknown architecture 'gtp2'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_PLUGINS))
def test_check_plugin_catches(case):
    plugin, message = BROKEN_PLUGINS[case]
    with pytest.raises(AssertionError) as err:
        testing.check_plugin(plugin)
    assert message in str(err.value)


def _gpt2_with(**changes):
    return dataclasses.replace(get_catalog().converter("hf_gpt2"), **changes)


def test_broken_converters_are_caught():
    conv = get_catalog().converter("hf_gpt2")
    missing = _gpt2_with(key_map=tuple(m for m in conv.key_map if m.source != "ln_f.bias"))
    with pytest.raises(AssertionError, match="ln_f.bias"):
        testing.check_key_accounting(missing, layouts=("hub",))

    no_transpose = _gpt2_with(key_map=tuple(
        dataclasses.replace(m, transform=None) if m.source == "h.{}.attn.c_proj.weight" else m for m in conv.key_map))
    with pytest.raises(AssertionError, match="does not match its reference"):
        testing.check_parity(no_transpose, layouts=("hub",))

    t = next(m.transform for m in conv.key_map if m.transform)
    bad_inverse = Transform("transpose, bad inverse", t.forward, lambda w: w.t().flip(0), t.doc)
    wrong = _gpt2_with(key_map=tuple(
        dataclasses.replace(m, transform=bad_inverse) if m.transform else m for m in conv.key_map))
    with pytest.raises(AssertionError, match="differs after the round trip"):
        testing.check_round_trip(wrong)


def test_wrong_param_count_is_caught():
    entry = dataclasses.replace(get_catalog().get("distilgpt2"), params=1)
    with pytest.raises(AssertionError, match="params = 1"):
        testing.check_catalog_entry(entry)


def test_architecture_that_computes_weights_in_init_is_caught(tmp_path, monkeypatch):
    (tmp_path / "eager_model.py").write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.w = torch.nn.Parameter(torch.ones(2, device='cpu'))\n"
        "def build(config, task):\n"
        "    return M()\n"
        "def inputs(config, task, b, s, g):\n"
        "    return {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    arch = Architecture(name="eager", factory="eager_model:build", tasks=("x",), example_inputs="eager_model:inputs")
    with pytest.raises(AssertionError, match="meta device"):
        testing.check_architecture(arch, {})


def test_scaffolded_plugin_passes_its_own_tests(tmp_path):
    """`zoo plugin new` writes a package that, put on sys.path with a dist-info (as pip would
    install it), is discovered through its entry point and passes its generated tests."""
    import os
    import subprocess
    import sys

    from click.testing import CliRunner

    from zoo.cli import cli

    result = CliRunner().invoke(cli, ["plugin", "new", "tinymlp", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    pkg = tmp_path / "zoo-tinymlp"
    assert (pkg / "pyproject.toml").is_file() and (pkg / "tests" / "test_plugin.py").is_file()
    again = CliRunner().invoke(cli, ["plugin", "new", "tinymlp", "--dir", str(tmp_path)])
    assert again.exit_code == 2 and "--force" in again.output

    site = tmp_path / "site"
    info = site / "zoo_tinymlp-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-tinymlp\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[zoo]\ntinymlp = zoo_tinymlp\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pkg), str(site)]), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg / "tests")],
                         capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "4 passed" in run.stdout
    listed = subprocess.run([sys.executable, "-m", "zoo.cli", "plugins"], capture_output=True, text=True, env=env)
    assert "zoo-tinymlp 0.1.0" in listed.stdout, listed.stdout + listed.stderr
    # the commands the package's README gives, as a plugin author runs them
    readme = (pkg / "README.md").read_text()
    commands = [line.split("#")[0].split() for line in readme.splitlines() if line.strip().startswith("zoo ")]
    assert [c[:2] for c in commands] == [["zoo", "plugins"], ["zoo", "verify"], ["zoo", "run"]], commands
    for command in commands:
        ran = subprocess.run([sys.executable, "-m", "zoo", *command[1:]], capture_output=True, text=True, env=env,
                             cwd=str(tmp_path))
        assert ran.returncode == 0, (command, ran.stdout[-2000:], ran.stderr[-2000:])


def test_docs_cover_every_hookspec_and_parameter():
    """docs/plugins.md cannot drift from zoo/hookspecs.py: every hook is documented under its
    own heading with its exact signature."""
    import inspect
    from pathlib import Path

    from zoo import hookspecs

    doc = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    specs = [f for name, f in vars(hookspecs).items()
             if callable(f) and hasattr(f, hookspecs.hookspec.project_name + "_spec")]
    assert len(specs) >= 4
    for fn in specs:
        params = ", ".join(inspect.signature(fn).parameters)
        assert f"### `{fn.__name__}({params})`" in doc, f"docs/plugins.md lacks {fn.__name__}({params})"
    for name in ("check_plugin", "check_architecture", "check_key_accounting", "check_parity",
                 "check_round_trip", "check_catalog_entry"):
        assert f"`{name}`" in doc and hasattr(testing, name), name


# ----------------------------------------------------------------------------- comparing outputs


def _outputs(**fields):
    from zoo.outputs import ModelOutput

    return ModelOutput(**fields)


def test_outputs_are_compared_at_real_positions_only():
    """Per-position outputs [B, T, ...] are compared where attention_mask is 1: a difference at
    a padding position is ignored, one at a real position is caught; [B, H] outputs (a pooler)
    are compared whole even when H happens to equal T."""
    import torch

    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    gen = torch.Generator().manual_seed(0)
    ref = _outputs(logits=torch.randn(2, 4, 5, generator=gen), pooler_output=torch.randn(2, 4, generator=gen),
                   hidden_states=(torch.randn(2, 4, 3, generator=gen),))
    inputs = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": mask}
    ours = _outputs(logits=ref.logits.clone(), pooler_output=ref.pooler_output.clone(),
                    hidden_states=(ref.hidden_states[0].clone(),))
    ours.logits[mask == 0] = 0  # padding: meaningless, not compared
    ours.hidden_states[0][mask == 0] = 7.0
    assert testing.assert_outputs_close(ours, ref, inputs) == ["logits", "pooler_output", "hidden_states[0]"]

    for name, where in [("logits", (1, 1)), ("hidden_states[0]", (0, 2)), ("pooler_output", (1, 0))]:
        bad = _outputs(logits=ours.logits.clone(), pooler_output=ours.pooler_output.clone(),
                       hidden_states=(ours.hidden_states[0].clone(),))
        target = bad.hidden_states[0] if name.startswith("hidden") else getattr(bad, name)
        target[where] += 1.0  # a real position (or the pooled output)
        with pytest.raises(AssertionError, match=rf"^{name.replace('[', '.').replace(']', '.')}"):
            testing.assert_outputs_close(bad, ref, inputs)


def test_verify_compares_real_positions_and_decoder_outputs_whole():
    """verify's comparison: the input's mask for an encoder's outputs; an encoder-decoder's
    outputs are decoder positions, so the encoder's attention_mask does not apply to them."""
    import torch

    from zoo.verification import _compare, output_mask

    mask = torch.tensor([[1, 1, 0]])
    ref = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(0))
    ours = ref.clone()
    ours[0, 2] += 5.0  # at the padding position only
    assert _compare("logits", ours, ref, torch.float32, output_mask({"attention_mask": mask})).passed
    assert not _compare("logits", ours, ref, torch.float32).passed
    seq2seq = {"input_ids": torch.ones(1, 3), "attention_mask": mask, "decoder_input_ids": torch.ones(1, 3)}
    assert output_mask(seq2seq) is None
    assert not _compare("logits", ours, ref, torch.float32, output_mask(seq2seq)).passed
    ours[0, 2] -= 5.0
    ours[0, 1] += 5.0  # a real position
    assert not _compare("logits", ours, ref, torch.float32, output_mask({"attention_mask": mask})).passed


# ----------------------------------------------------------------------------- a third-party task


def _doc_task_plugin(tmp_path, monkeypatch):
    """The next-token plugin exactly as docs/plugins.md shows it, as an importable package."""
    import importlib
    import re
    from pathlib import Path

    from zoo import pluginmanager

    doc = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    section = doc[doc.index("### `register_tasks(register)`"):doc.index("### `register_commands(cli)`")]
    init, run = re.findall(r"```python\n(.*?)```", section, re.S)
    pkg = tmp_path / "zoo_nexttoken"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(init)
    (pkg / "run.py").write_text(run)
    monkeypatch.syspath_prepend(str(tmp_path))
    pluginmanager.add_plugin(importlib.import_module("zoo_nexttoken"), "nexttoken")


def test_a_third_party_task_runs_end_to_end(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from conftest import write_checkpoint
    from zoo.cli import cli

    _doc_task_plugin(tmp_path, monkeypatch)
    write_checkpoint(get_catalog().converter("hf_gpt2"), tmp_path / "tiny")
    result = testing.check_task("next-token", str(tmp_path / "tiny"), ids=[1, 2, 3], top=3)
    assert len(result["next_tokens"]) == 3
    out = CliRunner().invoke(cli, ["run", str(tmp_path / "tiny"), "--task", "next-token", "--ids", "1,2,3",
                                   "--top", "2", "--device", "cpu", "--json"])
    assert out.exit_code == 0, out.output
    assert len(json.loads(out.stdout)["next_tokens"]) == 2
    out = CliRunner().invoke(cli, ["run", str(tmp_path / "tiny"), "--task", "next-token", "--ids", "1", "--beams", "2"])
    assert out.exit_code == 2 and "--beams does not apply to next-token" in out.output


def test_check_task_catches_a_runner_that_returns_no_dict(tmp_path):
    from zoo import Task, pluginmanager
    from conftest import write_checkpoint

    pluginmanager.add_plugin(_plugin(register_tasks=lambda register: register(
        Task("broken", "builtins:print", builds="text-generation"))), "broken")
    write_checkpoint(get_catalog().converter("hf_gpt2"), tmp_path / "tiny")
    with pytest.raises(AssertionError, match="not a dict"):
        testing.check_task("broken", str(tmp_path / "tiny"))
