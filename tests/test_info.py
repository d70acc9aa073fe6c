"""`zoo info` on a checkpoint folder: architecture, task, config, tensors, sizes and the key
accounting of the task asked for; folders zoo cannot read get one line saying what to do."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from zoo.cli import cli
from zoo.registry import get_catalog

from conftest import converters, write_checkpoint


def _info(*args):
    result = CliRunner().invoke(cli, ["info", *[str(a) for a in args]])
    return result.exit_code, result.stdout, result.output


@pytest.mark.parametrize("conv", converters(), ids=lambda c: c.name)
def test_info_describes_a_checkpoint_folder(conv, tmp_path):
    from zoo.checkpoint import read_safetensors

    write_checkpoint(conv, tmp_path)
    code, out, output = _info(tmp_path, "--json")
    assert code == 0, output
    data = json.loads(out)
    tensors = read_safetensors(tmp_path / "model.safetensors")
    assert data["converter"] == conv.name and data["architecture"] == conv.architecture
    assert data["task"] in data["tasks"] and data["tensors"] == len(tensors)
    assert data["tensor_bytes"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert data["size_on_disk"] == (tmp_path / "model.safetensors").stat().st_size
    acc = data["accounting"]
    assert acc["loads"] and acc["loaded"] + sum(acc["dropped"].values()) == len(tensors)
    assert data["params"] > 0 and data["config"]["model_type"] == json.loads((tmp_path / "config.json").read_text())["model_type"]
    code, text, _ = _info(tmp_path)
    assert code == 0 and f"{len(tensors)} (" in text and "tensors load" in text
    if json.loads((tmp_path / "config.json").read_text()).get("id2label"):  # a classifier names its labels
        assert data["labels"]["source"] == "id2label of config.json"


def test_info_says_where_a_catalog_classifiers_labels_come_from():
    code, out, _ = _info("vit-base-patch16-224", "--json")
    assert code == 0 and json.loads(out)["labels"] == {
        "count": 1000, "source": "none named: LABEL_0 .. LABEL_999 (the checkpoint's config.json names them once downloaded)"}


def test_info_for_another_task_says_what_would_be_dropped(tmp_path):
    """A BERT pretraining folder described for feature-extraction: the MLM head dropped by its
    named rule, as loading would."""
    conv = get_catalog().converter("hf_bert")
    write_checkpoint(conv, tmp_path)
    code, out, output = _info(tmp_path, "--task", "feature-extraction", "--json")
    assert code == 0, output
    dropped = json.loads(out)["accounting"]["dropped"]
    assert any("MLM head" in why for why in dropped), dropped
    code, _, output = _info(tmp_path, "--task", "translation")
    assert code == 2 and "has no task 'translation'" in output


def test_info_of_a_catalog_name_imports_no_torch():
    import subprocess
    import sys

    code = "import sys; from zoo.cli import cli; cli(['info', 'gpt2'], standalone_mode=False); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("False")


@pytest.mark.parametrize("name, framework, flag", [("tf_model.h5", "TensorFlow", "from_tf"),
                                                   ("flax_model.msgpack", "Flax", "from_flax")])
def test_a_folder_of_another_framework_says_how_to_convert_it(name, framework, flag, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    (tmp_path / name).write_bytes(b"\0" * 16)
    for command in (["info"], ["run", "--ids", "1,2"]):
        result = CliRunner().invoke(cli, [command[0], str(tmp_path), *command[1:]])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert framework in lines[0] and name in lines[0] and f"BertForMaskedLM.from_pretrained(folder, {flag}=True)" in lines[0]


def test_fields_the_reference_ignores_are_listed_by_info_and_verify(tmp_path):
    """A newer OPUS config sets fields transformers' Marian reads but ignores: zoo loads them
    the same way and says so, in `zoo info` and in `zoo verify`'s report."""
    conv = get_catalog().converter("hf_marian")
    write_checkpoint(conv, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "normalize_before": False,
                                                      "static_position_embeddings": True}))
    code, out, output = _info(tmp_path, "--json")
    assert code == 0, output
    assert set(json.loads(out)["ignored_fields"]) == {"normalize_before", "static_position_embeddings"}
    result = CliRunner().invoke(cli, ["verify", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "ignored    normalize_before = false:" in result.output


@pytest.mark.parametrize("id2label", [{"0": "NEG", "2": "POS"}, {"zero": "NEG"}, {"0": 3}])
def test_id2label_with_missing_ids_is_one_line_naming_the_file(id2label, tmp_path):
    write_checkpoint(get_catalog().converter("hf_vit"), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "id2label": id2label, "num_labels": len(id2label)}))
    result = CliRunner().invoke(cli, ["run", str(tmp_path), "x.png"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "config.json" in lines[0] and "field id2label must be an object naming every label id" in lines[0]
