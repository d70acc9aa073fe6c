"""registry.toml validation: errors name the file, the table and the field."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zoo
from zoo.errors import RegistryError, UnknownModelError
from zoo.registry import get_catalog, parse_registry

GOOD = """
[models.m]
architecture = "gpt2"
converter = "hf_gpt2"
task = "text-generation"
config = { n_layer = 1 }
"""


@pytest.mark.parametrize(
    "text, message",
    [
        ("[models.m]\narchitecture='a'\ntask='t'\nconfig={}", "[models.m]: missing field 'converter'"),
        (GOOD + "archtecture = 'x'\n", "[models.m]: unknown field 'archtecture' (did you mean 'architecture'?)"),
        (GOOD.replace('task = "text-generation"', "task = 3"), "[models.m]: field 'task' must be str, got int"),
        (GOOD + "params = -1\n", "field 'params' must be positive"),
        (GOOD + "aliases = ['ok', 'bad name!']\n", "invalid alias 'bad name!'"),
        ("[modles.m]\n", "unknown top-level table [modles]"),
        ("[models\n", "not valid TOML"),
        ("models = 3\n", "[models] must be a table"),
    ],
)
def test_invalid_registry_names_file_table_and_field(text, message):
    with pytest.raises(RegistryError) as err:
        parse_registry(text, "cat.toml")
    assert str(err.value).startswith("cat.toml: ")
    assert message in str(err.value)


def test_zoo_registry_env_points_at_another_catalog(tmp_path, monkeypatch):
    path = tmp_path / "cat.toml"
    path.write_text(GOOD + "aliases = ['me/m']\n")
    monkeypatch.setenv("ZOO_REGISTRY", str(path))
    zoo.pluginmanager.reset()
    # the file replaces registry.toml; entries that installed plugins register stay
    from_file = [n for n in zoo.list_models() if zoo.get_entry(n).origin == str(path)]
    assert from_file == ["m"]
    assert all(zoo.get_entry(n).origin.startswith("plugin ") for n in zoo.list_models() if n != "m")
    assert zoo.get_entry("ME/M").name == "m"


def test_duplicate_alias_across_entries_is_an_error(tmp_path, monkeypatch):
    path = tmp_path / "cat.toml"
    path.write_text(GOOD + "aliases = ['gpt2']\n" + GOOD.replace("models.m", "models.gpt2"))
    monkeypatch.setenv("ZOO_REGISTRY", str(path))
    zoo.pluginmanager.reset()
    with pytest.raises(RegistryError, match=r"name 'gpt2' is already used by \[models.m\]"):
        get_catalog()


def test_unknown_name_suggests():
    with pytest.raises(UnknownModelError) as err:
        zoo.get_entry("gtp2")
    assert "did you mean 'gpt2'" in str(err.value) and "zoo list" in str(err.value)


def test_list_patterns_are_fnmatch_and_sorted():
    assert zoo.list_models("gpt2*") == sorted(zoo.list_models("gpt2*"))
    assert "gpt2-xl" in zoo.list_models("gpt2*") and "distilgpt2" not in zoo.list_models("gpt2*")
    assert "gpt2-xl" not in zoo.list_models("gpt2*", exclude="*xl")
    assert zoo.list_models("openai-community/gpt2") == ["gpt2"]  # aliases match too


toml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["models", "x"]), st.dictionaries(st.text(max_size=8), toml_values, max_size=3), max_size=2)
       | st.text(max_size=80))
def test_fuzzed_registry_gives_a_catalog_or_a_named_error(doc):
    """Any input: either a valid catalog or a RegistryError naming the file — never a traceback."""
    if isinstance(doc, str):
        text = doc
    else:
        import json

        lines = []
        for table, body in doc.items():
            for key, value in body.items():
                lines.append(f"[{table}.{json.dumps(key)}]")
                if isinstance(value, dict):
                    for k, v in value.items():
                        if v is not None:
                            lines.append(f"{json.dumps(k)} = {json.dumps(v)}")
        text = "\n".join(lines)
    try:
        entries = parse_registry(text, "fuzz.toml")
    except RegistryError as exc:
        assert str(exc).startswith("fuzz.toml: ")
    else:
        for e in entries:
            assert e.converter and isinstance(e.config, dict)


@pytest.mark.parametrize("table, message", [
    ("converter = 'hf_gtp2'\nconfig = {}", "field 'converter': no converter 'hf_gtp2' is registered"),
    ("converter = 'hf_gpt2'\narchitecture = 'bert'\nconfig = {}",
     "field 'architecture' is 'bert', but converter 'hf_gpt2' fills 'gpt2'"),
    ("converter = 'hf_gpt2'\ntask = 'fill-mask'\nconfig = {}", "field 'task' is 'fill-mask'; architecture 'gpt2' has"),
])
def test_cross_references_are_checked_when_the_catalog_is_read(table, message, tmp_path, monkeypatch):
    path = tmp_path / "cat.toml"
    path.write_text(f"[models.m]\n{table}\n")
    monkeypatch.setenv("ZOO_REGISTRY", str(path))
    with pytest.raises(RegistryError, match="cat.toml: \\[models.m\\]: ") as err:
        get_catalog()
    assert message in str(err.value)


def test_architecture_and_task_are_derived(tmp_path, monkeypatch):
    """An entry names its converter; the architecture is the converter's, the task the one its
    config's 'architectures' names (else the architecture's first)."""
    path = tmp_path / "cat.toml"
    path.write_text("[models.a]\nconverter = 'hf_bert'\nconfig = { architectures = ['BertModel'] }\n"
                    "[models.b]\nconverter = 'hf_gpt2'\nconfig = {}\n")
    monkeypatch.setenv("ZOO_REGISTRY", str(path))
    a, b = zoo.get_entry("a"), zoo.get_entry("b")
    assert (a.architecture, a.task) == ("bert", "feature-extraction")
    assert (b.architecture, b.task) == ("gpt2", "text-generation")
