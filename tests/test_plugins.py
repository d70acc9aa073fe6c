"""Plugin discovery: broken third-party plugins are reported and skipped, strict mode raises.

The throwaway plugins are real distributions (a dist-info folder with entry_points.txt on
sys.path), discovered through the same ``zoo`` entry-point group as the built-ins."""
from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

from zoo import pluginmanager
from zoo.cli import cli
from zoo.errors import PluginError
from zoo.registry import get_catalog


def install_plugin(tmp_path, monkeypatch, module: str, source: str, dist: str = "zoo-throwaway"):
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    info = tmp_path / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[zoo]\n{module} = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pluginmanager.reset()


BROKEN = {
    "fails_to_import": ("import no_such_module_anywhere\n", "failed to load: ModuleNotFoundError"),
    "hook_raises": (
        """
        from zoo import hookimpl
        @hookimpl
        def register_converters(register):
            raise RuntimeError("kaboom")
        """,
        "register_converters raised RuntimeError: kaboom",
    ),
    "duplicate": (
        """
        from zoo import hookimpl, Architecture
        @hookimpl
        def register_architectures(register):
            register(Architecture(name="gpt2", factory="x:y", tasks=("text-generation",)))
        """,
        "architecture 'gpt2' is already registered by plugin 'architectures' (zoo",
    ),
    "misspelled": (
        """
        from zoo import hookimpl
        @hookimpl
        def register_architecture(register):
            pass
        """,
        "implements an unknown hook",
    ),
    "garbage": (
        """
        from zoo import hookimpl
        @hookimpl
        def register_architectures(register):
            register("not an architecture")
        """,
        "not a zoo.types.Architecture",
    ),
    "exits_at_import": ("import sys\nsys.exit(0)\n", "failed to load: SystemExit: 0"),
    "hook_exits": (
        """
        import sys
        from zoo import hookimpl
        @hookimpl
        def register_models(register):
            sys.exit(3)
        """,
        "register_models raised SystemExit: 3",
    ),
    "returns_instead_of_registering": (
        """
        from zoo import hookimpl, Architecture
        @hookimpl
        def register_architectures(register):
            return [Architecture(name="mine", factory="x:y", tasks=("text-generation",))]
        """,
        "register_architectures returned [Architecture(name='mine'",
    ),
    "bad_model": (
        """
        from zoo import hookimpl
        @hookimpl
        def register_models(register):
            register({"name": "x-model", "architecture": "gpt2", "task": "text-generation"})
        """,
        "missing field 'converter'",
    ),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_plugin_is_reported_and_skipped(name, tmp_path, monkeypatch, capsys):
    source, message = BROKEN[name]
    install_plugin(tmp_path, monkeypatch, f"plug_{name}", source)
    catalog = get_catalog()
    assert "gpt2" in catalog.models and "hf_gpt2" in catalog.converters  # the rest still works
    info = pluginmanager.get_plugins().infos[f"plug_{name}"]
    assert info.distribution == "zoo-throwaway" and info.version == "0.1"
    assert any(message in e for e in info.errors), info.errors
    err = capsys.readouterr().err
    assert f"plugin 'plug_{name}' (zoo-throwaway 0.1)" in err and message in err
    assert len([line for line in err.splitlines() if f"plug_{name}" in line]) == 1

    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0 and message in result.output
    assert CliRunner().invoke(cli, ["list"]).exit_code == 0


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_strict_mode_turns_plugin_problems_into_errors(name, tmp_path, monkeypatch):
    source, message = BROKEN[name]
    install_plugin(tmp_path, monkeypatch, f"plug_{name}", source)
    monkeypatch.setenv("ZOO_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=f"plug_{name}"):
        get_catalog()
    result = CliRunner().invoke(cli, ["list"])
    assert result.exit_code == 2 and result.output.count("\n") == 1


def test_a_working_third_party_plugin_adds_models(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "plug_good", """
        from zoo import hookimpl
        @hookimpl
        def register_models(register):
            register({"name": "tiny-gpt2", "architecture": "gpt2", "converter": "hf_gpt2",
                      "task": "text-generation", "aliases": ["me/tiny-gpt2"],
                      "config": {"n_layer": 1, "n_embd": 8, "n_head": 2, "vocab_size": 10}})
        """, dist="zoo-good")
    catalog = get_catalog()
    assert catalog.get("me/tiny-gpt2").name == "tiny-gpt2"
    assert "plugin 'plug_good' (zoo-good 0.1)" in catalog.models["tiny-gpt2"].origin
    result = CliRunner().invoke(cli, ["list", "tiny*"])
    assert "tiny-gpt2" in result.output


def test_plugins_can_be_restricted_and_disabled(monkeypatch):
    monkeypatch.setenv("ZOO_PLUGINS", "hf_gpt2")
    pluginmanager.reset()
    assert set(pluginmanager.get_plugins().infos) == {"hf_gpt2"}
    monkeypatch.delenv("ZOO_PLUGINS")
    monkeypatch.setenv("ZOO_DISABLE_PLUGINS", "hf_gpt2")
    pluginmanager.reset()
    assert "hf_gpt2" not in pluginmanager.get_plugins().infos
    assert "architectures" in pluginmanager.get_plugins().infos


def test_builtins_are_ordinary_entry_points():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="zoo")}
    infos = pluginmanager.get_plugins().infos
    assert {"architectures", "hf_gpt2"} <= names
    assert all(infos[n].distribution == "zoo" for n in ("architectures", "hf_gpt2"))


def test_hookspecs_are_documented():
    from zoo import hookspecs

    for name in ("register_architectures", "register_converters", "register_models", "register_commands"):
        doc = getattr(hookspecs, name).__doc__
        assert doc and ":param" in doc, name


def test_plugin_commands_are_added(tmp_path, monkeypatch):
    import click

    install_plugin(tmp_path, monkeypatch, "plug_cmd", """
        import click
        from zoo import hookimpl
        @hookimpl
        def register_commands(cli):
            @cli.command(name="hello")
            def hello():
                click.echo("hello from a plugin")
        """)
    group = click.Group(commands=dict(cli.commands))
    pluginmanager.register_commands(group)
    result = CliRunner().invoke(group, ["hello"])
    assert result.output == "hello from a plugin\n"
