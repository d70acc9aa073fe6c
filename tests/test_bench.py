"""zoo bench: the report is complete and the decode comparison checks token identity.
(No timing is asserted: benchmarks are measured, not tested.)"""
from __future__ import annotations

import pytest

import json

from click.testing import CliRunner

from zoo.bench import bench
from zoo.cli import cli
from zoo.registry import get_catalog

from conftest import write_checkpoint


def test_bench_compare_on_a_tiny_gpt2(tmp_path):
    write_checkpoint(get_catalog().converter("hf_gpt2"), tmp_path)
    report = bench(str(tmp_path), device="cpu", seq=16, new_tokens=8, repeats=2, compare=True)
    names = [s.name for s in report.stats]
    assert names[0] == "load" and names[1] == "forward [1x16]" and names[2].startswith("greedy decode 8 tokens")
    fwd, dec = report.stats[1], report.stats[2]
    assert fwd.ratio_min <= fwd.ratio_median <= fwd.ratio_max and fwd.reference > 0
    assert dec.note == "identical tokens"
    assert 0 < report.extra["percent_of_bandwidth_limit"]


def test_bench_cli_json(tmp_path):
    write_checkpoint(get_catalog().converter("hf_gpt2"), tmp_path)
    result = CliRunner().invoke(cli, ["bench", str(tmp_path), "--device", "cpu", "--seq", "8",
                                      "--new-tokens", "4", "--repeats", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["device"] == "cpu" and len(data["stats"]) == 3


@pytest.mark.parametrize("conv", ["hf_marian", "hf_gpt2"])
def test_bench_beam_search(conv, tmp_path):
    """--beams N: both sides decode with N beams, and the ids are compared."""
    write_checkpoint(get_catalog().converter(conv), tmp_path)
    report = bench(str(tmp_path), device="cpu", batch=2, seq=6, new_tokens=5, prompt=6, num_beams=3, repeats=2,
                   compare=True)
    decode = report.stats[2]
    assert decode.name.startswith("3-beam decode") and decode.note == "identical tokens"


def test_bench_beams_on_a_model_that_does_not_generate_is_one_line(tmp_path):
    write_checkpoint(get_catalog().converter("hf_bert"), tmp_path)
    result = CliRunner().invoke(cli, ["bench", str(tmp_path), "--device", "cpu", "--seq", "8", "--beams", "2"])
    assert result.exit_code == 2 and "--beams applies to models that generate" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("conv", ["hf_gpt2", "hf_bert", "hf_vit", "hf_marian"])
def test_bench_train_times_a_training_step_on_both_sides(conv, tmp_path):
    write_checkpoint(get_catalog().converter(conv), tmp_path)
    report = bench(str(tmp_path), device="cpu", batch=2, seq=8, new_tokens=2, repeats=1, compare=True, train=True)
    step = next(s for s in report.stats if s.name.startswith("training step"))
    assert step.zoo > 0 and step.reference > 0 and step.ratio_min <= step.ratio_max
    assert step.note == "forward + backward + AdamW"


def test_bench_train_cold_measures_the_peak_memory_of_training_on_both_sides(tmp_path):
    write_checkpoint(get_catalog().converter("hf_gpt2"), tmp_path)
    report = bench(str(tmp_path), device="cpu", batch=2, seq=8, new_tokens=2, repeats=1, compare=True, train=True,
                   cold=True)
    rss = next(s for s in report.stats if s.name == "training steps: peak RSS")
    assert rss.zoo > 100 and rss.reference > 100  # MB: a process with torch imported


def test_bench_against_onnx_runtime(tmp_path):
    """--onnx: the forward against ONNX Runtime running zoo's export of the same weights; a
    device or dtype the graph is not exported for is a one-line error."""
    pytest.importorskip("onnxruntime")
    write_checkpoint(get_catalog().converter("hf_bert"), tmp_path)
    report = bench(str(tmp_path), device="cpu", batch=2, seq=8, repeats=2, onnx=True)
    stat = next(s for s in report.stats if s.name == "forward [2x8], ONNX Runtime")
    assert stat.reference > 0 and stat.ratio_min <= stat.ratio_median <= stat.ratio_max
    assert "ONNX Runtime" in stat.note and "ONNX Runtime" in report.render()
    result = CliRunner().invoke(cli, ["bench", str(tmp_path), "--device", "cpu", "--dtype", "bfloat16", "--onnx",
                                      "--repeats", "1"])
    assert result.exit_code == 2 and "--onnx compares on the CPU in float32" in result.output
