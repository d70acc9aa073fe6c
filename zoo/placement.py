"""Models larger than one device: a device map over GPUs, the CPU and disk, by accelerate.

``zoo.load(name, device_map="auto", max_memory={0: "10GiB", "cpu": "30GiB"})`` loads the model
as always (built on the meta device, strictly loaded, on the CPU), then hands it to accelerate:
``accelerate.infer_auto_device_map`` computes where each part goes within ``max_memory``, and
``accelerate.dispatch_model`` puts it there, with hooks that move each block's inputs to its
device and, for a block on disk, read its weights from the offload folder while it runs. All
of zoo's use of accelerate is in this module, which imports it only when a device map is asked
for; accelerate is the optional extra ``zoo[big]``.

What may be spread is the model's blocks: every module that is an item of an
``nn.ModuleList`` (GPT-2's ``h.N``, BERT's ``encoder.layer.N``, the encoder-decoder's
``encoder.layers.N`` and ``decoder.layers.N``), each kept whole on one device (its class is one
of accelerate's ``no_split_module_classes``). Everything outside the blocks (embeddings, final
norms, heads) stays together on the main device, never offloaded: a model reads those weights
outside their own modules too (a tied head ``F.linear(x, self.wte.weight)``, the device and
dtype of a new KV cache), which accelerate's hooks, set on modules, would not load. The main
device is the first of ``max_memory`` (GPUs by index, then ``mps``, then ``cpu``): its budget
pays for that part first, and the inputs and outputs of the model live there.

Offloaded weights go to a folder zoo creates (``zoo-offload-*``, inside ``offload_folder`` when
one is given, else in the system's temporary folder) and removes when the model is collected or
the process ends; nothing else in ``offload_folder`` is touched.
"""
from __future__ import annotations

import difflib
import logging
import shutil
import tempfile
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from .device import available_devices
from .errors import InputError

STRATEGIES = ("auto", "balanced", "sequential")  # "auto" is "balanced", as in transformers
INSTALL = "pip install 'zoo[big]'"
GPU_HEADROOM = 0.9  # without max_memory, GPUs hold weights in 90% of their free memory (activations need the rest)

Device = Union[int, str]  # accelerate's spelling: a CUDA index, "mps", "cpu" or "disk"


def require_accelerate():
    """The accelerate module, or a one-line error saying how to install it."""
    try:
        import accelerate
    except ImportError:
        raise InputError(f"device_map needs accelerate, which is not installed: {INSTALL}") from None
    return accelerate


@dataclass(frozen=True)
class Plan:
    """What :func:`plan` checked: a strategy name or an explicit map (devices in accelerate's
    spelling), the memory budget per device (bytes; None: what is free), where the offload
    folder is made, and the main device: for a strategy, where the parts outside the blocks go;
    for a given map, the first device it names (GPUs first), the one the dtype is checked on
    before loading (the map's own main device is where it puts those parts, :func:`check_map`)."""

    device_map: Union[str, Dict[str, Device]]
    max_memory: Optional[Dict[Device, int]]
    offload_folder: Optional[Path]
    main: Device

    @property
    def main_device(self) -> torch.device:
        """The main device as a torch.device: where the inputs go and the outputs come back."""
        return torch_device(self.main)


def torch_device(device: Device) -> torch.device:
    return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)


def _device(value: Any, where: str, disk: bool = True) -> Device:
    """``value`` ("cpu", "cuda:1", 1, torch.device, "disk") in accelerate's spelling, refused in
    one line when it is no device available here."""
    available = available_devices()
    known = ", ".join(available + (["disk"] if disk else []))
    if isinstance(value, bool) or not isinstance(value, (int, str, torch.device)):
        raise InputError(f"{where}: {value!r} is not a device ({known})")
    if isinstance(value, int):
        name = f"cuda:{value}"
    else:
        name = str(value).strip().lower()
        if name == "disk" and disk:
            return "disk"
    try:
        parsed = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"{where}: unknown device {value!r} (devices here: {known})") from None
    if parsed.type == "cuda":
        index = 0 if parsed.index is None else parsed.index
        if f"cuda:{index}" not in available:
            raise InputError(f"{where}: device {value!r} is not available here (devices here: {known})")
        return index
    if parsed.type not in ("cpu", "mps") or parsed.type not in available:
        raise InputError(f"{where}: device {value!r} is not available here (devices here: {known})")
    return parsed.type


