"""Reading checkpoint folders: config.json, safetensors (memory-mapped), sharded indexes.

safetensors files are parsed here rather than through a library so that every defect gets an
error naming the file and the tensor, and so that tensors are zero-copy views of a private
(copy-on-write) memory map: loading costs no copy, and nothing ever writes to the input file.
Pickled ``.bin``/``.pt`` weights are refused unless the caller opts in, and even then are read
with ``torch.load(weights_only=True)``, which executes no code.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import weakref
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch

from . import fields
from .errors import CheckpointError

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_NAMES = ("pytorch_model.bin", "model.pt", "model.bin")
LFS_MAGIC = b"version https://git-lfs"
ZOO_META = "zoo.json"  # what marks a folder written by `zoo convert --to zoo`
ZOO_FORMAT = "zoo-native/1"
MAX_HEADER = 100 * 1024 * 1024

# the private maps of the safetensors files read so far (by start address), and the byte ranges
# zoo itself has written in each: release() gives back only pages nothing has written
_MAPS: "weakref.WeakValueDictionary[int, mmap.mmap]" = weakref.WeakValueDictionary()
_WRITTEN: Dict[int, List[tuple]] = {}


@dataclass
class WeightFiles:
    """The weight files of one checkpoint and their format."""

    paths: List[Path]
    format: str  # "safetensors" or "pickle"
    weight_map: Optional[Dict[str, str]] = None  # a sharded checkpoint's index: key -> shard file name
    index: Optional[Path] = None


def _check_not_lfs_pointer(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(len(LFS_MAGIC))
    if head == LFS_MAGIC:
        raise CheckpointError(
            f"{path}: is a Git LFS pointer, not the weights — run `git lfs pull` in that folder"
        )


def read_zoo_meta(folder: Path) -> dict:
    """The ``zoo.json`` of a folder written by ``zoo convert --to zoo``: its architecture,
    converter, task and config (what the tensors, already in zoo's names, were converted with)."""
    path = Path(folder) / ZOO_META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("format") != ZOO_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {ZOO_FORMAT!r}")
        for key, kind in (("architecture", str), ("converter", str), ("task", str), ("config", dict)):
            if not isinstance(meta[key], kind):
                raise TypeError(f"{key} must be a {kind.__name__}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: not a zoo-native checkpoint description: {exc}") from None
    return meta


def read_config(folder: Path) -> dict:
    """``config.json`` of a checkpoint folder, with a clear error when malformed."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no config.json (a Hugging Face checkpoint folder has one)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: must hold a JSON object, got {type(config).__name__}")
    return config


# The decoding defaults zoo takes from generation_config.json, with what each value must be.
# Other entries of the file (transformers' output switches, its version) are not model settings.
GENERATION_FIELDS = {
    "bos_token_id": fields.TOKEN_IDS,
    "eos_token_id": fields.TOKEN_IDS,
    "pad_token_id": fields.TOKEN_ID,
    "decoder_start_token_id": fields.TOKEN_ID,
    "forced_bos_token_id": fields.TOKEN_ID,
    "forced_eos_token_id": fields.TOKEN_ID,
    "bad_words_ids": (
        lambda v: isinstance(v, list) and all(isinstance(w, list) and w and all(fields.TOKEN_ID[0](t) for t in w) for w in v),
        "a list of token-id lists, e.g. [[58100]]",
    ),
    "max_length": fields.COUNT,
    "max_new_tokens": fields.COUNT,
    "num_beams": fields.COUNT,
    "length_penalty": fields.NUMBER,
    "early_stopping": (lambda v: isinstance(v, bool) or v == "never", 'true, false or "never"'),
    "renormalize_logits": fields.FLAG,
    "do_sample": fields.FLAG,
    "temperature": (lambda v: fields.NUMBER[0](v) and v >= 0, "a finite number >= 0"),
    "top_k": fields.TOKEN_ID[:1] + ("an integer >= 0",),
    "top_p": (lambda v: fields.NUMBER[0](v) and 0 < v <= 1, "a number in (0, 1]"),
}


def read_generation_config(folder: Path) -> dict:
    """The decoding defaults in a checkpoint folder's ``generation_config.json`` ({} without one).

    Only the fields of :data:`GENERATION_FIELDS` are returned, each type-checked; ``null`` means
    unset and is left out. A malformed file raises :class:`CheckpointError` naming the file and
    the field.
    """
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    out = {}
    for key, (valid, what) in GENERATION_FIELDS.items():
        value = data.get(key)
        if value is None:
            continue
        if not valid(value):
            raise CheckpointError(f"{path}: field {key} must be {what}, got {json.dumps(value)}")
        out[key] = value
    return out


# weights of other frameworks a Hub folder may hold instead: file -> framework
OTHER_FRAMEWORKS = {"tf_model.h5": "TensorFlow", "tf_model.h5.index.json": "TensorFlow",
                    "flax_model.msgpack": "Flax", "flax_model.msgpack.index.json": "Flax"}


def find_weights(folder: Path, allow_pickle: bool = False) -> WeightFiles:
    """Locate the weights in a folder: sharded or single safetensors, else (opt-in) pickles."""
    folder = Path(folder)
    for index_name, fmt in ((SAFETENSORS_INDEX, "safetensors"), (PICKLE_INDEX, "pickle")):
        index = folder / index_name
        if index.is_file():
            if fmt == "pickle" and any(folder.glob("*.safetensors")):
                break
            weight_map = _read_index(index)
            if fmt == "pickle":
                refuse_pickle(index, allow_pickle)
            shards = sorted(set(weight_map.values()))
            return WeightFiles([folder / s for s in shards], fmt, weight_map, index)
    single = folder / "model.safetensors"
    if single.is_file():
        return WeightFiles([single], "safetensors")
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return WeightFiles(found, "safetensors")
    if len(found) > 1:
        raise CheckpointError(
            f"{folder}: several .safetensors files and no {SAFETENSORS_INDEX} to say how they "
            f"fit together: {', '.join(p.name for p in found)}"
        )
    for name in PICKLE_NAMES:
        if (folder / name).is_file():
            refuse_pickle(folder / name, allow_pickle)
            return WeightFiles([folder / name], "pickle")
    other = [name for name in OTHER_FRAMEWORKS if (folder / name).is_file()]
    if other:
        try:  # the class that wrote them, for the conversion command
            cls = json.loads((folder / "config.json").read_text(encoding="utf-8"))["architectures"][0]
        except Exception:
            cls = "AutoModel"
        flag = "from_tf" if other[0].startswith("tf_") else "from_flax"
        raise CheckpointError(
            f"{folder}: holds only {OTHER_FRAMEWORKS[other[0]]} weights ({', '.join(other)}), which zoo does "
            f"not read; convert them with transformers: transformers.{cls}.from_pretrained(folder, "
            f"{flag}=True).save_pretrained(out), then load out"
        )
    raise CheckpointError(f"{folder}: no weights found (expected model.safetensors)")


def refuse_pickle(path: Path, allow_pickle: bool) -> None:
    if not allow_pickle:
        raise CheckpointError(
            f"{path}: is a pickle, which can run code when loaded; refusing. Convert it to "
            f"safetensors, or opt in with allow_pickle=True / --allow-pickle (read with "
            f"torch.load(weights_only=True))"
        )


def _read_index(index: Path) -> Dict[str, str]:
    """The index's weight map (key -> shard), its shards checked to be files beside it."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        weight_map = dict(data["weight_map"])
        shards = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index}: malformed index ({exc.__class__.__name__}: {exc})") from None
    for shard in shards:
        if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard.startswith("."):
            raise CheckpointError(f"{index}: invalid shard name {shard!r}")
        if not (index.parent / shard).is_file():
            raise CheckpointError(f"{index}: names shard {shard!r}, which is missing from {index.parent}")
    return weight_map


