"""Hostile and careless input, by class. Each case asserts the exit code, a one-line message
without a traceback, and for the data-loss class that every file outside ``--out`` is
byte-identical afterwards (``digest`` of the whole tmp folder)."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from zoo import publish as pub
from zoo.cli import cli
from zoo.errors import DownloadError
from zoo.registry import get_catalog

from conftest import cached_repo, digest, write_checkpoint

ZOO = str(Path(sys.executable).with_name("zoo"))


def _zoo(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def _one_line_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("zoo: error: "), output
    assert "Traceback" not in output
    return lines[0]


def _outside(root: Path, out: Path) -> dict:
    """Digest of every file under ``root`` that is not under ``out``."""
    return {k: v for k, v in digest(root).items() if not (root / k).is_relative_to(out)}


@pytest.fixture
def hf(tmp_path):
    """A tiny GPT-2 checkpoint in the Hub's layout, with a user's own files beside the weights."""
    folder = tmp_path / "P" / "model"
    write_checkpoint(get_catalog().converter("hf_gpt2"), folder)
    (folder / "tokenizer.json").write_text("{}")
    (folder / "README.md").write_text("my notes")
    (tmp_path / "P" / "other.txt").write_text("another file of the user's")
    return folder


@pytest.fixture(params=["renameat2", "rename"])
def noreplace(request, monkeypatch):
    """Every publishing test runs with the kernel's no-replace rename and with the fallback."""
    if request.param == "renameat2" and pub.RENAMEAT2 is None:
        pytest.skip("no renameat2 on this platform")
    if request.param == "rename":
        monkeypatch.setattr(pub, "RENAMEAT2", None)
    return request.param


# ----------------------------------------------------------------------------- overlap with the input

OVERLAPS = {
    "out is the input": lambda hf: hf,
    "out inside the input": lambda hf: hf / "converted",
    "out holds the input": lambda hf: hf.parent,
    "out is a link to the input": lambda hf: _link(hf.parent / "link", hf),
    "out is the input spelt with ..": lambda hf: hf / ".." / "model",
}


def _link(link: Path, target: Path) -> Path:
    link.symlink_to(target, target_is_directory=True)
    return link


@pytest.mark.parametrize("case", OVERLAPS)
@pytest.mark.parametrize("to", ["hf", "zoo"])
def test_out_overlapping_the_input_is_refused_even_with_force(case, to, hf, tmp_path):
    out = OVERLAPS[case](hf)
    before = digest(tmp_path)
    code, output = _zoo("convert", hf, "--to", to, "--out", out, "--force")
    assert code == 2
    assert "input" in _one_line_error(output)
    assert digest(tmp_path) == before
    assert not [p for p in tmp_path.rglob(".*zoo-tmp-*")], "no temporary folder left"


def test_out_overlapping_a_checkpoint_option_is_refused(hf, tmp_path):
    before = digest(tmp_path)
    code, output = _zoo("convert", "distilgpt2", "--checkpoint", hf, "--to", "hf", "--out", hf.parent, "--force")
    assert code == 2 and "holds the input" in _one_line_error(output)
    assert digest(tmp_path) == before


def test_out_holding_a_cached_blob_is_refused(hf, tmp_path):
    """A snapshot's files are links into blobs/: an output holding the blob overlaps the input."""
    blobs, snap = tmp_path / "cache" / "blobs", tmp_path / "cache" / "snapshots" / "abc"
    blobs.mkdir(parents=True), snap.mkdir(parents=True)
    for f in ("model.safetensors", "config.json"):
        (blobs / f).write_bytes((hf / f).read_bytes())
        (snap / f).symlink_to(blobs / f)
    before = digest(tmp_path)
    code, output = _zoo("convert", snap, "--to", "hf", "--out", blobs, "--force")
    assert code == 2 and "input" in _one_line_error(output)
    assert digest(tmp_path) == before


# ----------------------------------------------------------------------------- --force replaces only zoo's


def _user_folder(out: Path, files: dict) -> None:
    for rel, text in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)


NOT_ZOOS = {
    "unrelated files": {"thesis.tex": "years of work", "data.csv": "1,2"},
    "checkpoint files and a tokenizer": {"config.json": "{}", "tokenizer.json": "{}"},
    "a sub-folder": {"config.json": "{}", "runs/log.txt": "..."},
    "a hidden file": {".env": "SECRET=1"},
}


