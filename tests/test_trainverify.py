"""`zoo verify --train`: the training loss and every gradient against transformers, for each
converter and each task with a loss, on seeded random weights; a broken mapping is caught."""
from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from zoo.cli import cli
from zoo.registry import get_catalog
from zoo.trainverify import verify_training

from conftest import converters

NO_LOSS = {"feature-extraction", "image-feature-extraction"}
CASES = [(c, t) for c in converters() if c.name != "hf_distilbert"
         for t in sorted(set(c.tasks.values()) if isinstance(c.tasks, dict) else set(c.tasks)) if t not in NO_LOSS]


@pytest.fixture
def tiny_catalog(tmp_path, monkeypatch):
    lines = []
    for conv in {c.name: c for c, _ in CASES}.values():
        body = ", ".join(f"{k} = {json.dumps(v)}" for k, v in conv.tiny_config.items()
                         if isinstance(v, (int, float, str, bool)))
        lines.append(f"[models.tiny-{conv.name}]\nconverter = '{conv.name}'\nconfig = {{ {body} }}\n")
    (tmp_path / "cat.toml").write_text("\n".join(lines))
    monkeypatch.setenv("ZOO_REGISTRY", str(tmp_path / "cat.toml"))


@pytest.mark.parametrize("conv, task", CASES, ids=[f"{c.name}-{t}" for c, t in CASES])
def test_training_loss_and_gradients_equal_transformers(conv, task, tiny_catalog):
    report = verify_training(f"tiny-{conv.name}", random_weights=True, task=task)
    assert report.passed, report.render()
    assert report.parameters > 0 and report.loss > 0


def test_a_broken_mapping_fails_on_the_gradient_it_breaks(tiny_catalog):
    conv = get_catalog().converter("hf_bert")
    rules = list(conv.key_map)
    q = next(i for i, r in enumerate(rules) if r.target and r.target.endswith("attention.self.query.weight"))
    k = next(i for i, r in enumerate(rules) if r.target and r.target.endswith("attention.self.key.weight"))
    rules[q], rules[k] = (dataclasses.replace(rules[q], target=rules[k].target),
                          dataclasses.replace(rules[k], target=rules[q].target))
    broken = dataclasses.replace(conv, key_map=tuple(rules))
    report = verify_training("tiny-hf_bert", random_weights=True, converter=broken)
    assert not report.passed and "FAILED" in report.render()


def test_the_cli_prints_the_report_and_refuses_what_does_not_apply(tiny_catalog):
    result = CliRunner().invoke(cli, ["verify", "tiny-hf_gpt2", "--train", "--random-weights", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] and data["task"] == "text-generation"
    result = CliRunner().invoke(cli, ["verify", "tiny-hf_gpt2", "--train", "--beams", "2"])
    assert result.exit_code == 2 and "--beams does not apply to --train" in result.output
    result = CliRunner().invoke(cli, ["verify", "tiny-hf_vit", "--train", "--random-weights", "--task",
                                      "image-feature-extraction"])
    assert result.exit_code == 2 and "has no training loss" in result.output
