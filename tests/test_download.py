"""Downloads, against a real local server (issue 8).

A Hub look-alike (tests/hubserver.py) serves a tiny random GPT-2 in the Hub's layout on
127.0.0.1 the way huggingface_hub expects it (repo info, file tree, resolve with ETag /
X-Repo-Commit / X-Linked-Etag / X-Linked-Size, a 302 to a "CDN" that honours Range). The models
are loaded through the real path: a catalog entry (ZOO_REGISTRY) -> zoo.loading.load_full ->
zoo.hub.fetch -> huggingface_hub.snapshot_download. HF_ENDPOINT and HF_HUB_CACHE point at the
server and a tmp folder; they are read when zoo.hub.fetch is called.
"""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hubserver import FakeRepo, HubServer
from zoo.errors import DownloadError

REPO = "zoo-test/tiny-gpt2"
ENTRY = "tiny-hub"


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def revisions(tmp_path_factory):
    """Two commits of the tiny model (different random weights): {seed: {filename: bytes}}."""
    from conftest import write_checkpoint
    from zoo.registry import get_catalog

    conv = get_catalog().converter("hf_gpt2")
    out = {}
    for seed in (0, 1):
        folder = tmp_path_factory.mktemp(f"rev{seed}")
        write_checkpoint(conv, folder, "hub", seed=seed)
        out[seed] = {p.name: p.read_bytes() for p in folder.iterdir()}
    return out