@pytest.mark.parametrize("case", NOT_ZOOS)
def test_force_refuses_a_folder_zoo_did_not_write_naming_a_file(case, hf, tmp_path):
    out = tmp_path / "out"
    _user_folder(out, NOT_ZOOS[case])
    before = digest(tmp_path)
    code, output = _zoo("convert", hf, "--to", "hf", "--out", out, "--force")
    assert code == 2
    line = _one_line_error(output)
    assert "would be lost" in line and any(name in line for name in NOT_ZOOS[case]), line
    assert digest(tmp_path) == before


@pytest.mark.parametrize("change", ["edited", "added"])
def test_force_refuses_zoos_output_once_a_user_changed_it(change, hf, tmp_path):
    out = tmp_path / "out"
    assert _zoo("convert", hf, "--to", "zoo", "--out", out)[0] == 0
    if change == "edited":
        (out / "zoo.json").write_text((out / "zoo.json").read_text() + " ")
    else:
        (out / "notes.md").write_text("mine")
    before = digest(tmp_path)
    code, output = _zoo("convert", hf, "--to", "hf", "--out", out, "--force")
    assert code == 2
    assert ("changed since zoo wrote it" if change == "edited" else "notes.md would be lost") in _one_line_error(output)
    assert digest(tmp_path) == before


@pytest.mark.parametrize("previous", ["zoo's own output", "only checkpoint files"])
def test_force_replaces_zoos_output_and_nothing_else(previous, hf, tmp_path, noreplace):
    out = tmp_path / "out"
    if previous == "zoo's own output":
        assert _zoo("convert", hf, "--to", "zoo", "--out", out)[0] == 0
    else:
        _user_folder(out, {"config.json": "{}", "model.safetensors": "old", "generation_config.json": "{}"})
    outside = _outside(tmp_path, out)
    code, output = _zoo("convert", hf, "--to", "hf", "--out", out, "--force")
    assert code == 0, output
    assert sorted(p.name for p in out.iterdir()) == [".zoo-written.json", "config.json", "generation_config.json",
                                                     "model.safetensors", "tokenizer.json"]  # the source's, copied
    assert _outside(tmp_path, out) == outside
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "nothing left beside --out"


def test_plugin_new_force_keeps_a_plugin_authors_edits(tmp_path):
    assert _zoo("plugin", "new", "mine", "--dir", tmp_path)[0] == 0
    pkg = tmp_path / "zoo-mine"
    assert _zoo("plugin", "new", "mine", "--dir", tmp_path, "--force")[0] == 0  # untouched: replaced
    (pkg / "README.md").write_text("my own words")
    before = digest(tmp_path)
    code, output = _zoo("plugin", "new", "mine", "--dir", tmp_path, "--force")
    assert code == 2 and "README.md changed since zoo wrote it" in _one_line_error(output)
    assert digest(tmp_path) == before


# ----------------------------------------------------------------------------- races


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_appearing_at_out_while_writing_is_left_alone(force, hf, tmp_path, monkeypatch, noreplace):
    """Without --force a folder appears where there was none; with it, a user's file appears in
    zoo's previous output. Either way the loser is zoo, with one line, and nothing is lost."""
    from zoo import checkpoint as ckpt

    out = tmp_path / "out"
    if force:
        assert _zoo("convert", hf, "--to", "zoo", "--out", out)[0] == 0
    expected = sorted(([p.name for p in out.iterdir()] if force else []) + ["mine.txt"])
    save = ckpt.save_safetensors

    def save_while_a_user_writes(tensors, path, **kwargs):
        _user_folder(out, {"mine.txt": "written meanwhile"})
        save(tensors, path, **kwargs)

    monkeypatch.setattr(ckpt, "save_safetensors", save_while_a_user_writes)
    code, output = _zoo("convert", hf, "--to", "hf", "--out", out, *(["--force"] if force else []))
    assert code == 2, output
    line = _one_line_error(output)
    assert "while zoo was writing" in line and ("mine.txt would be lost" in line) == force, line
    assert sorted(p.name for p in out.iterdir()) == expected
    assert (out / "mine.txt").read_text() == "written meanwhile"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_rename_noreplace_never_replaces(tmp_path, noreplace):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir(), dst.mkdir()
    (dst / "x").write_text("keep")
    with pytest.raises(FileExistsError):
        pub.rename_noreplace(src, dst)
    (tmp_path / "file").write_text("keep")
    with pytest.raises(FileExistsError):
        pub.rename_noreplace(src, tmp_path / "file")
    assert (dst / "x").read_text() == "keep" and (tmp_path / "file").read_text() == "keep"
    pub.rename_noreplace(src, tmp_path / "new")
    assert (tmp_path / "new").is_dir() and not src.exists()


