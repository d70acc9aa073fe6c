"""The objects plugins register: architectures, converters and catalog entries.

Nothing here imports torch. Model code is referred to by ``"module:attribute"`` strings and
imported the first time a model is built, so that listing the zoo stays fast.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Tuple, Union

Ref = Union[str, Callable[..., Any]]


def import_ref(ref: Ref) -> Callable[..., Any]:
    """Turn a ``"package.module:attr.sub"`` reference into the object it names."""
    if not isinstance(ref, str):
        return ref
    module_name, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Architecture:
    """A model architecture, built from a config dict in the architecture's own field names
    (a converter translates its checkpoint format's config into them: :class:`Converter`).

    :param name: unique name that catalog entries and converters refer to (``"gpt2"``).
    :param factory: ``"module:attr"`` (or a callable) taking ``(config: dict, task: str | None)``
        (the architecture's own config) and returning an ``nn.Module``. zoo calls it under ``torch.device("meta")`` and then
        assigns the checkpoint tensors, so it must not read or compute weights; tensors computed
        in code (masks, sinusoid tables) are made in ``forward`` or by a ``reset_buffers()``
        method, which zoo calls after loading.
    :param tasks: the tasks it can be built for, the first being the default.
    :param example_inputs: ``"module:attr"`` of ``(config, task, batch, seq, generator) -> dict``
        giving keyword inputs for ``verify``/``bench``; both zoo's model and the reference take
        them.
    :param fast_paths: ``"module:attr"`` of a sequence of :class:`zoo.accel.FastPath` that the
        loader's last step applies to this architecture's models (the model file stays plain).
    :param parameter_count: ``"module:attr"`` of ``(config, task) -> int``, the parameters the
        factory would build, computed from the config alone: the loader checks that they fit in
        memory before building anything (a config with ``n_layer = 10**7`` is refused at once).
    """

    name: str
    factory: Ref
    tasks: Tuple[str, ...]
    description: str = ""
    example_inputs: Optional[Ref] = None
    fast_paths: Optional[Ref] = None
    parameter_count: Optional[Ref] = None

    def build(self, config: Mapping[str, Any], task: Optional[str] = None):
        return import_ref(self.factory)(dict(config), task or self.tasks[0])


@dataclass(frozen=True)
class Task:
    """What ``zoo run`` does for one task.

    :param name: the task (``"text-generation"``); architectures list the tasks they build for.
    :param runner: ``"module:attr"`` (or a callable) of ``run(loaded, inputs, opts, emit) -> dict``
        (see :mod:`zoo.tasks`): ``emit`` prints as the work goes, the dict is ``--json``'s output.
    :param options: the ``zoo run`` options it reads, as fields of :class:`zoo.tasks.RunOptions`
        (``"max_new_tokens"``, ``"top"``, ...); ``--json`` always applies.
    :param builds: the task the model is built for, when the task runs on a model of another
        task (``"text-generation"`` for a task that scores continuations, say); by default the
        task itself, which the architecture must list.
    """

    name: str
    runner: Ref
    options: Tuple[str, ...] = ()
    description: str = ""
    builds: Optional[str] = None


@dataclass(frozen=True)
class Transform:
    """A named, invertible tensor transform applied while converting one key.

    ``forward`` maps the source tensor to the target layout, ``inverse`` maps it back, so the
    same key map serves import and export. Both take and return a tensor (and must not import
    torch at module level: use tensor methods).
    """

    name: str
    forward: Callable[[Any], Any]
    inverse: Callable[[Any], Any]
    doc: str = ""

    def __repr__(self) -> str:
        return f"Transform({self.name})"


@dataclass(frozen=True)
class Map:
    """One line of a converter's key map.

    ``source`` and ``target`` are key templates; each ``{}`` stands for a layer index
    (``"h.{}.attn.c_attn.weight"``). ``target=None`` drops the key, and ``why`` must say why
    (it is a buffer computed in code, a head this architecture does not have, ...).
    ``unused`` is the reason to drop a key whose target the built model does not have (e.g. a
    pretraining head when the model was built without it); without it, that is an error.
    ``fill`` (only on a dropped key) is ``"module:attr"`` of ``(config, key) -> tensor``: the value
    export writes back for a key the Hub files store but zoo computes in code (GPT-2's
    causal-mask buffers), so that export reproduces the Hub layout exactly.
    """

    source: str
    target: Optional[str]
    transform: Optional[Transform] = None
    why: str = ""
    unused: str = ""
    fill: Optional[Ref] = None

    def __post_init__(self):
        if self.target is None and not self.why:
            raise ValueError(f"dropping {self.source!r} needs a reason (why=...)")
        if self.target is not None and self.source.count("{}") != self.target.count("{}"):
            raise ValueError(f"{self.source!r} and {self.target!r} differ in '{{}}' count")
        if self.fill is not None and self.target is not None:
            raise ValueError(f"{self.source!r}: only a dropped key can have a fill rule")


def Drop(source: str, why: str, fill: Optional[Ref] = None) -> Map:
    """A key that is read but deliberately not loaded, with the reason; ``fill`` says how export
    regenerates it when the Hub layout has it (see :class:`Map`)."""
    return Map(source, None, why=why, fill=fill)


@dataclass(frozen=True)
class Rename:
    """A regex rewrite of source keys applied before the key map (e.g. strip a ``bert.`` prefix).

    ``why`` documents the layout it exists for; ``pattern``/``repl`` follow :func:`re.sub`.
    """

    pattern: str
    repl: str
    why: str


@dataclass(frozen=True)
class Converter:
    """Maps one checkpoint format onto one architecture, as data.

    :param name: unique converter name (``"hf_gpt2"``).
    :param architecture: the :class:`Architecture` it fills.
    :param model_types: ``config.json`` ``model_type`` values it reads (picks the converter for a
        local folder).
    :param key_map: the :class:`Map` lines, source key template → target key template.
    :param renames: :class:`Rename` rules applied to source keys first (prefixes, legacy names).
    :param tasks: Hugging Face ``architectures`` class name → zoo task, to pick the task of a
        local checkpoint from its config.
    :param reference: ``"module:attr"`` of ``(config, task) -> transformers model`` with random
        weights: the reference that ``verify`` compares against.
    :param hub_layout: ``"module:attr"`` of ``(state_dict, config) -> state_dict`` turning what
        the reference model's ``state_dict()`` holds into the files' layout on the Hub, so
        ``verify`` on random weights exercises the real key layout.
    :param infer_config: ``"module:attr"`` of ``(tensors, overrides) -> config`` for
        checkpoints that come without a config.json (sizes read off the tensor shapes;
        ``overrides`` carries what the weights cannot tell). Such a checkpoint is matched to the
        converter whose key map accounts for every key.
    :param tiny_config: a few-kilobyte config of the reference class, used by the tests
        (parametrized over every registered converter) and by :mod:`zoo.testing`.
    :param config_from_weights: ``"module:attr"`` of ``(config, keys) -> config`` for config values
        only the weights can tell (e.g. whether a ViT encoder checkpoint has a pooler): called
        with the merged config and the checkpoint's key names before the model is built.
    :param config_fields: the config.json fields the converter reads, each with the kind of
        value it must be (:mod:`zoo.fields`: ``{"n_layer": fields.COUNT, ...}``); a value of
        another kind is refused where it is read, naming the file (or catalog entry) and field.
    :param to_architecture: ``"module:attr"`` of ``(config) -> dict``: this format's config
        (config.json over the catalog entry's, with the caller's overrides) in the architecture's
        own field names, refusing with :class:`zoo.errors.ConfigError` what the architecture
        does not implement. Without it the config is passed on as it is (a format whose config
        already uses the architecture's names).
    :param ignored_fields: config.json fields the format's reference implementation reads but
        ignores, each with how it reads them (``{"normalize_before": "MarianMTModel has no
        pre-norm layers: post-norm whatever the value"}``); loaded the same way, and listed by
        ``zoo info`` and ``zoo verify`` when a config sets them.
    :param tokenizer: the format's tokenizer as data (kind, class, special tokens and the config
        fields giving their ids; see :mod:`zoo.tinytokenizer`): random weights get one trained
        in code on a few sentences, so that they take text as the real checkpoint does.
    :param from_architecture: ``"module:attr"`` of ``(arch_config) -> dict``, the inverse: the
        fields of this format that the architecture's config determines, for export (and
        ``to_architecture(from_architecture(c)) == c``, which the test kit checks).
    :param version: bumped when the mapping changes (recorded in provenance).
    """

    name: str
    architecture: str
    model_types: Tuple[str, ...]
    key_map: Tuple[Map, ...]
    renames: Tuple[Rename, ...] = ()
    tasks: Mapping[str, str] = field(default_factory=dict)
    reference: Optional[Ref] = None
    hub_layout: Optional[Ref] = None
    infer_config: Optional[Ref] = None
    tiny_config: Mapping[str, Any] = field(default_factory=dict)
    config_from_weights: Optional[Ref] = None
    config_fields: Mapping[str, Any] = field(default_factory=dict)
    to_architecture: Optional[Ref] = None
    from_architecture: Optional[Ref] = None
    tokenizer: Mapping[str, Any] = field(default_factory=dict)
    ignored_fields: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    version: str = "1"

    def architecture_config(self, config: Mapping[str, Any]) -> dict:
        """``config`` (this format's fields) in the architecture's own names."""
        if self.to_architecture is None:
            return dict(config)
        return dict(import_ref(self.to_architecture)(dict(config)))

    def source_config(self, arch_config: Mapping[str, Any], config: Mapping[str, Any] = ()) -> dict:
        """``config`` (this format's fields) with what ``arch_config`` determines written over
        it: the config a checkpoint of this format holds for that architecture config."""
        out = dict(config)
        if self.from_architecture is not None:
            out.update(import_ref(self.from_architecture)(dict(arch_config)))
        return out


@dataclass(frozen=True)
class ModelEntry:
    """A named checkpoint in the catalog (one ``[models.NAME]`` table of ``registry.toml``)."""

    name: str
    architecture: str
    converter: str
    task: str
    config: Mapping[str, Any]
    repo: Optional[str] = None
    revision: str = "main"
    aliases: Tuple[str, ...] = ()
    description: str = ""
    params: Optional[int] = None
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    origin: str = "registry.toml"
    path: Optional[str] = None  # set for a local checkpoint (folder or file) loaded by path

    @property
    def source(self) -> str:
        return self.path or self.repo or "(no weights)"
