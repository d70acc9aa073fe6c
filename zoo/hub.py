"""Finding a checkpoint's files: the Hugging Face cache, or a Hub download.

:func:`fetch` is what ``zoo.load`` calls for a catalog entry. It goes through ``huggingface_hub``
(the cache is the one transformers uses; progress bars on a terminal) and adds what that library
does not do by itself:

- **cache first, no request**: a snapshot already in the cache (with its weights) is used
  without asking the Hub, so a second load works offline and costs nothing. A cached branch
  (``main``) is therefore not refreshed; catalog entries pin commit shas where known.
- **offline fails fast**: ``HF_HUB_OFFLINE=1`` and a cold cache raise at once, naming the repo
  and how to pass a local folder.
- **bounded waits**: every request huggingface_hub makes during a fetch gets connect/read/write
  timeouts of at most ``ZOO_HUB_TIMEOUT`` seconds (default 10). huggingface_hub's own API calls
  (repo info, file list) pass no timeout at all and would wait forever on a server that accepts
  the connection and never answers.
- **integrity**: huggingface_hub checks only the size of a downloaded file. zoo checks that every
  LFS file (weights) hashes to the sha256 the Hub announced (``X-Linked-Etag``, which names the
  blob in the cache); a mismatch deletes the file and raises. A verified blob is marked (size and
  mtime in ``<repo cache>/.zoo-verified/<sha256>``) so it is hashed once, not on every load.

Downloads are safe to run in parallel processes: huggingface_hub writes each blob to a
process-unique temporary file and renames it into place. A download cut off mid-file is retried
up to 5 times, resuming (``Range``) from the last 10 MB chunk written; a download that fails
leaves no file behind.

``HF_ENDPOINT``, ``HF_HUB_CACHE`` / ``HF_HOME`` and ``HF_HUB_OFFLINE`` are read when
:func:`fetch` is called (huggingface_hub reads some of them once, at import).

Every failure is a :class:`zoo.errors.DownloadError` with one line naming repo and revision, what
went wrong and what to do.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Iterator, List, Optional

from .errors import DownloadError

# What a checkpoint folder needs: weights, config, tokenizer and preprocessing files.
PATTERNS: List[str] = [
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "*.spm",
    "sentencepiece.bpe.model",
]
PICKLE_PATTERNS = ["pytorch_model.bin", "pytorch_model*.bin", "pytorch_model.bin.index.json"]

DEFAULT_TIMEOUT = 10.0
_TRUE = ("1", "true", "yes", "on")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MARKERS = ".zoo-verified"


# -- settings, read at call time -----------------------------------------------------------------
def _timeout() -> float:
    """``ZOO_HUB_TIMEOUT`` in seconds (positive number), else 10."""
    raw = os.environ.get("ZOO_HUB_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise DownloadError(f"ZOO_HUB_TIMEOUT={raw!r} is not a number of seconds (e.g. ZOO_HUB_TIMEOUT=30)") from None
    if not value > 0:
        raise DownloadError(f"ZOO_HUB_TIMEOUT={raw!r} must be a positive number of seconds")
    return value


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) now, or huggingface_hub's own offline flag."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return False
    # Set at its import: its requests would all fail with OfflineModeIsEnabled anyway.
    return bool(constants.HF_HUB_OFFLINE) and "HF_HUB_OFFLINE" not in os.environ


def cache_dir() -> Path:
    """The Hub cache: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.path.expandvars(os.environ[name])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
    )
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _hint(repo: str, revision: str) -> str:
    rev = "" if revision == "main" else f" --revision {revision}"
    return (
        f"fetch it on a machine with network (`hf download {repo}{rev}`) and copy the Hugging Face cache, "
        f"or pass a local folder with config.json and the weights: --checkpoint DIR / checkpoint='DIR'"
    )


# -- bounded requests ----------------------------------------------------------------------------
_active = 0
_active_lock = threading.Lock()