def _convert_process(src: Path, out: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([ZOO, "convert", str(src), "--to", "hf", "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_concurrent_converts_into_one_new_folder_one_wins(hf, tmp_path):
    out = tmp_path / "out"
    outside = _outside(tmp_path, out)
    procs = [_convert_process(hf, out) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    _one_line_error(loser[2])
    assert sum("wrote" in r[1] for r in results) == 1
    assert sorted(p.name for p in out.iterdir()) == [".zoo-written.json", "config.json", "generation_config.json",
                                                     "model.safetensors", "tokenizer.json"]  # the source's, copied
    assert _outside(tmp_path, out) == outside
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_killed_convert_loses_nothing_and_its_leftovers_are_swept(tmp_path):
    """SIGKILL while the output is being written; then a second convert succeeds and removes
    the killed one's temporary folder, and only it."""
    src = tmp_path / "big"
    # big enough (about 40 MB) that the write can be caught in the act
    write_checkpoint(get_catalog().converter("hf_gpt2"), src,
                     config=dict(n_layer=1, n_embd=256, n_head=4, vocab_size=40000, n_positions=64))
    out = tmp_path / "out"
    not_zoos = tmp_path / f".out{pub.TMP_INFIX}notzoos"  # named like zoo's, no lock: not swept
    not_zoos.mkdir()
    (not_zoos / "x").write_text("keep")
    before = digest(tmp_path)
    for _ in range(5):  # the write may finish before it is caught: try again
        proc = _convert_process(src, out)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if [p for p in tmp_path.glob(f".out{pub.TMP_INFIX}*") if p != not_zoos and any(p.iterdir())]:
                break
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode == -signal.SIGKILL and not out.exists():
            break
        if out.exists():
            pub._delete_checked(out, pub.replaceable(out))
    else:
        pytest.skip("the write was never caught in the act")
    assert not out.exists()
    assert {k: v for k, v in digest(tmp_path).items() if not _swept(tmp_path / k, not_zoos)} == before
    left = [p for p in tmp_path.glob(f".out{pub.TMP_INFIX}*") if p != not_zoos]
    assert left, "the killed writer's folder is there"
    proc = _convert_process(src, out)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert not [p for p in left if p.exists()], "swept by the next convert"
    assert (not_zoos / "x").read_text() == "keep"


def _swept(path: Path, keep: Path) -> bool:
    return path.parent.name.startswith(f".out{pub.TMP_INFIX}") and path.parent != keep


def test_a_writer_in_progress_is_not_swept(tmp_path):
    tmp, fd = pub._new_tmp(tmp_path, "out")
    try:
        assert pub.sweep_stale(tmp_path, "out") == [] and tmp.is_dir()
    finally:
        os.close(fd)
    assert pub.sweep_stale(tmp_path, "out") == [tmp] and not tmp.exists()


def test_output_folder_gets_the_umask_mode(hf, tmp_path):
    old = os.umask(0o027)
    try:
        assert _zoo("convert", hf, "--to", "hf", "--out", tmp_path / "out")[0] == 0
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750


def test_out_that_cannot_be_created_fails_before_the_work(hf, tmp_path, monkeypatch):
    from zoo import export

    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(export, "read_source", lambda *a, **k: pytest.fail("read before checking --out"))
    for out in (tmp_path / "afile", tmp_path / "afile" / "out"):
        code, output = _zoo("convert", hf, "--to", "hf", "--out", out)
        assert code == 2 and str(tmp_path / "afile") in _one_line_error(output)
    assert (tmp_path / "afile").read_text() == "x"


# ----------------------------------------------------------------------------- the Hugging Face cache


def test_a_cache_link_leading_outside_blobs_is_neither_used_nor_deleted(tmp_path, monkeypatch):
    """A snapshot link to a 64-hex-named file elsewhere: zoo refuses it and deletes nothing."""
    from zoo import hub

    victim_dir = tmp_path / "elsewhere"
    victim_dir.mkdir()
    victim = victim_dir / ("0" * 64)  # named like a blob, hashes to something else
    victim.write_text("a user's file")
    repo, snap = cached_repo(tmp_path / "hub")
    (snap / "config.json").write_text("{}")
    (snap / "model.safetensors").symlink_to(victim)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    before = digest(tmp_path)
    with pytest.raises(DownloadError, match="outside the cache's blobs"):
        hub.fetch("org/m", "main")
    assert digest(tmp_path) == before and victim.read_text() == "a user's file"
    assert (snap / "model.safetensors").is_symlink()


def test_a_corrupt_blob_inside_the_cache_is_still_deleted(tmp_path, monkeypatch):
    from zoo import hub

    repo, snap = cached_repo(tmp_path / "hub")
    blob = repo / "blobs" / hashlib.sha256(b"the real bytes").hexdigest()
    blob.write_bytes(b"other bytes")
    (snap / "model.safetensors").symlink_to(blob)
    assert hub._verify(snap) == ["model.safetensors"]
    assert not blob.exists() and not (snap / "model.safetensors").exists()


# ----------------------------------------------------------------------------- usage errors

USAGE = {
    "unknown command": ["lst"],
    "unknown option of zoo": ["--bogus", "list"],
    "unknown option of a command": ["list", "--bogus"],
    "missing argument": ["convert"],
    "not an integer": ["bench", "gpt2", "--batch", "x"],
    "not a choice": ["convert", "gpt2", "--to", "gguf", "--out", "x"],
}


@pytest.mark.parametrize("case", USAGE)
def test_usage_errors_are_one_line_and_exit_2(case):
    code, output = _zoo(*USAGE[case])
    assert code == 2
    assert "--help" in _one_line_error(output)


# ----------------------------------------------------------------------------- plugins cannot take zoo down

PLUGIN_CODE = {
    "SystemExit at import": ("import sys\nsys.exit(0)\n", 0, "failed to load: SystemExit"),
    "sys.exit(3) in a hook": ("import sys\nfrom zoo import hookimpl\n\n@hookimpl\ndef register_commands(cli):\n"
                              "    sys.exit(3)\n", 0, "register_commands raised SystemExit: 3"),
    "KeyboardInterrupt at import": ("raise KeyboardInterrupt\n", 130, "zoo: interrupted"),
}


@pytest.mark.parametrize("case", PLUGIN_CODE)
def test_a_plugin_cannot_end_zoo_silently(case, tmp_path):
    """A real installed distribution (dist-info on the path), run by the real `zoo` script."""
    source, code, message = PLUGIN_CODE[case]
    (tmp_path / "plug_hostile.py").write_text(source)
    info = tmp_path / "zoo_hostile-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-hostile\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[zoo]\nplug_hostile = plug_hostile\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([ZOO, "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    if code == 0:
        assert "Usage: zoo" in result.stdout  # the rest of zoo works


def test_a_bug_has_its_own_exit_code(monkeypatch):
    """A parity failure exits 1, bad input 2, a bug 3: a script can tell them apart."""
    from zoo import registry

    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(registry, "get_catalog", bug)
    result = CliRunner().invoke(cli, ["list"])
    assert result.exit_code == 3
    lines = result.output.strip().splitlines()
    assert lines == ["zoo: internal error: RuntimeError: a bug (rerun with --debug)"]


# ----------------------------------------------------------------------------- values that make nonsense

BAD_VALUES = {
    "negative temperature": (["run", "M", "--ids", "1", "--temperature", "-0.01"], "--temperature"),
    "NaN temperature": (["run", "M", "--ids", "1", "--temperature", "nan"], "not a finite number"),
    "top-p above 1": (["run", "M", "--ids", "1", "--top-p", "2"], "--top-p"),
    "negative top-k": (["run", "M", "--ids", "1", "--top-k", "-5"], "--top-k"),
    "30-digit id": (["run", "M", "--ids", "123456789012345678901234567890"], "is not a token id"),
    "zero new tokens": (["run", "M", "--ids", "1", "--max-new-tokens", "0"], "--max-new-tokens"),
    "zero beams": (["run", "M", "--ids", "1", "--beams", "0"], "--beams"),
    "zero top": (["run", "M", "--ids", "1", "--top", "0"], "--top"),
    "negative seed": (["run", "M", "--ids", "1", "--seed", "-1"], "--seed"),
    "bench batch 0": (["bench", "M", "--batch", "0"], "--batch"),
    "bench seq 0": (["bench", "M", "--seq", "0"], "--seq"),
    "bench repeats 0": (["bench", "M", "--repeats", "0"], "--repeats"),
    "verify beams 0": (["verify", "M", "--beams", "0"], "--beams"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_option_values_out_of_range_are_one_line(case, hf):
    args, message = BAD_VALUES[case]
    code, output = _zoo(*[str(hf) if a == "M" else a for a in args])
    assert code == 2
    assert message in _one_line_error(output)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -0.01}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": 1.0, "top_p": 2.0}, "top_p"),
    ({"temperature": 1.0, "top_k": -5}, "top_k"),
])
def test_generate_refuses_nonsense_sampling(kwargs, message, hf):
    import torch

    import zoo
    from zoo.errors import InputError

    model = zoo.load(str(hf), device="cpu")
    with pytest.raises(InputError, match=message):
        model.generate(torch.tensor([[1, 2]]), max_new_tokens=2, **kwargs)


@pytest.mark.parametrize("name", ["", "   ", None, 3])
def test_zoo_load_of_nothing_is_an_error(name):
    import zoo
    from zoo.errors import InputError

    with pytest.raises(InputError, match="catalog name, an alias or a checkpoint path"):
        zoo.load(name)


def test_a_misspelt_zoo_load_keyword_is_an_error(hf):
    import zoo
    from zoo.errors import InputError

    with pytest.raises(InputError, match="unexpected keyword 'fats' \\(did you mean 'fast'\\?\\)"):
        zoo.load(str(hf), device="cpu", fats=False)
    model = zoo.load(str(hf), device="cpu", layer_norm_epsilon=1e-3)  # a field of the config: an override
    assert model.config.norm_eps == 1e-3  # the architecture's name for it


# ----------------------------------------------------------------------------- weight files that lie


def _raw_safetensors(path: Path, header_text: str, data: bytes) -> None:
    raw = header_text.encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


LIES = {
    "two tensors on the same bytes": (
        '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
        '"b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', 8, "overlap"),
    "one tensor named twice": (
        '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
        '"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}', 16, "names tensor 'a' twice"),
    "bytes that belong to no tensor": (
        '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}', 16, "belong to no tensor"),
    "trailing bytes": ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', 12, "belong to no tensor"),
}


@pytest.mark.parametrize("case", LIES)
def test_a_safetensors_header_that_lies_is_refused(case, tmp_path):
    from zoo import checkpoint as ckpt
    from zoo.errors import CheckpointError

    header, size, message = LIES[case]
    _raw_safetensors(tmp_path / "model.safetensors", header, bytes(size))
    with pytest.raises(CheckpointError, match=message):
        ckpt.read_safetensors(tmp_path / "model.safetensors")


def test_the_real_library_agrees_with_the_lies_refused(tmp_path):
    """zoo is at least as strict as the safetensors library on the same files."""
    from safetensors import safe_open

    for case, (header, size, _) in LIES.items():
        if case == "one tensor named twice":
            continue  # the library's JSON parser keeps the last; zoo refuses
        _raw_safetensors(tmp_path / f"{len(case)}.safetensors", header, bytes(size))
        with pytest.raises(Exception):
            with safe_open(str(tmp_path / f"{len(case)}.safetensors"), "pt") as f:
                [f.get_tensor(k) for k in f.keys()]


def test_a_zip_pickle_that_fails_its_crc_is_refused(tmp_path):
    import torch

    from zoo import checkpoint as ckpt
    from zoo.errors import CheckpointError

    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.arange(1000, dtype=torch.float32)}, path)
    data = bytearray(path.read_bytes())
    at = data.find(torch.arange(1000, dtype=torch.float32).numpy().tobytes()[400:416])
    assert at > 0
    data[at] ^= 0xFF  # one byte of the tensor's data, changed after the CRC was written
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its CRC check"):
        ckpt.read_pickle(path)


@pytest.mark.parametrize("lie", ["a key in the wrong shard", "a key not listed", "a listed key held nowhere"])
def test_an_index_that_lies_is_an_error_naming_the_key(lie, tmp_path):
    import json

    import torch
    from safetensors.torch import save_file

    import zoo
    from zoo.errors import CheckpointError

    write_checkpoint(get_catalog().converter("hf_gpt2"), tmp_path)
    from zoo import checkpoint as ckpt

    state = {k: v.clone() for k, v in ckpt.read_safetensors(tmp_path / "model.safetensors").items()}
    (tmp_path / "model.safetensors").unlink()
    keys = sorted(state)
    first, second = keys[: len(keys) // 2], keys[len(keys) // 2:]
    save_file({k: state[k] for k in first}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in second}, str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in first}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in second})
    named = second[0]
    if lie == "a key in the wrong shard":
        weight_map[named] = "model-00001-of-00002.safetensors"
    elif lie == "a key not listed":
        del weight_map[named]
    else:
        named = "h.9.mlp.c_fc.weight"
        weight_map[named] = "model-00002-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):
        zoo.load(str(tmp_path), device="cpu")
    assert torch.is_tensor(state[keys[0]])