@pytest.fixture
def hub(revisions, tmp_path, monkeypatch):
    """A running server with REPO: an old commit (seed 1) and main (seed 0); the env set for it."""
    from huggingface_hub import constants
    from zoo import pluginmanager
    from zoo.registry import get_catalog

    repo = FakeRepo()
    old = repo.commit(revisions[1])
    main = repo.commit(revisions[0])
    server = HubServer({REPO: repo}, lifetime=60).start()
    server.old, server.main = old, main

    tiny = get_catalog().converter("hf_gpt2").tiny_config
    registry = tmp_path / "registry.toml"
    registry.write_text(
        f'[models.{ENTRY}]\narchitecture = "gpt2"\nconverter = "hf_gpt2"\ntask = "text-generation"\n'
        f'repo = "{REPO}"\nrevision = "main"\n'
        f"config = {{ {', '.join(f'{k} = {v}' for k, v in tiny.items())} }}\n"
    )
    env = {
        "ZOO_REGISTRY": str(registry),
        "HF_ENDPOINT": server.url,
        "HF_HUB_CACHE": str(tmp_path / "cache"),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "ZOO_HUB_TIMEOUT": "5",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # conftest sets HF_HUB_OFFLINE=1 before huggingface_hub is imported, which freezes this flag.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    pluginmanager.reset()
    server.cache = tmp_path / "cache"
    server.env = env
    yield server
    server.stop()


# -- helpers -------------------------------------------------------------------------------------
def load(**kwargs):
    from zoo.loading import load_full

    return load_full(ENTRY, device="cpu", **kwargs)


def wte(loaded):
    return next(v for k, v in loaded.model.state_dict().items() if k.endswith("wte.weight"))


def file_wte(files):
    from safetensors.torch import load as st_load

    return st_load(files["model.safetensors"])["wte.weight"]


def same_weights(loaded, files) -> bool:
    import torch

    return torch.equal(wte(loaded), file_wte(files))


def cache_state(cache: Path):
    """Every file in the cache of REPO with its sha256; leftovers (*.incomplete) show up here."""
    storage = cache / f"models--{REPO.replace('/', '--')}"
    return {
        str(p.relative_to(storage)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(storage.rglob("*")) if p.is_file() and not p.is_symlink()
    } if storage.exists() else {}


def assert_consistent(cache: Path, files) -> None:
    """No partial files; every blob is named by its hash; the snapshot links resolve to them."""
    state = cache_state(cache)
    assert not [k for k in state if k.endswith(".incomplete")], state
    blobs = {k.split("/")[-1]: v for k, v in state.items() if k.startswith("blobs/")}
    for name, digest in blobs.items():
        if len(name) == 64:
            assert name == digest, "an LFS blob does not hash to its name"
    sha = hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert sha in blobs


def one_line(err, *words):
    text = str(err.value)
    assert "\n" not in text, text
    for w in words:
        assert w in text, text
    return text


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- tests ---------------------------------------------------------------------------------------
def test_first_load_downloads_with_progress_then_the_cache_serves_it_without_requests(
        hub, revisions, capfd, monkeypatch):
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    monkeypatch.setenv("TQDM_POSITION", "-1")  # progress bars even though stderr is not a terminal
    was_disabled = are_progress_bars_disabled()  # zoo.verify turns them off for the whole process
    enable_progress_bars()
    try:
        first = load()
    finally:
        if was_disabled:
            disable_progress_bars()
    err = capfd.readouterr().err
    assert "Fetching 2 files" in err and "Download complete" in err, err
    assert same_weights(first, revisions[0])
    assert first.entry.repo == REPO
    assert hub.count("/cdn/") == 1 and hub.count("/api/") >= 1
    assert_consistent(hub.cache, revisions[0])

    before = len(hub.requests)
    second = load()
    assert len(hub.requests) == before, hub.requests[before:]
    assert same_weights(second, revisions[0])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and it works offline from the cache
    assert same_weights(load(), revisions[0])
    assert len(hub.requests) == before


@pytest.mark.parametrize("which", ["old", "main"])
def test_a_pinned_revision_is_honoured(hub, revisions, which):
    revision = hub.old if which == "old" else "main"
    loaded = load(revision=revision)
    assert same_weights(loaded, revisions[1] if which == "old" else revisions[0])
    folder = hub.cache / f"models--{REPO.replace('/', '--')}" / "snapshots"
    assert [p.name for p in folder.iterdir()] == [hub.old if which == "old" else hub.main]
    if which == "old":  # the other revision is still downloaded separately, and right
        assert same_weights(load(), revisions[0])
        assert hub.count("/cdn/") == 2


@pytest.mark.parametrize("chunk", [None, 16 * 1024])
def test_a_download_cut_off_mid_file_is_retried(hub, revisions, monkeypatch, chunk):
    """huggingface_hub retries a broken-off download; it resumes (Range) from the last chunk it
    wrote (10 MB by default, so a small file starts over; smaller chunks show the resume)."""
    from huggingface_hub import constants

    if chunk:
        monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", chunk)
    hub.cut["model.safetensors"] = 1
    loaded = load()
    assert same_weights(loaded, revisions[0])
    assert hub.ranges[0] is None and len(hub.ranges) == 2
    assert (hub.ranges[1] is None) == (chunk is None), hub.ranges  # resumed where it broke off
    assert_consistent(hub.cache, revisions[0])


def test_a_download_cut_off_whose_retry_fails_fails_cleanly_and_leaves_nothing_used_later(hub, revisions):
    hub.cut["model.safetensors"] = 1
    hub.fail_retry = True
    with pytest.raises(DownloadError) as err:
        load()
    one_line(err, f"{REPO}@main", "HTTP 500", "--checkpoint DIR")
    sha = hashlib.sha256(revisions[0]["model.safetensors"]).hexdigest()
    leftovers = [k for k in cache_state(hub.cache) if k.endswith(".incomplete") or sha in k]
    assert leftovers == []
    hub.fail_retry = False  # the next load downloads again and gets the right file
    assert same_weights(load(), revisions[0])
    assert_consistent(hub.cache, revisions[0])


def test_a_file_that_does_not_match_its_announced_sha256_is_refused(hub, revisions):
    good = revisions[0]["model.safetensors"]
    hub.tamper["model.safetensors"] = good[:-8] + b"tampered"  # same size: passes the size check
    with pytest.raises(DownloadError) as err:
        load()
    one_line(err, REPO, "main", "model.safetensors", "sha256")
    sha = hashlib.sha256(good).hexdigest()
    assert not [k for k in cache_state(hub.cache) if sha in k]  # deleted, nothing to pick up later
    hub.tamper.clear()
    assert same_weights(load(), revisions[0])
    assert_consistent(hub.cache, revisions[0])


def test_a_cached_file_corrupted_on_disk_is_downloaded_again(hub, revisions):
    load()
    sha = hashlib.sha256(revisions[0]["model.safetensors"]).hexdigest()
    blob = hub.cache / f"models--{REPO.replace('/', '--')}" / "blobs" / sha
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert same_weights(load(), revisions[0])
    assert hub.count("/cdn/") == 2
    assert_consistent(hub.cache, revisions[0])


def test_offline_with_a_cold_cache_fails_fast_naming_the_repo(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        load()
    elapsed = time.monotonic() - start
    assert elapsed < 2.0, elapsed
    one_line(err, f"{REPO}@main", "HF_HUB_OFFLINE", "--checkpoint DIR", "checkpoint=")
    assert hub.requests == []


@pytest.mark.parametrize(
    "case, words",
    [
        ("no network", ["cannot connect to http://127.0.0.1:"]),
        ("silent server", ["no answer from", "within 1 s", "ZOO_HUB_TIMEOUT"]),
        ("unknown revision", ["no such revision"]),
        ("unknown repo", ["no such repository"]),
    ],
)
def test_failures_are_one_line_download_errors(hub, monkeypatch, case, words):
    from zoo.hub import fetch

    repo, revision = REPO, "main"
    if case == "no network":
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    elif case == "silent server":
        monkeypatch.setenv("ZOO_HUB_TIMEOUT", "1")
        hub.hang = True  # accepts the connection, never answers
    elif case == "unknown revision":
        revision = "no-such-branch"
    else:
        repo = "zoo-test/missing"
    with pytest.raises(DownloadError) as err:
        fetch(repo, revision)
    one_line(err, f"{repo}@{revision}", "--checkpoint DIR", *words)
    if case == "silent server":
        assert hub.count() == 1  # one request, timed out, not retried


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    ready, go = Path(sys.argv[1]), Path(sys.argv[2])
    from zoo.hub import fetch
    from huggingface_hub import HfApi, snapshot_download  # the slow imports, before the start line
    ready.touch()
    while not go.exists():
        time.sleep(0.005)
    print(fetch(sys.argv[3], "main"))
    """
)


def test_two_processes_loading_into_a_cold_cache_at_once_both_succeed(hub, revisions, tmp_path):
    hub.slow = 1.0  # keep both downloads in flight together
    env = {**os.environ, **hub.env, "PYTHONPATH": os.pathsep.join(sys.path)}
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / f"ready{i}"), str(go), REPO],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        outs = [p.communicate(timeout=30) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    folders = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(folders) == 1
    # Both found a cold cache and went to the server (repo info: zoo's check + snapshot_download's).
    assert hub.count(f"/api/models/{REPO}/revision/") == 2 * 2, hub.requests
    assert_consistent(hub.cache, revisions[0])
    before = len(hub.requests)
    assert same_weights(load(), revisions[0])  # from the cache both wrote
    assert len(hub.requests) == before
