"""Finding a checkpoint's files: a local folder, the Hugging Face cache, or a Hub download.

Downloads go through ``huggingface_hub`` (progress bars on, the cache shared with
transformers). ``HF_HUB_OFFLINE=1`` or an unreachable network never hangs: a checkpoint that is
not cached fails fast with a message naming the repo and how to pass a local folder.
``ZOO_HUB_TIMEOUT`` (seconds, default 10) bounds each network request.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

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


def _timeout() -> float:
    try:
        return float(os.environ.get("ZOO_HUB_TIMEOUT", "10"))
    except ValueError:
        return 10.0


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hint(repo: str) -> str:
    return (
        f"download it where there is network (`hf download {repo}`) or pass a local folder: "
        f"zoo.load(..., checkpoint='path/to/folder') / --checkpoint DIR"
    )


def fetch(repo: str, revision: str = "main", allow_pickle: bool = False) -> Path:
    """Folder of ``repo`` at ``revision``: from the cache, else downloaded.

    Raises :class:`DownloadError` when neither works, within seconds when offline.
    """
    # huggingface_hub parses these as integers
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(max(1, round(_timeout()))))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(max(1, round(_timeout()))))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])
    try:
        return Path(
            snapshot_download(repo, revision=revision, allow_patterns=patterns, local_files_only=True)
        )
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    if offline():
        raise DownloadError(f"{repo}@{revision} is not in the local cache and HF_HUB_OFFLINE is set; {_hint(repo)}")
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns, etag_timeout=_timeout()))
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise DownloadError(f"{repo}@{revision}: {exc.__class__.__name__} on the Hub") from None
    except Exception as exc:  # network down, DNS, timeouts, HTTP errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise DownloadError(f"cannot download {repo}@{revision} ({first[:200]}); {_hint(repo)}") from None