def _bound_timeout(request) -> None:
    """httpx request hook: cap every timeout (None = wait forever) at ZOO_HUB_TIMEOUT during a fetch."""
    if not _active:
        return
    limit = _timeout()
    given = request.extensions.get("timeout") or {}
    bounded = {k: limit if given.get(k) is None else min(given[k], limit) for k in ("connect", "read", "write", "pool")}
    request.extensions = {**request.extensions, "timeout": bounded}


@contextlib.contextmanager
def _bounded_requests() -> Iterator[None]:
    """Install :func:`_bound_timeout` on huggingface_hub's shared HTTP client while a fetch runs.

    The hook is added to whatever client huggingface_hub uses (its own or one set with
    ``set_client_factory``) and does nothing outside :func:`fetch`.
    """
    global _active
    from huggingface_hub.utils import get_session

    session = get_session()
    hooks = session.event_hooks
    if _bound_timeout not in hooks["request"]:
        session.event_hooks = {**hooks, "request": [*hooks["request"], _bound_timeout]}
    with _active_lock:
        _active += 1
    try:
        yield
    finally:
        with _active_lock:
            _active -= 1


# -- the cache -----------------------------------------------------------------------------------
def _complete(folder: Path, allow_pickle: bool) -> bool:
    """Whether a snapshot folder holds a full set of weights (every shard an index names)."""
    indexes = ["model.safetensors.index.json"] + (["pytorch_model.bin.index.json"] if allow_pickle else [])
    for name in indexes:
        index = folder / name
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError):
                return False
            return all((folder / s).is_file() for s in shards)
    if any(p.is_file() for p in folder.glob("*.safetensors")):
        return True
    return allow_pickle and (folder / "pytorch_model.bin").is_file()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(folder: Path) -> List[str]:
    """Check each LFS file of a snapshot against the sha256 that names its blob.

    A file that does not match is deleted (blob and snapshot link) so that nothing uses it;
    returns the names of those files. Blobs that passed are marked and not hashed again. Only
    blobs that resolve inside this repo's own ``blobs/`` folder are judged (and ever deleted): a
    link that leads anywhere else is not the Hub's, and is an error that deletes nothing.
    """
    storage = folder.parent.parent  # <cache>/models--org--name/snapshots/<commit>
    blobs = Path(os.path.realpath(storage / "blobs"))
    bad = []
    for root, _dirs, names in os.walk(folder, followlinks=False):
        for name in sorted(names):
            path = Path(root) / name
            blob = Path(os.path.realpath(path))
            if not _SHA256.fullmatch(blob.name) or not blob.is_file():
                continue  # a git file (named by its sha1), or a cache without symlinks: nothing announced
            if blob.parent != blobs:
                raise DownloadError(
                    f"{path} in the Hugging Face cache leads to {blob}, outside the cache's blobs/ "
                    f"folder; zoo neither uses nor deletes it: remove that link, or pass --checkpoint DIR"
                )
            if not _checked(blob, storage):
                for p in (blob, path):
                    with contextlib.suppress(OSError):
                        p.unlink()
                bad.append(str(path.relative_to(folder)))
    return sorted(bad)