def read_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    """Tensors of one safetensors file as zero-copy views of a private memory map.

    The map is copy-on-write: writing to a tensor never reaches the file. Every structural
    defect (truncation, a corrupt header, offsets past the end, a size that does not match the
    shape) raises :class:`CheckpointError` naming the file and the tensor.
    """
    path = Path(path)
    _check_not_lfs_pointer(path)
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > MAX_HEADER or 8 + header_len > size:
            raise CheckpointError(
                f"{path}: corrupt or truncated safetensors header (claims {header_len} bytes, "
                f"file has {size})"
            )
        raw = f.read(header_len)
        try:
            header = json.loads(raw, object_pairs_hook=_unique_keys)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: corrupt safetensors header: {exc}") from None
        except _DuplicateKey as exc:
            raise CheckpointError(f"{path}: the safetensors header names tensor {exc.args[0]!r} twice") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
        header.pop("__metadata__", None)
        data_start = 8 + header_len
        data_len = size - data_start
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
    if buf is not None:
        base = torch.frombuffer(buf, dtype=torch.uint8, count=1).data_ptr()
        _MAPS[base] = buf
        _WRITTEN[base] = []
        weakref.finalize(buf, _WRITTEN.pop, base, None)
    tensors: Dict[str, torch.Tensor] = {}
    spans = []
    for name, info in header.items():
        try:
            dtype = DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: tensor {name!r}: malformed header entry ({exc})") from None
        numel = 1
        for d in shape:
            if d < 0:
                raise CheckpointError(f"{path}: tensor {name!r}: negative dimension in {shape}")
            numel *= d
        nbytes = numel * dtype.itemsize
        if not 0 <= begin <= end or end - begin != nbytes:
            raise CheckpointError(
                f"{path}: tensor {name!r}: offsets {begin}..{end} do not fit shape {shape} "
                f"of {info['dtype']} ({nbytes} bytes)"
            )
        if end > data_len:
            raise CheckpointError(
                f"{path}: truncated: tensor {name!r} needs bytes up to {end}, the file holds "
                f"{data_len} bytes of data"
            )
        spans.append((begin, end, name))
        if numel == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:
            flat = torch.frombuffer(buf, dtype=dtype, count=numel, offset=data_start + begin)
            tensors[name] = flat.view(shape)
    _check_layout(path, spans, data_len)
    return tensors


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _check_layout(path: Path, spans, data_len: int) -> None:
    """As strict as the safetensors library: the tensors' bytes follow one another from the
    start of the data, without overlap or gap, and end where the file ends. (Two tensors on the
    same bytes would load as a different model than the one saved.)"""
    at, previous = 0, None
    for begin, end, name in sorted(spans):
        if begin < at:
            raise CheckpointError(f"{path}: tensors {previous!r} and {name!r} overlap (bytes {begin}..{at})")
        if begin > at:
            raise CheckpointError(f"{path}: {begin - at} bytes before tensor {name!r} belong to no tensor")
        at, previous = end, name
    if at != data_len:
        raise CheckpointError(f"{path}: {data_len - at} bytes after the last tensor belong to no tensor")


