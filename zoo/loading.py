"""The loading pipeline: name / alias / folder -> ready ``torch.nn.Module``.

    resolve       registry entry, alias, or local checkpoint folder/file -> ModelEntry
    locate        local folder | Hugging Face cache | Hub download
    configure     the entry's config < config.json < generation_config.json < overrides,
                  then the converter's translation into the architecture's own names
    read          safetensors, memory-mapped (pickle only when opted in)
    convert       the converter's key map, strict accounting
    build         the architecture on the meta device (no random init)
    load          load_state_dict(assign=True); nothing left on meta
    place         device and dtype; eval mode; or, with a device map, accelerate's dispatch
                  over GPUs, CPU and disk (zoo.placement)
    pack          CPU float32: Linear weights also in MKL's packed layout, plain pages released

Nothing here knows a particular architecture: that lives in plugins and converters.
"""
from __future__ import annotations

import difflib
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch

from . import accel
from . import checkpoint as ckpt
from . import fields, hub, memory, placement, randomweights
from .convert import Report, convert
from .device import pick_device, pick_dtype
from .errors import CheckpointError, ConfigError, ConversionError, InputError, UnknownModelError
from .registry import Catalog, get_catalog, task_for
from .types import Architecture, Converter, Map, ModelEntry, import_ref


@dataclass
class Loaded:
    """A loaded model with everything known about where it came from."""

    model: torch.nn.Module
    entry: ModelEntry
    architecture: Architecture
    converter: Converter
    config: Dict[str, Any]  # the checkpoint format's config (config.json, generation settings)
    task: str
    device: torch.device
    dtype: torch.dtype
    folder: Optional[Path] = None
    files: List[Path] = field(default_factory=list)
    report: Optional[Report] = None
    random_seed: Optional[int] = None  # the weights are seeded random ones (zoo.randomweights)
    arch_config: Dict[str, Any] = field(default_factory=dict)  # the architecture's own names


def _is_path(name: str) -> bool:
    p = Path(name).expanduser()
    return p.exists() or name.startswith((".", "/", "~")) or name.endswith(".safetensors")


def resolve(name_or_path: str, catalog: Optional[Catalog] = None) -> ModelEntry:
    """The catalog entry for a name or alias (or a synthesized entry for a local checkpoint)."""
    catalog = catalog or get_catalog()
    entry = catalog.find(name_or_path)
    if entry is not None:
        return entry
    if _is_path(name_or_path):
        return _entry_for_path(Path(name_or_path).expanduser(), catalog)
    raise UnknownModelError(catalog.unknown_message(name_or_path))


def _entry_for_path(path: Path, catalog: Catalog, overrides: Optional[Mapping[str, Any]] = None) -> ModelEntry:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    folder = path if path.is_dir() else path.parent
    if path.is_dir() and (path / ckpt.ZOO_META).is_file():  # written by `zoo convert --to zoo`
        meta = ckpt.read_zoo_meta(path)
        return ModelEntry(name=path.name, architecture=meta["architecture"], converter=meta["converter"],
                          task=meta["task"], config=meta["config"], origin=str(path), path=str(path))
    if (folder / "config.json").is_file():
        config = ckpt.read_config(folder)
        converter = catalog.converter_for_config(config, str(folder))
    else:
        converter, config = _sniff(path, catalog, overrides or {})
    arch = catalog.architecture(converter.architecture)
    return ModelEntry(
        name=path.name,
        architecture=arch.name,
        converter=converter.name,
        task=task_for(converter, arch, config),
        config=config,
        origin=str(path),
        path=str(path),
    )


