"""Key-mapping fuzzing: random subsets and supersets of a real key set either convert exactly
or fail with one error that lists the offending keys — never a partial state dict."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoo.checkpoint import read_safetensors
from zoo.convert import convert
from zoo.errors import ConversionError
from zoo.loading import build_model
from zoo.registry import get_catalog

from conftest import converters, write_checkpoint


@pytest.fixture(scope="module", params=converters(), ids=lambda c: c.name)
def real_keys(request, tmp_path_factory):
    conv = request.param
    folder = tmp_path_factory.mktemp(conv.name)
    write_checkpoint(conv, folder)
    config = json.loads((folder / "config.json").read_text())
    task = next(iter(conv.tasks.values()))
    arch = get_catalog().architecture(conv.architecture)
    expected = build_model(arch, conv.architecture_config(config), task).state_dict()
    source = {k: v.clone() for k, v in read_safetensors(folder / "model.safetensors").items()}
    _, report = convert(source, conv, expected)
    return conv, source, expected, report


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_subsets_and_supersets(real_keys, data):
    conv, source, expected, report = real_keys
    keys = sorted(source)
    removed = data.draw(st.sets(st.sampled_from(keys), max_size=4), label="removed")
    added = data.draw(st.sets(st.from_regex(r"[a-z]{1,6}(\.[a-z0-9]{1,4}){0,3}", fullmatch=True), max_size=3),
                      label="added")
    added -= set(keys)
    state = {k: v for k, v in source.items() if k not in removed}
    state.update({k: torch.zeros(2) for k in added})
    needed_removed = {k for k in removed if k in report.consumed}
    try:
        out, rep = convert(state, conv, expected)
    except ConversionError as exc:
        message = str(exc)
        for k in needed_removed:
            assert report.consumed[k] in message, (k, message)
        assert needed_removed or added, f"unexpected failure: {message}"
        return
    # success: only possible when nothing needed was removed, and every added key was droppable
    assert not needed_removed
    assert set(out) == set(expected), "a successful conversion fills every target"
    assert set(rep.consumed) | set(rep.dropped) == set(state)