def test_an_untied_gpt2_head_is_refused_not_run_wrong(tmp_path):
    """tie_word_embeddings: false with its own lm_head.weight is another model: refused."""
    import json

    import zoo
    from zoo.errors import ConfigError

    write_checkpoint(get_catalog().converter("hf_gpt2"), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    with pytest.raises(ConfigError, match="tie_word_embeddings=False"):
        zoo.load(str(tmp_path), device="cpu")
    code, output = _zoo("run", tmp_path, "--ids", "1,2")
    assert code == 2 and "tie_word_embeddings" in _one_line_error(output)


# ----------------------------------------------------------------------------- sizes read from files


@pytest.mark.parametrize("field, value", [("n_layer", 10**7), ("vocab_size", 10**12), ("n_embd", 10**6)])
def test_a_config_too_big_for_memory_is_refused_before_building(field, value, tmp_path):
    """Sizes come from files: checked against the machine's memory before anything is built."""
    import json
    import time

    import zoo
    from zoo.memory import MemoryBoundError

    write_checkpoint(get_catalog().converter("hf_gpt2"), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    extra = {"n_head": 1} if field == "n_embd" else {}
    (tmp_path / "config.json").write_text(json.dumps({**config, field: value, **extra}))
    start = time.monotonic()
    with pytest.raises(MemoryBoundError, match=f"{field}={value}"):
        zoo.load(str(tmp_path), device="cpu")
    assert time.monotonic() - start < 10
    code, output = _zoo("run", tmp_path, "--ids", "1")
    assert code == 2 and "ZOO_MEMORY_CHECK=0" in _one_line_error(output)


def test_a_catalog_entry_too_big_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "cat.toml"
    path.write_text("[models.huge]\nconverter = 'hf_gpt2'\nconfig = { n_layer = 10000000 }\n")
    monkeypatch.setenv("ZOO_REGISTRY", str(path))
    code, output = _zoo("verify", "huge", "--random-weights")
    assert code == 2 and "n_layer=10000000" in _one_line_error(output)


def test_beams_too_many_for_memory_are_refused_before_allocating(hf):
    import torch

    import zoo
    from zoo.memory import MemoryBoundError

    model = zoo.load(str(hf), device="cpu")
    with pytest.raises(MemoryBoundError, match="rows = batch x beams = 10000000"):
        model.generate(torch.tensor([[1, 2]]), num_beams=10**7, max_new_tokens=4)


def test_every_parameter_count_is_exact():
    """Architecture.parameter_count against the model itself, built on the meta device: the
    tiny config of every converter, and every catalog entry's recorded count."""
    import torch

    from zoo.loading import build_model
    from zoo.types import import_ref
    from conftest import converters

    catalog = get_catalog()
    for conv in converters():
        arch = catalog.architecture(conv.architecture)
        if arch.parameter_count is None:  # optional for a plugin's architecture
            continue
        for task in arch.tasks:
            with torch.device("meta"):
                model = arch.build(conv.architecture_config(conv.tiny_config), task)
            want = sum(p.numel() for p in model.parameters())
            assert import_ref(arch.parameter_count)(conv.architecture_config(conv.tiny_config), task) == want, (conv.name, task)
    for entry in catalog.models.values():
        arch = catalog.architecture(entry.architecture)
        if entry.params and arch.parameter_count:
            config = catalog.converter(entry.converter).architecture_config(entry.config)
            assert import_ref(arch.parameter_count)(config, entry.task) == entry.params, entry.name
    assert build_model  # the loader's check uses the same function


# ----------------------------------------------------------------------------- values read from files

BAD_CONFIGS = [
    ("hf_gpt2", "n_head", "4", "field n_head must be an integer >= 1, got \"4\""),
    ("hf_gpt2", "n_layer", 2.0, "field n_layer must be an integer >= 1, got 2.0"),
    ("hf_gpt2", "n_head", 0, "field n_head must be an integer >= 1, got 0"),
    ("hf_gpt2", "layer_norm_epsilon", float("nan"), "field layer_norm_epsilon must be a finite number > 0"),
    ("hf_gpt2", "architectures", "GPT2LMHeadModel", "field architectures must be a list of strings"),
    ("hf_bert", "hidden_dropout_prob", 2, "field hidden_dropout_prob must be a number from 0 to 1"),
    ("hf_bert", "num_attention_heads", -4, "field num_attention_heads must be an integer >= 1"),
    ("hf_vit", "image_size", [0, 0], "field image_size must be an integer >= 1 or [height, width]"),
    ("hf_vit", "layer_norm_eps", -1e-12, "field layer_norm_eps must be a finite number > 0"),
    ("hf_marian", "d_model", "512", "field d_model must be an integer >= 1"),
    ("hf_marian", "decoder_start_token_id", -1, "field decoder_start_token_id must be a token id"),
]


@pytest.mark.parametrize("conv, field, value, message", BAD_CONFIGS,
                         ids=[f"{c}-{f}={v!r}" for c, f, v, _ in BAD_CONFIGS])
def test_a_config_value_of_the_wrong_kind_names_file_field_and_value(conv, field, value, message, tmp_path):
    import json

    import zoo
    from zoo.errors import ConfigError

    write_checkpoint(get_catalog().converter(conv), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(ConfigError) as err:
        zoo.load(str(tmp_path), device="cpu")
    assert str(tmp_path / "config.json") in str(err.value) and message in str(err.value)
    code, output = _zoo("verify", tmp_path)
    assert code == 2 and message in _one_line_error(output)


def test_a_catalog_config_value_of_the_wrong_kind_names_the_entry(tmp_path, monkeypatch):
    path = tmp_path / "cat.toml"
    path.write_text("[models.m]\nconverter = 'hf_gpt2'\nconfig = { n_head = '4' }\n")
    monkeypatch.setenv("ZOO_REGISTRY", str(path))
    code, output = _zoo("list")
    assert code == 2 and "[models.m]: config: field n_head must be an integer >= 1" in _one_line_error(output)


@pytest.mark.parametrize("settings, message", [
    ({"image_std": [0, 0, 0]}, "image_std finite and > 0"),
    ({"rescale_factor": 0}, "rescale_factor must be a finite number > 0"),
    ({"size": {"height": 0, "width": 224}}, "size must be whole pixels > 0"),
])
def test_preprocessing_values_that_make_nonsense_are_refused(settings, message):
    from zoo.errors import ConfigError
    from zoo.imaging import resolve_settings

    with pytest.raises(ConfigError, match=message):
        resolve_settings({"size": {"height": 224, "width": 224}, **settings}, {"num_channels": 3})


def test_an_image_too_large_to_decode_is_one_line(tmp_path):
    from PIL import Image

    from zoo.errors import InputError
    from zoo.imaging import open_image

    path = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(path)  # a few KB on disk, 400 million pixels decoded
    with pytest.raises(InputError, match="too large to decode safely"):
        open_image(str(path))


def test_bench_seq_beyond_the_context_is_an_error_not_a_shorter_measure(hf):
    code, output = _zoo("bench", hf, "--seq", "100000", "--device", "cpu")
    assert code == 2 and "--seq 100000 exceeds the 32 positions" in _one_line_error(output)


# ----------------------------------------------------------------------------- long work is not silent


def test_progress_shows_on_a_terminal_and_never_under_json(hf, monkeypatch):
    """verify says what it is doing on a terminal's stderr; under --json, or when stderr is not a
    terminal (pipes, logs), nothing."""
    from zoo import progress

    monkeypatch.setattr(progress, "_isatty", lambda: True)
    result = CliRunner().invoke(cli, ["verify", str(hf), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "zoo: building transformers' model on the same weights..." in result.stderr
    result = CliRunner().invoke(cli, ["verify", str(hf), "--device", "cpu", "--json"])
    assert result.exit_code == 0 and "zoo: building" not in result.stderr
    monkeypatch.setattr(progress, "_isatty", lambda: False)
    result = CliRunner().invoke(cli, ["verify", str(hf), "--device", "cpu"])
    assert "zoo: building" not in result.stderr


def test_a_long_generation_shows_a_bar(monkeypatch, capsys):
    import torch

    from zoo import generation, progress

    monkeypatch.setattr(progress, "_isatty", lambda: True)
    progress.enable(True)
    try:
        out = generation.token_by_token(lambda tokens, cur: torch.zeros(1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long),
                                        80, None, 0)
    finally:
        progress.enable(False)
    assert out.shape == (1, 81)
    assert "generating" in capsys.readouterr().err


def test_fill_mask_without_a_tokenizer_does_not_send_the_user_to_ids(tmp_path):
    """Without a tokenizer, fill-mask cannot find the mask token: one line that says what to
    pass, and --ids does not lead to a second, contradicting error."""
    write_checkpoint(get_catalog().converter("hf_bert"), tmp_path)
    for args in (["Paris is the [MASK] of France."], ["--ids", "1,2,3"]):
        code, output = _zoo("run", tmp_path, *args, "--device", "cpu")
        line = _one_line_error("\n".join(l for l in output.splitlines() if not l.startswith("zoo: ") or "error" in l))
        assert code == 2 and "needs the checkpoint's tokenizer" in line and "--ids 1" not in line


# ----------------------------------------------------------------------------- found in review


def test_a_replaced_weight_is_never_read_from_a_stale_packed_copy():
    import torch

    from zoo.accel import ops

    if not ops.packing_available():
        pytest.skip("no MKL packing here")
    lin = ops.Linear(64, 64)
    lin.requires_grad_(False).pack_weights()
    x = torch.randn(8, 64)
    for _ in range(20):  # a freed address is often reused for the new weight
        lin._parameters["weight"] = None
        lin.weight = torch.nn.Parameter(torch.randn(64, 64), requires_grad=False)
        with torch.inference_mode():
            assert torch.allclose(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias), atol=1e-5)


def test_force_on_an_output_that_is_a_link_deletes_nothing(hf, tmp_path):
    target = tmp_path / "real"
    _user_folder(target, {"config.json": "{}", "model.safetensors": "x"})
    (tmp_path / "link").symlink_to(target, target_is_directory=True)
    before = digest(tmp_path)
    code, output = _zoo("convert", hf, "--to", "hf", "--out", tmp_path / "link", "--force")
    assert code == 2 and "symbolic link" in _one_line_error(output)
    assert digest(tmp_path) == before


def test_the_old_output_comes_back_whatever_fails_while_replacing_it(hf, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert _zoo("convert", hf, "--to", "zoo", "--out", out)[0] == 0
    before = digest(out)
    calls = [0]
    check = pub.replaceable

    def second_check_fails(folder):
        calls[0] += 1
        if calls[0] > 1:
            raise PermissionError("the disk went away")
        return check(folder)

    monkeypatch.setattr(pub, "replaceable", second_check_fails)
    code, output = _zoo("convert", hf, "--to", "hf", "--out", out, "--force")
    assert code != 0
    assert digest(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_torch_archive_saved_without_crcs_loads(tmp_path):
    import torch
    import torch.utils.serialization as serialization

    from zoo import checkpoint as ckpt

    path = tmp_path / "pytorch_model.bin"
    old = serialization.config.save.compute_crc32
    serialization.config.save.compute_crc32 = False
    try:
        torch.save({"w": torch.arange(10.0)}, path)
    finally:
        serialization.config.save.compute_crc32 = old
    assert torch.equal(ckpt.read_pickle(path)["w"], torch.arange(10.0))


def test_a_generation_field_is_a_valid_override(hf):
    import zoo

    zoo.load(str(hf), device="cpu", pad_token_id=0)  # gpt2's config has none; generation reads it


def test_accelerating_twice_then_plain_restores_every_module(tmp_path):
    import zoo
    from zoo import accel
    from zoo.loading import load_full

    write_checkpoint(get_catalog().converter("hf_bert"), tmp_path)
    loaded = load_full(str(tmp_path), device="cpu")
    plain_types = [type(m) for m in load_full(str(tmp_path), device="cpu", fast=False).model.modules()]
    accel.accelerate(loaded.model, loaded.architecture)
    accel.plain(loaded.model)
    assert [type(m) for m in loaded.model.modules()] == plain_types
    assert zoo  # loaded through the same pipeline as zoo.load


def test_beam_search_with_several_eos_ids_matches_transformers(tmp_path):
    import torch
    from transformers import GPT2LMHeadModel

    from zoo.loading import load_full

    conv = get_catalog().converter("hf_gpt2")
    write_checkpoint(conv, tmp_path)
    ref = GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    model = load_full(str(tmp_path), device="cpu").model
    ids = torch.randint(0, 96, (2, 4), generator=torch.Generator().manual_seed(3))
    greedy = ref.generate(ids, do_sample=False, max_new_tokens=3, pad_token_id=0, eos_token_id=None)[:, 4:]
    stops = sorted({int(t) for t in greedy.flatten()})[:3]  # tokens the model does produce
    kwargs = dict(num_beams=2, max_new_tokens=8, eos_token_id=stops, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kwargs), ref.generate(ids, do_sample=False, **kwargs))