def _sniff(path: Path, catalog: Catalog, overrides: Mapping[str, Any]):
    """A checkpoint without config.json: the converter whose key map accounts for every key,
    and the config it infers from the tensors."""
    from .convert import compile_key_map

    files = ckpt.WeightFiles([path], "safetensors") if path.is_file() else ckpt.find_weights(path)
    tensors = ckpt.read_weights(files)
    keys = list(tensors)
    for conv in sorted(catalog.converters.values(), key=lambda c: c.name):
        infer = conv.infer_config
        if infer is None:
            continue
        compiled = compile_key_map(conv)
        if keys and all(compiled.match(compiled.rename(k)) for k in keys):
            return conv, import_ref(infer)(tensors, dict(overrides))
    raise CheckpointError(
        f"{path}: has no config.json and no converter recognises its keys "
        f"(first keys: {', '.join(sorted(keys)[:5])})"
    )


def weight_files(entry: ModelEntry, checkpoint, allow_pickle: bool, revision: Optional[str]):
    """(folder, WeightFiles) for an entry, or (None, None) for an entry without weights."""
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.exists():
            raise CheckpointError(f"checkpoint {str(path)!r}: no such file or folder")
        if path.is_file():
            fmt = "safetensors" if path.suffix == ".safetensors" else "pickle"
            if fmt == "pickle":
                ckpt.refuse_pickle(path, allow_pickle)
            return path.parent, ckpt.WeightFiles([path], fmt)
        return path, ckpt.find_weights(path, allow_pickle)
    if entry.path is not None:  # a local checkpoint resolved by path
        path = Path(entry.path)
        if path.is_file():
            return path.parent, ckpt.WeightFiles([path], "safetensors")
        return path, ckpt.find_weights(path, allow_pickle)
    if entry.repo is None:
        return None, None
    folder = hub.fetch(entry.repo, revision or entry.revision, allow_pickle)
    return folder, ckpt.find_weights(folder, allow_pickle)


_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)


@contextmanager
def _skip_init():
    """Make ``torch.nn.init`` a no-op while a model is built on the meta device.

    The values would be replaced by the checkpoint's anyway, and the first meta-device init
    call makes torch import its decomposition machinery: seconds of a cold start for nothing.
    """
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    for name in _INIT_FUNCTIONS:
        setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def build_model(arch: Architecture, config: Mapping[str, Any], task: str, meta: bool = True,
                itemsize: int = 4, device=None, source: Optional[Mapping[str, Any]] = None):
    """The architecture's module from its own config (``Converter.architecture_config``): on
    the meta device, uninitialized (``meta=True``), or built for real with its own
    initialization (for training from scratch). First, the parameters
    the config asks for (``Architecture.parameter_count``, at ``itemsize`` bytes each) must fit
    in the memory of ``device`` (zoo.memory; an error names the sizes of ``source``, the config
    as its file spells it)."""
    memory.check_size(arch, config, task, itemsize, device, source)
    if meta:
        with torch.device("meta"), _skip_init():
            return arch.build(config, task)
    return arch.build(config, task)


def convert_for_task(tensors, converter: Converter, expected, task: str, entry: ModelEntry):
    """:func:`zoo.convert.convert` for the model built for ``task``; when that is not the
    checkpoint's own task and the keys do not fit, the error says which task the checkpoint is."""
    try:
        return convert(tensors, converter, expected)
    except ConversionError as exc:
        if task == entry.task:
            raise
        raise ConversionError(f"{exc} — {entry.name} is a {entry.task} checkpoint: load it as that "
                              f"(task={entry.task!r}, --task {entry.task}), or ask for a task its weights have") from None


def check_task(arch: Architecture, task: str) -> None:
    if task not in arch.tasks:
        raise UnknownModelError(f"architecture {arch.name!r} has no task {task!r} (tasks: {', '.join(arch.tasks)})")