def _checked(blob: Path, storage: Path) -> bool:
    """Whether ``blob`` hashes to its name (remembered by size and mtime, so hashed once)."""
    marker = storage / _MARKERS / blob.name
    stat = blob.stat()
    stamp = f"{stat.st_size} {stat.st_mtime_ns}"
    try:
        if marker.read_text() == stamp:
            return True
    except OSError:
        pass
    try:
        ok = _sha256(blob) == blob.name
    except OSError:  # deleted under us by another process that found it bad
        return False
    if ok:
        with contextlib.suppress(OSError):
            marker.parent.mkdir(parents=True, exist_ok=True)
            tmp = marker.with_name(f"{marker.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(stamp)
            os.replace(tmp, marker)
    return ok


def _cached(repo: str, revision: str, patterns: List[str], allow_pickle: bool, cache: Path) -> Optional[Path]:
    """The cached snapshot of repo@revision with complete, verified weights, without any request."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(
            snapshot_download(repo, revision=revision, allow_patterns=patterns, local_files_only=True, cache_dir=cache)
        )
    except (LocalEntryNotFoundError, FileNotFoundError):  # also IncompleteSnapshotError
        return None
    if not _complete(folder, allow_pickle) or _verify(folder):
        return None
    return folder


def cached(repo: str, revision: str = "main", allow_pickle: bool = False) -> Optional[Path]:
    """The folder of ``repo`` at ``revision`` in the Hugging Face cache with complete, verified
    weights, or None; never makes a request (``zoo info`` says whether a model runs offline)."""
    patterns = PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])
    try:
        return _cached(repo, revision or "main", patterns, allow_pickle, cache_dir())
    except DownloadError:  # a cache that is not zoo's to judge: not usable as it is
        return None


# -- errors --------------------------------------------------------------------------------------
def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _reason(exc: BaseException, url: str) -> str:
    """What went wrong, in a few words, from an exception raised by huggingface_hub or httpx."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    for e in _chain(exc):
        if isinstance(e, GatedRepoError):
            return "the repository is gated: accept its terms on the Hub and log in (`hf auth login`)"
        if isinstance(e, RevisionNotFoundError):
            return "the repository has no such revision (branch, tag or commit sha)"
        if isinstance(e, RepositoryNotFoundError):
            return "no such repository (or it is private: log in with `hf auth login`)"
        if isinstance(e, OfflineModeIsEnabled):
            return "huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was imported)"
        if isinstance(e, httpx2.TimeoutException):
            return f"no answer from {url} within {_timeout():g} s (set ZOO_HUB_TIMEOUT to wait longer)"
        if isinstance(e, (httpx2.ConnectError, ConnectionError)):
            return f"cannot connect to {url} (no network?)"
        if isinstance(e, httpx2.RemoteProtocolError):
            return f"the connection to {url} broke off ({_first_line(e)})"
        if isinstance(e, HfHubHTTPError) and e.response is not None:
            return f"HTTP {e.response.status_code} from {url}"
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else exc.__class__.__name__)[:200]


# -- the entry point -----------------------------------------------------------------------------
def fetch(repo: str, revision: str = "main", allow_pickle: bool = False) -> Path:
    """Folder of ``repo`` at ``revision``: from the cache if there, else downloaded and verified.

    Raises :class:`DownloadError` when neither works: within a second when offline, within
    about ``ZOO_HUB_TIMEOUT`` seconds when the Hub cannot be reached.
    """
    revision = revision or "main"
    where = f"{repo}@{revision}"
    patterns = PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])
    cache = cache_dir()
    folder = _cached(repo, revision, patterns, allow_pickle, cache)
    if folder is not None:
        return folder
    if offline():
        raise DownloadError(
            f"{where} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set; {_hint(repo, revision)}"
        )

    from huggingface_hub import HfApi, snapshot_download

    url = endpoint()
    try:
        limit = _timeout()
    except DownloadError as exc:
        raise DownloadError(f"cannot download {where}: {exc}") from None
    with _bounded_requests():
        try:
            # One plain request first: a dead or silent Hub fails here after one timeout, instead
            # of after the retries with back-off of the file listing.
            HfApi(endpoint=url).repo_info(repo, revision=revision, timeout=limit)
            folder = Path(
                snapshot_download(
                    repo,
                    revision=revision,
                    allow_patterns=patterns,
                    cache_dir=cache,
                    endpoint=url,
                    etag_timeout=limit,
                )
            )
        except Exception as exc:  # network down, DNS, timeouts, HTTP errors, cut-off downloads
            raise DownloadError(f"cannot download {where}: {_reason(exc, url)}; {_hint(repo, revision)}") from None
    bad = _verify(folder)
    if bad:
        raise DownloadError(
            f"downloaded {where} but {', '.join(bad)} does not match the sha256 the Hub announced; "
            f"the file was deleted, try again (a proxy or mirror may be serving other content)"
        )
    if not _complete(folder, allow_pickle):
        pickled = "" if allow_pickle else " (pickle weights are only fetched with allow_pickle=True / --allow-pickle)"
        raise DownloadError(f"downloaded {where} but it has no safetensors weights{pickled}")
    return folder