def _order(device: Device) -> Tuple[int, int]:
    """accelerate's order of devices: GPUs by index, then mps, then cpu, then disk."""
    if isinstance(device, int):
        return (0, device)
    return ({"mps": 1, "cpu": 2, "disk": 3}[device], 0)


def _bytes(value: Any, where: str) -> int:
    """A memory size: bytes (an int) or a string such as "2GiB" or "500MB"."""
    if isinstance(value, bool):
        raise InputError(f"{where}: {value!r} is not a memory size (bytes, or a string such as '2GiB')")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        from accelerate.utils import convert_file_size_to_int

        try:
            size = convert_file_size_to_int(value.strip())
        except ValueError:
            raise InputError(f"{where}: {value!r} is not a memory size (bytes, or a string such as '2GiB')") from None
    else:
        raise InputError(f"{where}: {value!r} is not a memory size (bytes, or a string such as '2GiB')")
    if size < 0:
        raise InputError(f"{where}: {value!r} is negative")
    return int(size)


def plan(device_map: Any, max_memory: Optional[Mapping[Any, Any]] = None, offload_folder=None,
         device: Optional[str] = "auto") -> Optional[Plan]:
    """Check the placement arguments of ``zoo.load`` before anything is read, in one-line
    :class:`InputError`s: accelerate installed, a known strategy or a map of available devices,
    ``max_memory`` of available devices and sizes, an existing ``offload_folder``, and no
    ``device`` besides (a device map places the model itself). None without a device map."""
    if device_map is None:
        given = [name for name, value in (("max_memory", max_memory), ("offload_folder", offload_folder))
                 if value is not None]
        if given:
            raise InputError(f"{given[0]} applies to a model loaded with a device_map (device_map='auto')")
        return None
    require_accelerate()
    if device is not None and str(device).strip().lower() != "auto":
        raise InputError(f"device={device!r} and device_map= both given: a device map places the model itself "
                         f"(leave device at 'auto')")
    if isinstance(device_map, str):
        strategy = device_map.strip().lower()
        if strategy not in STRATEGIES:
            raise InputError(f"device_map={device_map!r}: give {', '.join(STRATEGIES)} or a dict "
                             f"{{module name: device}} (for one device, use device=)")
        placed: Union[str, Dict[str, Device]] = strategy
    elif isinstance(device_map, Mapping) and device_map:
        placed = {}
        for name, value in device_map.items():
            if not isinstance(name, str):
                raise InputError(f"device_map: {name!r} is not a module name")
            placed[name] = _device(value, f"device_map[{name!r}]")
    else:
        raise InputError(f"device_map={device_map!r}: give {', '.join(STRATEGIES)} or a dict {{module name: device}}")

    budget = None
    if max_memory is not None:
        if not isinstance(max_memory, Mapping) or not max_memory:
            raise InputError(f"max_memory={max_memory!r}: give a dict {{device: size}}, e.g. {{0: '10GiB', 'cpu': '30GiB'}}")
        if isinstance(placed, dict):
            raise InputError("max_memory applies to device_map='auto', 'balanced' or 'sequential', not to a given map")
        budget = {}
        for key, value in max_memory.items():
            if isinstance(key, str) and key.strip().lower() == "disk":
                raise InputError("max_memory['disk']: disk takes no budget; what the devices cannot hold goes there")
            dev = _device(key, f"max_memory[{key!r}]", disk=False)
            budget[dev] = _bytes(value, f"max_memory[{key!r}]")
        budget = dict(sorted(budget.items(), key=lambda item: _order(item[0])))

    folder = None
    if offload_folder is not None:
        folder = Path(offload_folder).expanduser()
        if not folder.is_dir():
            raise InputError(f"offload_folder {str(folder)!r}: no such folder")
    return Plan(placed, budget, folder, _main(placed, budget))