def configure(entry: ModelEntry, folder: Optional[Path], converter: Optional[Converter] = None) -> Dict[str, Any]:
    """The config an architecture gets: the catalog entry's, then the checkpoint folder's
    config.json over it (each value of the kind ``converter.config_fields`` says), then its
    generation_config.json over that (transformers reads decoding defaults from there;
    config.json's copies of them are legacy). A config.json that names its labels (any of
    :data:`zoo.fields.LABEL_FIELDS`) replaces the entry's as a whole: a fine-tuned folder's
    ``id2label`` is not outvoted by the entry's ``num_labels``."""
    config = dict(entry.config)
    if folder is not None and (folder / "config.json").is_file():
        read = ckpt.read_config(folder)
        if converter is not None:
            fields.check(read, converter.config_fields, str(folder / "config.json"), ConfigError)
        if any(read.get(k) is not None for k in fields.LABEL_FIELDS):
            for k in fields.LABEL_FIELDS:
                config.pop(k, None)
        config.update(read)
        config.update(ckpt.read_generation_config(folder))
    return config


def load_full(
    name_or_path: Union[str, Path],
    *,
    checkpoint: Union[str, Path, None] = None,
    device: Optional[str] = "auto",
    dtype=None,
    allow_pickle: bool = False,
    revision: Optional[str] = None,
    task: Optional[str] = None,
    converter: Optional[Converter] = None,
    config_overrides: Optional[Mapping[str, Any]] = None,
    fast: bool = True,
    random_weights: bool = False,
    seed: int = 0,
    device_map=None,
    max_memory: Optional[Mapping[Any, Any]] = None,
    offload_folder: Union[str, Path, None] = None,
) -> Loaded:
    """Run the whole pipeline and return the model with its provenance (:class:`Loaded`).
    ``fast=False`` skips the last step, the speed layer (:func:`zoo.accel.accelerate`).
    With ``device_map`` the model is loaded on the CPU, then placed by accelerate
    (:mod:`zoo.placement`; ``Loaded.device`` is the main device) without the speed layer."""
    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
        raise InputError(f"a model is a catalog name, an alias or a checkpoint path, not {name_or_path!r}")
    plan = placement.plan(device_map, max_memory, offload_folder, device)
    if plan is not None:
        fast = False  # accelerate's hooks wrap the blocks' forward: no fast paths
    catalog = get_catalog()
    name = str(name_or_path)
    entry = catalog.find(name)
    if entry is None:
        if not _is_path(name):
            raise UnknownModelError(catalog.unknown_message(name))
        entry = _entry_for_path(Path(name).expanduser(), catalog, config_overrides)
    arch = catalog.architecture(entry.architecture)
    converter = converter or catalog.converter(entry.converter)
    target_device = pick_device(device) if plan is None else torch.device("cpu")  # placed after loading
    target_dtype = pick_dtype(dtype, target_device if plan is None else plan.main_device)
    task = task or entry.task
    check_task(arch, task)

    if random_weights:
        checkpoint = randomweights.instead_of(checkpoint, entry, converter, task, seed)
    folder, files = weight_files(entry, checkpoint, allow_pickle, revision)
    config = configure(entry, folder, converter)
    check_overrides(config_overrides or {}, converter, config)
    fields.check(config_overrides or {}, converter.config_fields, "zoo.load()", ConfigError)
    config.update(config_overrides or {})

    if files is None:  # an entry without weights: fresh initialization, for training
        arch_config = converter.architecture_config(config)
        with torch.device(target_device):
            model = build_model(arch, arch_config, task, meta=False, itemsize=target_dtype.itemsize,
                                device=target_device, source=config)
        model.to(dtype=target_dtype).eval()
        if plan is not None:
            target_device = placement.dispatch(model, plan)
        return Loaded(model, entry, arch, converter, config, task, target_device, target_dtype, arch_config=arch_config)

    tensors = ckpt.read_weights(files)
    if converter.config_from_weights is not None:
        config = dict(import_ref(converter.config_from_weights)(config, list(tensors)))
    arch_config = converter.architecture_config(config)
    model = build_model(arch, arch_config, task, itemsize=target_dtype.itemsize, device=target_device, source=config)
    expected = model.state_dict()
    if folder is not None and (folder / ckpt.ZOO_META).is_file():
        # zoo-native: the tensors already carry zoo's names; the same strict accounting, one to one
        native = Converter(name=f"{converter.name} (zoo-native)", architecture=arch.name, model_types=(),
                           key_map=tuple(Map(key, key) for key in expected))
        state, report = convert(tensors, native, expected)
    else:
        state, report = convert_for_task(tensors, converter, expected, task, entry)
    # weights the speed layer packs are read in their packed copy only: their plain layout does not matter
    packed = accel.packable(model, target_device, target_dtype) if fast else set()
    if files.format == "safetensors":
        state = _contiguous_in_place(state, tensors, report, keep=packed)
    state = {k: _place(v, expected[k], target_device, target_dtype) for k, v in state.items()}
    _warn_non_finite(state, files)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # should not happen after convert's accounting
        raise ConversionError(f"{arch.name}: load_state_dict refused the converted weights: {exc}") from None
    with torch.device(target_device):
        for module in model.modules():
            if hasattr(module, "reset_buffers"):
                module.reset_buffers()
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise ConversionError(f"architecture {arch.name!r} left tensors uninitialized after loading: {', '.join(left[:8])}")
    model.eval().requires_grad_(False)
    if plan is not None:
        target_device = placement.dispatch(model, plan)
    if fast:
        # the packed copies are what forward reads: the plain weights' pages go back to the page
        # cache (re-read from the file if touched), so memory stays near the file's size
        accel.accelerate(model, arch, release=ckpt.release)
    return Loaded(model, entry, arch, converter, config, task, target_device, target_dtype, folder, files.paths, report,
                  random_seed=int(seed) if random_weights else None, arch_config=arch_config)


