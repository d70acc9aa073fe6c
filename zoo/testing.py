"""Reusable checks for plugin authors: call them from your plugin's own test suite.

    from zoo import testing
    import my_plugin

    def test_plugin():
        testing.check_plugin(my_plugin)              # hook names, duplicates, what it registers

    def test_converter():
        testing.check_converter(my_plugin.CONVERTER) # accounting, parity, round trip

Every check raises ``AssertionError`` with a message that says what is wrong and where, so it
works under pytest, unittest or a plain script. No network: checkpoints are the converter's
reference model with seeded random weights (its ``tiny_config`` unless you pass a config),
written to a temporary folder in the Hub layout (``hub_layout``) and in the layout
transformers' ``save_pretrained`` writes today, then loaded through zoo's real path.

The checks:

=========================  ==================================================================
check_plugin               hooks are spelled as in zoo.hookspecs; registered objects have the
                           right types; no name is taken twice (within the plugin or by
                           another installed plugin); references between them resolve
check_architecture         builds from a config on the meta device without computing
                           weights, runs forward on its example inputs, returns ModelOutput
                           (also with output_hidden_states=True)
check_key_accounting       every source key consumed or dropped with a reason, every target
                           filled, in every layout
check_parity               outputs match the transformers reference on random weights
assert_outputs_close       two forward outputs agree field by field (your own parity tests)
check_round_trip           source -> zoo -> source: same keys, bit-identical tensors
check_config_translation   the converter's config translation and its inverse agree:
                           architecture config -> source fields -> the same architecture config
check_catalog_entry        the entry resolves and builds with exactly ``params`` parameters
check_task                 a registered task's runner runs on a model and returns what
                           ``zoo run --json`` prints
check_converter            all converter checks above, one after another
=========================  ==================================================================

Parity looks at real tokens only: per-position outputs ([B, T, ...]: hidden states, logits) are
compared where the input's ``attention_mask`` is 1, because values at padding positions carry
no meaning (a model may skip them; zoo's BERT returns zeros there). Other outputs are compared
whole.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from .types import Architecture, Converter, ModelEntry, import_ref

LAYOUTS = ("hub", "save_pretrained")


def _catalog():
    from .registry import get_catalog

    return get_catalog()


def _architecture(arch: Union[str, Architecture]) -> Architecture:
    return _catalog().architecture(arch) if isinstance(arch, str) else arch


def _converter(conv: Union[str, Converter]) -> Converter:
    return _catalog().converter(conv) if isinstance(conv, str) else conv


def _task(conv: Converter, task: Optional[str]) -> str:
    if task:
        return task
    assert conv.tasks, f"converter {conv.name!r}: tasks is empty (Hugging Face class name -> zoo task)"
    return next(iter(conv.tasks.values()))


def write_reference_checkpoint(conv: Union[str, Converter], folder, layout: str = "hub",
                               config: Optional[Mapping[str, Any]] = None, task: Optional[str] = None,
                               seed: int = 0):
    """The converter's reference model with seeded random weights, saved in ``folder`` in the
    Hub layout (``layout="hub"``) or as ``save_pretrained`` writes it. Returns the model."""
    import torch

    from .randomweights import write as write_random_checkpoint

    conv = _converter(conv)
    config = dict(config or conv.tiny_config)
    task = _task(conv, task)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "hub":
        ref = write_random_checkpoint(conv, config, task, seed, folder)
        ref.config.architectures = [type(ref).__name__]  # so that loading picks the task
        ref.config.to_json_file(str(folder / "config.json"))
        return ref
    if layout != "save_pretrained":
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    torch.manual_seed(seed)
    ref = import_ref(conv.reference)(config, task).eval()
    ref.save_pretrained(str(folder))
    return ref


# ----------------------------------------------------------------------------- plugins


def _implemented_hooks(plugin: Any) -> Dict[str, Any]:
    from .hookspecs import hookimpl

    marker = hookimpl.project_name + "_impl"
    out = {}
    for name in dir(plugin):
        obj = getattr(plugin, name, None)
        if callable(obj) and hasattr(obj, marker):
            out[name] = obj
    return out


def _collect(plugin: Any) -> Dict[str, List[Any]]:
    hooks = _implemented_hooks(plugin)
    got: Dict[str, List[Any]] = {"architecture": [], "converter": [], "model": []}
    for hook, kind in (("register_architectures", "architecture"), ("register_converters", "converter"),
                       ("register_models", "model")):
        if hook in hooks:
            hooks[hook](got[kind].append)
    return got


def _entry(obj: Any) -> ModelEntry:
    from .registry import entry_from_table

    if isinstance(obj, ModelEntry):
        return obj
    assert isinstance(obj, Mapping), f"register_models registered {obj!r}: not a ModelEntry or a dict"
    table = dict(obj)
    return entry_from_table(table.pop("name", None), table, "register_models")


def check_plugin(plugin: Any) -> Dict[str, List[Any]]:
    """Check a plugin object (usually its module): every ``@hookimpl`` names a hook of
    :mod:`zoo.hookspecs` with its parameters, registered objects have the right types, and no
    name is registered twice — within the plugin, or by another installed plugin (or
    registry.toml). Returns what it registers, by kind."""
    import pluggy

    from . import hookspecs, pluginmanager

    pm = pluggy.PluginManager(pluginmanager.GROUP)
    pm.add_hookspecs(hookspecs)
    try:
        pm.register(plugin, name="plugin-under-test")
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise AssertionError(f"hook typo or bad signature: {exc} (hooks: see zoo.hookspecs)") from None
    assert _implemented_hooks(plugin), f"{plugin!r} implements no zoo hook (mark functions with @zoo.hookimpl)"

    got = _collect(plugin)
    kinds = {"architecture": Architecture, "converter": Converter}
    for kind, cls in kinds.items():
        for obj in got[kind]:
            assert isinstance(obj, cls), f"register_{kind}s registered {obj!r}, not a zoo.types.{cls.__name__}"
    entries = [_entry(obj) for obj in got["model"]]

    # duplicates within the plugin
    for kind, names in (("architecture", [a.name for a in got["architecture"]]),
                        ("converter", [c.name for c in got["converter"]]),
                        ("model name or alias", [n.lower() for e in entries for n in (e.name,) + e.aliases])):
        twice = sorted({n for n in names if names.count(n) > 1})
        assert not twice, f"the plugin registers {kind} {', '.join(map(repr, twice))} more than once"

    # duplicates against everything else installed (the plugin itself may be installed too)
    plugins = pluginmanager.get_plugins()
    mine = {name for name, obj in plugins.manager.list_name_plugin() if obj is plugin}
    labels = {n: i.label for n, i in plugins.infos.items()}
    for kind in ("architecture", "converter"):
        for obj in got[kind]:
            owner = plugins.owner.get((kind, obj.name))
            assert owner is None or owner in mine, f"{kind} {obj.name!r} is already registered by {labels[owner]}"
    catalog = _catalog()
    for e in entries:
        for key in (e.name,) + e.aliases:
            other = catalog.find(key)
            if other is not None:
                ours = any(f"plugin {m!r}" in other.origin for m in mine)
                assert ours, f"model name {key!r} is already used by [models.{other.name}] from {other.origin}"

    # references resolve: converters -> architectures, entries -> both
    archs = {a.name: a for a in got["architecture"]} | dict(catalog.architectures)
    convs = {c.name: c for c in got["converter"]} | dict(catalog.converters)
    for c in got["converter"]:
        assert c.architecture in archs, f"converter {c.name!r} fills unknown architecture {c.architecture!r}"
        assert c.model_types, f"converter {c.name!r}: model_types is empty (config.json model_type values)"
    for e in entries:
        assert e.architecture in archs, f"model {e.name!r}: unknown architecture {e.architecture!r}"
        assert e.converter in convs, f"model {e.name!r}: unknown converter {e.converter!r}"
        assert e.task in archs[e.architecture].tasks, (
            f"model {e.name!r}: task {e.task!r} is not one of {archs[e.architecture].name}'s tasks "
            f"{archs[e.architecture].tasks}")
    return got


# ----------------------------------------------------------------------------- architectures


def check_architecture(arch: Union[str, Architecture], config: Mapping[str, Any],
                       tasks: Optional[Sequence[str]] = None, batch: int = 2, seq: int = 8, seed: int = 0):
    """Build from ``config`` for each task (all the architecture's tasks by default): on the
    meta device nothing is computed; with random weights, forward on ``example_inputs``
    returns a :class:`zoo.outputs.ModelOutput` with finite values, and ``hidden_states``
    when asked for with ``output_hidden_states=True``."""
    import torch

    from .outputs import ModelOutput

    arch = _architecture(arch)
    assert arch.tasks, f"architecture {arch.name!r} declares no tasks"
    assert arch.example_inputs is not None, f"architecture {arch.name!r} has no example_inputs (verify needs them)"
    for task in tasks or arch.tasks:
        with torch.device("meta"):
            model = arch.build(dict(config), task)
        real = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if not t.is_meta]
        assert not real, (f"{arch.name} ({task}): built on the meta device, these tensors were not: {real[:5]} "
                          f"(compute them in forward or reset_buffers, not in __init__)")
        assert sum(p.numel() for p in model.parameters()) > 0, f"{arch.name} ({task}): no parameters"

        gen = torch.Generator().manual_seed(seed)
        model = model.to_empty(device="cpu")
        with torch.no_grad():
            for p in model.state_dict().values():  # parameters and persistent buffers
                if p.is_floating_point():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
                else:
                    p.zero_()
        for m in model.modules():
            if hasattr(m, "reset_buffers"):
                m.reset_buffers()
        model.eval()
        inputs = import_ref(arch.example_inputs)(dict(config), task, batch, seq, torch.Generator().manual_seed(seed))
        assert isinstance(inputs, dict) and inputs, f"{arch.name}: example_inputs must return a dict of kwargs"
        with torch.inference_mode():
            out = model(**inputs)
            deep = model(**inputs, output_hidden_states=True)
        assert isinstance(out, ModelOutput), f"{arch.name} ({task}): forward returned {type(out).__name__}, not ModelOutput"
        given = {k: getattr(out, k) for k in ("logits", "last_hidden_state", "pooler_output", "start_logits", "end_logits") if getattr(out, k) is not None}
        assert given, f"{arch.name} ({task}): forward gave none of logits / last_hidden_state / pooler_output"
        for k, v in given.items():
            assert bool(torch.isfinite(v).all()), f"{arch.name} ({task}): {k} is not finite"
        assert deep.hidden_states, f"{arch.name} ({task}): output_hidden_states=True gave no hidden_states"
    return out


# ----------------------------------------------------------------------------- converters


def check_key_accounting(conv: Union[str, Converter], config: Optional[Mapping[str, Any]] = None,
                         layouts: Iterable[str] = LAYOUTS, task: Optional[str] = None) -> None:
    """In every layout: every source key is consumed or dropped by a rule with a reason, every
    parameter of the model is filled, nothing is left on the meta device."""
    from .checkpoint import read_safetensors
    from .loading import load_full

    conv = _converter(conv)
    for layout in layouts:
        with tempfile.TemporaryDirectory(prefix="zoo-testing-") as tmp:
            write_reference_checkpoint(conv, tmp, layout, config, task)
            try:
                loaded = load_full(tmp, device="cpu", converter=conv)
            except Exception as exc:
                raise AssertionError(f"{conv.name} ({layout} layout): {exc}") from None
            source = set(read_safetensors(Path(tmp) / "model.safetensors"))
            report = loaded.report
            unaccounted = source - set(report.consumed) - set(report.dropped)
            assert not unaccounted, f"{conv.name} ({layout}): source keys not accounted for: {sorted(unaccounted)[:8]}"
            silent = [k for k, why in report.dropped.items() if not why]
            assert not silent, f"{conv.name} ({layout}): dropped without a reason: {silent[:8]}"
            state = loaded.model.state_dict()
            assert set(report.consumed.values()) == set(state), (
                f"{conv.name} ({layout}): model tensors not filled from the checkpoint: "
                f"{sorted(set(state) - set(report.consumed.values()))[:8]}")
            del loaded


def check_parity(conv: Union[str, Converter], config: Optional[Mapping[str, Any]] = None,
                 layouts: Iterable[str] = LAYOUTS, task: Optional[str] = None, tolerance: float = 1e-4):
    """zoo's outputs match the converter's transformers reference on the same random weights,
    for each layout, within ``tolerance`` (float32 on the CPU). Returns the verify reports."""
    from .verification import verify

    conv = _converter(conv)
    reports = []
    for layout in layouts:
        with tempfile.TemporaryDirectory(prefix="zoo-testing-") as tmp:
            write_reference_checkpoint(conv, tmp, layout, config, task)
            report = verify(tmp, device="cpu", converter=conv)
            assert report.passed and report.max_abs_diff <= tolerance, (
                f"{conv.name} ({layout} layout) does not match its reference:\n{report.render()}")
            reports.append(report)
    return reports


def assert_outputs_close(ours: Any, theirs: Any, inputs: Mapping[str, Any], atol: float = 1e-5,
                         rtol: float = 0.0) -> List[str]:
    """zoo's output ``ours`` and the reference's ``theirs`` for the same ``inputs`` agree in
    every field both give (logits, last_hidden_state, pooler_output, each hidden state), within
    ``atol``/``rtol`` (as ``torch.testing.assert_close``), at the positions verify compares:
    per-position outputs where the input's attention mask is 1, other outputs whole. Returns
    the names of the fields compared."""
    import torch

    from .verification import output_mask, real_positions

    mask = output_mask(dict(inputs))
    pairs = []
    for name in ("logits", "last_hidden_state", "pooler_output", "start_logits", "end_logits"):
        a, b = getattr(ours, name, None), getattr(theirs, name, None)
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            pairs.append((name, a, b))
    a, b = getattr(ours, "hidden_states", None), getattr(theirs, "hidden_states", None)
    if a is not None and b is not None:
        assert len(a) == len(b), f"hidden_states: zoo gives {len(a)}, the reference {len(b)}"
        pairs += [(f"hidden_states[{i}]", x, y) for i, (x, y) in enumerate(zip(a, b))]
    assert pairs, "the two outputs share no field to compare"
    for name, a, b in pairs:
        assert a.shape == b.shape, f"{name}: zoo gives shape {list(a.shape)}, the reference {list(b.shape)}"
        torch.testing.assert_close(real_positions(a, mask, name), real_positions(b, mask, name), atol=atol, rtol=rtol,
                                   msg=lambda m, name=name: f"{name}: {m}")
    return [name for name, _, _ in pairs]


def check_round_trip(conv: Union[str, Converter], config: Optional[Mapping[str, Any]] = None,
                     task: Optional[str] = None) -> None:
    """Source (Hub layout) -> zoo -> source: the same keys and bit-identical tensors. Keys
    the import dropped and that have no ``fill`` rule (a head the model was built without)
    cannot come back and are excluded — and only those."""
    import torch

    from .checkpoint import read_safetensors
    from .export import export_hf, read_source

    conv = _converter(conv)
    with tempfile.TemporaryDirectory(prefix="zoo-testing-") as tmp:
        src = Path(tmp) / "source"
        write_reference_checkpoint(conv, src, "hub", config, task)
        source = read_source(str(src))
        if source.converter is not conv:  # e.g. a modified converter under test
            source = _reconvert(src, conv, source)
        result = export_hf(source, Path(tmp) / "back")
        a = read_safetensors(src / "model.safetensors")
        b = read_safetensors(Path(tmp) / "back" / "model.safetensors")
        dropped = set(source.provenance["accounting"]["dropped"])
        assert set(result.skipped) <= dropped, (
            f"{conv.name}: export left out keys the import had loaded: {sorted(set(result.skipped) - dropped)}")
        want = set(a) - set(result.skipped)
        assert set(b) == want, (f"{conv.name}: round trip changed the key set: missing "
                                f"{sorted(want - set(b))[:5]}, extra {sorted(set(b) - want)[:5]}")
        for k in sorted(want):
            same = a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k])
            assert same, f"{conv.name}: {k} differs after the round trip (check the transform's inverse)"


def _reconvert(folder: Path, conv: Converter, source):
    from .convert import convert

    from .checkpoint import find_weights, read_weights
    from .loading import build_model

    arch = _catalog().architecture(conv.architecture)
    expected = build_model(arch, conv.architecture_config(source.config), source.task).state_dict()
    state, report = convert(read_weights(find_weights(folder)), conv, expected)
    source.state, source.converter = state, conv
    source.provenance = {**source.provenance, "accounting": report.as_dict()}
    return source


def check_catalog_entry(entry: Union[str, ModelEntry, Mapping[str, Any]]) -> int:
    """The entry's architecture, converter and task fit together, its aliases resolve, and the
    model built from its config (on the meta device) has exactly ``params`` parameters."""
    import torch

    catalog = _catalog()
    if isinstance(entry, str):
        entry = catalog.get(entry)
    elif not isinstance(entry, ModelEntry):
        entry = _entry(entry)
    arch = catalog.architecture(entry.architecture)
    conv = catalog.converter(entry.converter)
    assert conv.architecture == arch.name, f"{entry.name}: converter {conv.name!r} fills {conv.architecture!r}, not {arch.name!r}"
    assert entry.task in arch.tasks, f"{entry.name}: task {entry.task!r} not in {arch.tasks}"
    with torch.device("meta"):
        model = arch.build(conv.architecture_config(entry.config), entry.task)
    n = sum(p.numel() for p in model.parameters())
    assert entry.params == n, f"{entry.name}: params = {entry.params}, the model built from its config has {n}"
    return n


def check_converter(conv: Union[str, Converter], config: Optional[Mapping[str, Any]] = None,
                    task: Optional[str] = None) -> None:
    """Everything a converter must satisfy: the fields verify and the registry-parametrized
    tests need (reference, hub_layout, tiny_config, tasks, documented transforms), key
    accounting and parity in every layout, and the round trip."""
    conv = _converter(conv)
    assert conv.reference and conv.hub_layout and conv.tiny_config, (
        f"converter {conv.name!r} needs reference, hub_layout and tiny_config (verify and the tests use them)")
    assert conv.tasks, f"converter {conv.name!r}: tasks maps Hugging Face class names to zoo tasks"
    for rule in conv.key_map:
        if rule.transform is not None:
            assert rule.transform.doc, f"transform {rule.transform.name} needs a docstring (draw the layout)"
    check_config_translation(conv, config)
    check_key_accounting(conv, config, task=task)
    check_parity(conv, config, task=task)
    check_round_trip(conv, config, task=task)


def check_config_translation(conv: Union[str, Converter], config: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """``to_architecture`` and ``from_architecture`` are each other's inverse on ``config``
    (the ``tiny_config`` by default): the architecture config translated back to the source
    format alone, and forward again, is the same architecture config. Returns it."""
    conv = _converter(conv)
    config = dict(conv.tiny_config if config is None else config)
    arch_config = conv.architecture_config(config)
    if conv.to_architecture is None:
        return arch_config
    assert conv.from_architecture is not None, (
        f"converter {conv.name!r} translates its config (to_architecture) but not back (from_architecture): "
        f"export needs both")
    back = conv.source_config(arch_config)
    again = conv.architecture_config(back)
    differ = {k: (arch_config.get(k), again.get(k)) for k in set(arch_config) | set(again)
              if arch_config.get(k) != again.get(k)}
    assert not differ, f"{conv.name}: architecture config -> source -> architecture changes {differ}"
    return arch_config


def check_task(name: str, model: str, inputs: Sequence[str] = (), **options: Any) -> Dict[str, Any]:
    """The task ``name`` is registered, names only real ``zoo run`` options, and its runner,
    run on ``model`` (a catalog name or a checkpoint folder; a tiny one) with ``inputs`` and
    ``options`` (fields of :class:`zoo.tasks.RunOptions`), returns a JSON-serializable dict;
    returns that dict."""
    import json
    from dataclasses import fields

    from .tasks import RunOptions, run

    task = _catalog().tasks.get(name)
    assert task is not None, f"task {name!r} is not registered (registered: {', '.join(sorted(_catalog().tasks))})"
    known = {f.name for f in fields(RunOptions)}
    assert set(task.options) <= known, f"task {name!r} names options zoo run lacks: {sorted(set(task.options) - known)}"
    shown: List[str] = []
    result = run(model, *inputs, task=name, device="cpu", emit=shown.append, **options)
    assert isinstance(result, dict), f"task {name!r}: the runner returned {type(result).__name__}, not a dict"
    json.dumps(result)  # what --json prints
    assert "".join(shown).strip(), f"task {name!r}: the runner showed nothing (emit was never called)"
    return result