def _main(device_map: Union[str, Dict[str, Device]], budget: Optional[Dict[Device, int]]) -> Device:
    """The main device: for a strategy, the first device of the budget (of the available ones
    without it) with room; for a given map, the first device it names other than disk."""
    if isinstance(device_map, dict):
        named = sorted({d for d in device_map.values() if d != "disk"}, key=_order)
        return named[0] if named else "cpu"
    if budget is not None:
        with_room = [d for d, size in budget.items() if size > 0]
        return with_room[0] if with_room else "cpu"
    available = available_devices()
    gpus = [d for d in available if d.startswith("cuda")]
    return 0 if gpus else ("mps" if "mps" in available else "cpu")


# ------------------------------------------------------------------------------- the model's parts


def blocks(model: torch.nn.Module) -> List[Tuple[str, torch.nn.Module]]:
    """The model's blocks, in order: every item of an ``nn.ModuleList`` that is in no other
    block (a transformer's layers; the lists inside a layer belong to it)."""
    found = []

    def walk(module: torch.nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            if isinstance(module, torch.nn.ModuleList):
                found.append((prefix + name, child))
            else:
                walk(child, prefix + name + ".")

    walk(model, "")
    return found


def _covered(name: str, keys) -> Optional[str]:
    """The most specific key of a device map that covers tensor or module ``name``."""
    best = None
    for key in keys:
        if key == "" or name == key or name.startswith(key + "."):
            if best is None or len(key) > len(best):
                best = key
    return best


def _tensor_names(model: torch.nn.Module) -> List[str]:
    return [name for name, _ in model.named_parameters()] + [name for name, _ in model.named_buffers()]


def _trunk(names: List[str], block_names: List[str]) -> List[str]:
    """The tensors outside every block."""
    return [n for n in names if _covered(n, block_names) is None]


def _short(names: List[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def check_map(model: torch.nn.Module, device_map: Mapping[str, Device]) -> Device:
    """A given map against the model, in one-line errors: every key a module or tensor of it
    and none inside a block, every tensor placed, and what lies outside the blocks all on one
    device that is not disk. Returns that device (the main one)."""
    modules = {name for name, _ in model.named_modules()}
    names = _tensor_names(model)
    known = modules | set(names)
    for key in device_map:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known - {""}), n=1)
            raise InputError(f"device_map: {key!r} is no module of the model" + (f" (did you mean {close[0]!r}?)" if close else ""))
    block_names = [name for name, _ in blocks(model)]
    for key in device_map:
        inside = _covered(key, block_names)
        if inside is not None and inside != key:
            raise InputError(f"device_map: {key!r} is part of the block {inside!r}: a block goes to one device whole")
    missing = [n for n in names if _covered(n, device_map) is None]
    if missing:
        raise InputError(f"device_map places no device for {_short(missing)}: every parameter needs one "
                         f"(the key '' places the whole model)")
    trunk = _trunk(names, block_names)
    where = {device_map[_covered(n, device_map)] for n in trunk}
    if len(where) > 1 or "disk" in where:
        raise InputError(f"device_map: the parts outside the blocks ({_short(trunk)}) must be on one device, not disk: "
                         f"the model reads their weights outside their own modules; only the blocks "
                         f"({_short(block_names, 3)}) may go elsewhere")
    return where.pop() if where else "cpu"


def infer_map(model: torch.nn.Module, p: Plan) -> Dict[str, Device]:
    """accelerate's map for a strategy: the parts outside the blocks on the main device, their
    size taken from its budget; the blocks placed by ``accelerate.infer_auto_device_map`` (after
    ``get_balanced_memory`` for "auto" and "balanced") in what is left."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import compute_module_sizes, get_balanced_memory, get_max_memory

    found = blocks(model)
    sizes = compute_module_sizes(model)
    trunk_size = sizes[""] - sum(sizes[name] for name, _ in found)
    if p.max_memory is None:
        budget = get_max_memory(None)
        budget = {d: int(size * GPU_HEADROOM) if isinstance(d, int) else size for d, size in budget.items()}
    else:
        budget = dict(p.max_memory)
    have = budget.get(p.main, 0)
    if trunk_size > have:
        parts = _short([n for n in _trunk(_tensor_names(model), [name for name, _ in found])], 4)
        raise InputError(f"max_memory: the parts outside the blocks ({parts}: {trunk_size:,} bytes) stay on the main "
                         f"device {torch_device(p.main)}, whose budget is {have:,} bytes")
    budget[p.main] = have - trunk_size
    device_map: Dict[str, Device] = {n: p.main for n in _trunk_keys(model, found)}
    if not found:
        return device_map
    layers = torch.nn.ModuleList(module for _, module in found)  # the blocks alone, named 0, 1, ...
    no_split = sorted({type(module).__name__ for _, module in found})
    if p.device_map in ("auto", "balanced"):
        budget = get_balanced_memory(layers, budget, no_split_module_classes=no_split)
    for key, dev in infer_auto_device_map(layers, max_memory=budget, no_split_module_classes=no_split).items():
        if key == "":
            device_map.update({name: dev for name, _ in found})
        else:
            index, _, rest = key.partition(".")
            device_map[found[int(index)][0] + ("." + rest if rest else "")] = dev
    return device_map


def _trunk_keys(model: torch.nn.Module, found: List[Tuple[str, torch.nn.Module]]) -> List[str]:
    """Device-map keys covering everything outside the blocks: whole modules where they hold
    no block, single tensors of the modules that do."""
    inside = {id(module) for _, module in found}
    holders = set()  # modules with a block somewhere below
    for name, _ in found:
        parts = name.split(".")
        holders.update(".".join(parts[:i]) for i in range(len(parts)))
    keys = []

    def walk(module: torch.nn.Module, prefix: str) -> None:
        for name, _ in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            keys.append(prefix + name)
        for name, child in module.named_children():
            full = prefix + name
            if id(child) in inside:
                continue
            if full in holders:
                walk(child, full + ".")
            else:
                keys.append(full)

    if not found:
        return [""]
    walk(model, "")
    return keys


# ------------------------------------------------------------------------------------ dispatch


@contextmanager
def _quiet():
    """accelerate warns on every dispatch with offload ("Some parameters are on the meta
    device ..."): that is what a device map means, said where it is asked for."""
    loggers = [logging.getLogger(name) for name in ("accelerate.big_modeling", "accelerate.utils.modeling")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def dispatch(model: torch.nn.Module, p: Plan) -> torch.device:
    """Place a loaded model by ``p`` with ``accelerate.dispatch_model``; returns the main device
    (the map is ``model.hf_device_map``, as accelerate sets it). Weights mapped to disk are
    written to a new ``zoo-offload-*`` folder, removed when the model is collected or the
    process ends (and at once if dispatching fails)."""
    from accelerate import dispatch_model

    # an offloaded block loads all its weights when it starts (accelerate's preload classes):
    # hooks inside it would try to move a module handed from one part of it to another
    preload = sorted({type(module).__name__ for _, module in blocks(model)})
    if isinstance(p.device_map, dict):
        main = check_map(model, p.device_map)
        device_map = dict(p.device_map)
    else:
        main, device_map = p.main, infer_map(model, p)
    folder = None
    if "disk" in device_map.values():
        folder = tempfile.mkdtemp(prefix="zoo-offload-", dir=None if p.offload_folder is None else str(p.offload_folder))
    try:
        with _quiet():
            dispatch_model(model, device_map, main_device=main, offload_dir=folder, preload_module_classes=preload)
    except BaseException:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if folder is not None:
        weakref.finalize(model, shutil.rmtree, folder, ignore_errors=True)
    return torch_device(main)