def _span(t: torch.Tensor) -> tuple:
    """(first byte address, byte length) of the memory a tensor (or a strided view) covers."""
    elements = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
    return t.data_ptr(), elements * t.element_size()


def _mapping_of(t: torch.Tensor):
    """(start address, map) of the checkpoint map holding all of ``t``, or (None, None)."""
    if t.device.type != "cpu" or t.numel() == 0:
        return None, None
    start, length = _span(t)
    for base, buf in list(_MAPS.items()):
        if base <= start and start + length <= base + len(buf):
            return base, buf
    return None, None


def write_in_place(target: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``target.copy_(values)`` for a tensor viewing a checkpoint map (its copy-on-write pages
    take the values; the file is never written), remembered so :func:`release` keeps them."""
    base, _ = _mapping_of(target)
    target.copy_(values)
    if base is not None:
        _WRITTEN[base].append(_span(target))
    return target


def release(t: torch.Tensor) -> int:
    """Give the pages of a tensor that views a checkpoint map back to the page cache; returns
    the bytes released (0 for a tensor that is not in such a map).

    The tensor stays valid: its pages are re-read from the file if it is touched again, which
    gives the same values because only pages nothing has written are released (a page that
    zoo rewrote, see :func:`write_in_place`, or that is shared with a neighbouring tensor,
    stays). The loader calls this after packing a weight it will not read again.
    """
    base, buf = _mapping_of(t)
    if base is None:
        return 0
    start, length = _span(t)
    page = mmap.PAGESIZE
    lo = -(-(start - base) // page) * page
    hi = (start + length - base) // page * page
    for w_start, w_len in _WRITTEN.get(base, ()):  # keep every page zoo has written
        w_lo, w_hi = w_start - base, w_start - base + w_len
        if w_lo < hi and lo < w_hi:
            return 0
    if hi <= lo:
        return 0
    buf.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    return hi - lo


def _check_crcs(path: Path) -> None:
    """Every entry of a zip archive against its CRC-32, reading it through. An entry whose CRC
    is recorded as 0 is not checked: torch can save without computing them
    (``torch.utils.serialization.config.save.compute_crc32 = False``), and loads such files."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 or info.is_dir():
                    continue
                try:
                    with archive.open(info) as f:  # zipfile checks the CRC at the end of the entry
                        while f.read(1 << 22):
                            pass
                except zipfile.BadZipFile:
                    raise CheckpointError(f"{path}: damaged: {info.filename} in the archive fails its CRC check") from None
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: damaged zip archive ({exc})") from None


def read_pickle(path: Path) -> Dict[str, torch.Tensor]:
    """A pickled state dict, read with ``weights_only=True`` (no code runs). A zip archive (what
    ``torch.save`` writes) must pass its CRC checks first: torch's reader does not check them."""
    _check_not_lfs_pointer(path)
    if zipfile.is_zipfile(path):
        _check_crcs(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: refused or unreadable pickle ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    return state


def read_weights(files: WeightFiles) -> Dict[str, torch.Tensor]:
    """All tensors of a checkpoint; a key present in two shards is an error."""
    out: Dict[str, torch.Tensor] = {}
    for path in files.paths:
        part = read_safetensors(path) if files.format == "safetensors" else read_pickle(path)
        for key in part:
            if key in out:
                raise CheckpointError(f"{path}: tensor {key!r} also appears in another shard")
            if files.weight_map is not None and files.weight_map.get(key) != path.name:
                where = files.weight_map.get(key)
                if where is None:
                    raise CheckpointError(f"{files.index}: does not list tensor {key!r}, which {path.name} holds")
                raise CheckpointError(f"{files.index}: says tensor {key!r} is in {where!r}, but {path.name} holds it")
        out.update(part)
    if files.weight_map is not None:
        missing = sorted(set(files.weight_map) - set(out))
        if missing:
            raise CheckpointError(f"{files.index}: lists tensor {missing[0]!r} in {files.weight_map[missing[0]]!r}, "
                                  f"which does not hold it ({len(missing)} such)")
    return out


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def save_safetensors(tensors: Dict[str, torch.Tensor], path: Path, metadata: Optional[dict] = None) -> None:
    """Write tensors atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
