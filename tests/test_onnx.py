"""``zoo convert --to onnx``: for every registered converter and each of its tasks, the graph run
in ONNX Runtime on inputs of a shape it was not recorded with (padding included) gives
transformers' outputs on the same weights; a graph that computes something else, or takes one
shape only, is refused with nothing written."""
from __future__ import annotations

import json
import sys

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from zoo import testing  # noqa: E402
from zoo.cli import cli  # noqa: E402
from zoo.loading import load_full  # noqa: E402
from zoo.onnxexport import OnnxExportError, example_inputs, export_onnx, session  # noqa: E402
from zoo.outputs import ModelOutput  # noqa: E402
from zoo.randomweights import write as write_random  # noqa: E402

from conftest import converters, digest  # noqa: E402

CASES = [(conv, task) for conv in converters() for task in dict.fromkeys(conv.tasks.values())]


def write_hf(conv, task, folder):
    """A random transformers model of ``conv`` for ``task`` saved in the Hub layout; returned."""
    folder.mkdir(parents=True)
    return write_random(conv, dict(conv.tiny_config), task, 0, folder)


def run_graph(folder, inputs):
    """The exported graph in ONNX Runtime: its outputs by name, as a ModelOutput."""
    graph = session(folder / "model.onnx")
    names = [o.name for o in graph.get_outputs()]
    values = graph.run(names, {k: v.numpy() for k, v in inputs.items()})
    return ModelOutput(**{n: torch.from_numpy(v) for n, v in zip(names, values)})


@pytest.mark.parametrize("conv, task", CASES, ids=[f"{c.name}-{t}" for c, t in CASES])
def test_the_graph_gives_transformers_outputs_on_other_shapes(conv, task, tmp_path):
    ref = write_hf(conv, task, tmp_path / "hf")
    before = digest(tmp_path / "hf")
    result = export_onnx(str(tmp_path / "hf"), tmp_path / "onnx", task=task)
    assert {"model.onnx", "onnx.json", "config.json"} <= set(result.files)
    meta = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    assert meta["task"] == task and meta["converter"] == conv.name
    assert all(d <= 1e-4 for d in meta["parity"]["max_abs_diff"].values()), meta["parity"]
    loaded = load_full(str(tmp_path / "hf"), device="cpu", fast=False, task=task)
    inputs = example_inputs(loaded, 4, 7, seed=5)  # neither the recorded (2, 16) nor the checked (3, 11) shape
    assert list(inputs) == list(meta["inputs"])
    with torch.no_grad():
        theirs = ref.eval()(**inputs)
    ours = run_graph(tmp_path / "onnx", inputs)
    compared = testing.assert_outputs_close(ours, theirs, inputs, atol=1e-4, rtol=1e-4)
    assert {"logits", "start_logits", "last_hidden_state"} & set(compared)
    assert digest(tmp_path / "hf") == before, "export must not modify its input"


def _tiny_bert(tmp_path):
    from zoo.registry import get_catalog

    conv = get_catalog().converter("hf_bert")
    write_hf(conv, "fill-mask", tmp_path / "hf")
    return tmp_path / "hf"


def test_a_graph_that_computes_something_else_is_refused_and_nothing_written(tmp_path, monkeypatch):
    """A model that, traced, computes other values than it does eagerly (a value-dependent
    branch recorded one way): the check in ONNX Runtime names the output, and --out stays absent."""
    from zoo.plugins import bert

    folder = _tiny_bert(tmp_path)
    heads = bert.Bert.heads

    def traced_differently(self, *args, **kwargs):
        out = heads(self, *args, **kwargs)
        if torch.compiler.is_exporting():
            out.logits = out.logits * 1.01
        return out

    monkeypatch.setattr(bert.Bert, "heads", traced_differently)
    with pytest.raises(OnnxExportError, match=r"the exported graph's logits differs from the model's by up to"):
        export_onnx(str(folder), tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary folder left either


def test_a_graph_of_one_shape_is_refused(tmp_path, monkeypatch):
    from zoo import onnxexport

    folder = _tiny_bert(tmp_path)
    monkeypatch.setattr(onnxexport, "_dynamic_shapes", lambda inputs: None)  # the recorded shape only
    with pytest.raises(OnnxExportError, match=r"refuses inputs of another shape \(input_ids \[3, 11\]"):
        export_onnx(str(folder), tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_cli_errors_are_one_line(tmp_path, monkeypatch):
    folder = _tiny_bert(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep me")
    result = CliRunner().invoke(cli, ["convert", str(folder), "--to", "onnx", "--out", str(tmp_path / "taken")])
    assert result.exit_code == 2 and "exists and is not empty" in result.output
    result = CliRunner().invoke(cli, ["convert", str(folder), "--to", "onnx", "--out", str(tmp_path / "taken"),
                                      "--force"])  # --force replaces only what zoo wrote
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["mine.txt"]
    result = CliRunner().invoke(cli, ["convert", "transformer-base", "--to", "onnx", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "names no weights to export" in result.output
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    result = CliRunner().invoke(cli, ["convert", str(folder), "--to", "onnx", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "pip install 'zoo[onnx]'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


def test_a_trained_annotated_transformer_exports(tmp_path):
    """The Annotated Transformer (no transformers class): a folder zoo train wrote exports, and
    the graph gives the eager model's outputs."""
    import zoo

    zoo.train("transformer-base", task="copy", out=str(tmp_path / "trained"), steps=2, batch_size=4,
              config={"N": 1, "d_model": 16, "d_ff": 32, "heads": 2, "src_vocab": 11, "tgt_vocab": 11, "dropout": 0})
    result = export_onnx(str(tmp_path / "trained"), tmp_path / "onnx")
    assert "config.json" not in result.files  # no transformers format: the config is in onnx.json
    meta = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    assert meta["config"]["d_model"] == 16 and meta["cache"].startswith("none")
    loaded = load_full(str(tmp_path / "trained"), device="cpu", fast=False)
    inputs = example_inputs(loaded, 2, 5, seed=3)
    with torch.no_grad():
        want = loaded.model(**inputs)
    testing.assert_outputs_close(run_graph(tmp_path / "onnx", inputs), want, inputs, atol=1e-4, rtol=1e-4)