LOAD_KEYWORDS = ("checkpoint", "device", "dtype", "allow_pickle", "revision", "task", "fast", "random_weights", "seed",
                 "device_map", "max_memory", "offload_folder")


def check_overrides(overrides: Mapping[str, Any], converter: Converter, config: Mapping[str, Any]) -> None:
    """Each keyword of ``zoo.load`` beyond its own is a config field the converter reads
    (``Converter.config_fields``, or a decoding setting); anything else is an error naming the
    nearest valid name, never a value silently ignored. A converter that declares no fields
    (a plugin's) takes the fields its config has."""
    fields_read = set(converter.config_fields) or set(config)
    known = fields_read | set(ckpt.GENERATION_FIELDS)
    for key in overrides:
        if key in known:
            continue
        close = difflib.get_close_matches(key, list(LOAD_KEYWORDS) + sorted(known), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(
            f"zoo.load() got an unexpected keyword {key!r}{hint}: it takes {', '.join(LOAD_KEYWORDS)}, "
            f"or a config field {converter.name} reads: {', '.join(sorted(fields_read))}"
        )


def _contiguous_in_place(state, source, report, keep=frozenset()):
    """Lay transposed weights out contiguously without a second copy of the model in memory.

    A converter's transform may return a view (GPT-2's ``[in, out]`` weights as ``.t()``), and
    matrix-vector products over a transposed view run about half as fast. The source tensors
    are views of a private copy-on-write map of the file, so each one is rewritten in its own
    pages: a temporary of one tensor, the file never written, peak memory near the weights.
    Targets in ``keep`` are left as they are (weights that will be packed).
    """
    out = dict(state)
    for src_key, target in report.consumed.items():
        t, src = out[target], source[src_key]
        if t.is_contiguous() or target in keep:
            continue
        if src.is_contiguous() and t.data_ptr() == src.data_ptr() and t.numel() == src.numel():
            tmp = t.contiguous()
            out[target] = ckpt.write_in_place(src.view(-1), tmp.view(-1)).view(tmp.shape)
        else:
            out[target] = t.contiguous()
    return out


def _place(tensor: torch.Tensor, like: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if like.is_floating_point():
        return tensor.to(device=device, dtype=dtype)
    return tensor.to(device=device)


def non_finite(state: Mapping[str, torch.Tensor]) -> List[str]:
    """Names of floating tensors holding NaN or Inf.

    A sum is NaN/Inf whenever an element is, and costs no temporaries; only when it is not
    finite (or overflowed) is the tensor checked element-wise, in chunks.
    """
    bad = []
    for key, t in state.items():
        if not t.is_floating_point() or t.numel() == 0 or t.is_meta or bool(torch.isfinite(t.sum())):
            continue
        flat = t.reshape(-1)
        if any(not bool(torch.isfinite(c).all()) for c in flat.split(1 << 20)):
            bad.append(key)
    return bad


def _warn_non_finite(state: Mapping[str, torch.Tensor], files) -> None:
    bad = non_finite(state)
    if bad:
        warnings.warn(
            f"{files.paths[0]}: non-finite values (NaN/Inf) in {', '.join(bad[:8])}"
            + (f" (+{len(bad) - 8} more)" if len(bad) > 8 else ""),
            RuntimeWarning,
            stacklevel=3,
        )


def load(
    name_or_path: Union[str, Path],
    *,
    checkpoint: Union[str, Path, None] = None,
    device: Optional[str] = "auto",
    dtype=None,
    allow_pickle: bool = False,
    revision: Optional[str] = None,
    task: Optional[str] = None,
    fast: bool = True,
    random_weights: bool = False,
    seed: int = 0,
    device_map=None,
    max_memory: Optional[Mapping[Any, Any]] = None,
    offload_folder: Union[str, Path, None] = None,
    **config_overrides: Any,
) -> torch.nn.Module:
    """Load a model by registry name, alias, or local checkpoint folder; returns it in eval mode.

    :param name_or_path: ``"gpt2"``, ``"openai-community/gpt2"``, or ``"path/to/folder"``
        (config.json + model.safetensors, or a sharded index).
    :param checkpoint: where a registry entry's weights come from instead of the Hub.
    :param device: ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    :param dtype: ``None`` (float32), ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``.
    :param allow_pickle: read ``.bin`` pickles (with ``weights_only=True``); refused otherwise.
    :param revision: the Hub revision (branch, tag or commit sha) instead of the pinned one.
    :param task: build for another task the architecture supports (e.g. without a head).
    :param fast: apply the speed layer (zoo.accel: packed weights, fused products, decoding
        steps); ``False`` gives the plain model, the model file's modules only.
    :param random_weights: seeded random weights (``seed``) in the Hub's layout instead of the
        checkpoint, for trying zoo without the Hub: every step is real, outputs are meaningless
        (zoo.randomweights; kept in a cache folder, so the second time is fast).
    :param device_map: for a model larger than one device: ``"auto"`` (= ``"balanced"``),
        ``"balanced"`` or ``"sequential"`` has accelerate spread its blocks over the GPUs, the
        CPU and disk; or a dict ``{module name: device}`` ("cpu", "cuda:1", 1, "disk"). The
        rest (embeddings, heads) stays on the main device, where inputs go. Needs accelerate
        (``pip install 'zoo[big]'``); ``device`` stays at auto; no speed layer (``fast`` is
        ignored: accelerate's hooks wrap forward); ``dtype`` applies. ``model.hf_device_map``
        is the map used (zoo.placement).
    :param max_memory: with a device map strategy, the most each device may hold, e.g.
        ``{0: "10GiB", "cpu": "30GiB"}`` (bytes or strings); default: what is free.
    :param offload_folder: the folder in which weights placed on disk get a temporary folder of
        their own, removed with the model (default: the system's temporary folder).
    :param config_overrides: config values the weights cannot tell (e.g. ``heads=8``).
    """
    return load_full(
        name_or_path,
        checkpoint=checkpoint,
        device=device,
        dtype=dtype,
        allow_pickle=allow_pickle,
        revision=revision,
        task=task,
        config_overrides=config_overrides,
        fast=fast,
        random_weights=random_weights,
        seed=seed,
        device_map=device_map,
        max_memory=max_memory,
        offload_folder=offload_folder,
    ).model
