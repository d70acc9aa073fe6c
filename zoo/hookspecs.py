"""The plugin contract of zoo: every hook a plugin may implement.

A plugin is any module or object registered in the ``zoo`` entry-point group whose functions are
marked with ``@zoo.hookimpl``. The collecting hooks take a ``register`` callback (the style of the
``llm`` CLI): call it once per thing you provide. Names must be unique across all plugins; the
host raises :class:`zoo.errors.PluginError` naming both plugins when two register the same name.

Keep plugin modules cheap to import: ``zoo --help`` and ``zoo list`` load every plugin and must
not import torch. Refer to model code by a ``"module:attribute"`` string (see
:class:`zoo.types.Architecture`), which zoo imports only when a model is built.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("zoo")
hookimpl = pluggy.HookimplMarker("zoo")


@hookspec
def register_architectures(register):
    """Provide model architectures.

    :param register: call ``register(arch)`` with a :class:`zoo.types.Architecture` for each
        architecture this plugin provides. ``arch.name`` is what catalog entries and converters
        refer to (``"gpt2"``, ``"bert"``).

    The host keeps them by name; ``zoo plugins`` lists them under this plugin.
    """


@hookspec
def register_converters(register):
    """Provide weight converters from a source checkpoint format onto an architecture.

    :param register: call ``register(conv)`` with a :class:`zoo.types.Converter` for each
        converter. ``conv.architecture`` must name a registered architecture;
        ``conv.model_types`` lists the Hugging Face ``config.json`` ``model_type`` values it
        reads, so that a local checkpoint folder picks its converter from its config.

    The host uses the converter's key map to turn checkpoint tensors into the architecture's
    state dict, with strict accounting (every source key consumed or dropped by a named rule,
    every target filled, shapes checked).
    """


@hookspec
def register_models(register):
    """Provide catalog entries (named checkpoints), like the ones in ``registry.toml``.

    :param register: call ``register(entry)`` with a :class:`zoo.types.ModelEntry`, or with a
        plain ``dict`` shaped like one ``[models.NAME]`` table of ``registry.toml`` plus a
        ``name`` key (it is validated the same way).

    Entries appear in ``zoo list`` and resolve in ``zoo.load``/``zoo verify``/``zoo run`` by
    name and by alias.
    """


@hookspec
def register_tasks(register):
    """Provide task runners: what ``zoo run`` does for a task.

    :param register: call ``register(task)`` with a :class:`zoo.types.Task` for each task:
        its name (``"summarization"``), ``runner`` (``"module:attr"`` of
        ``run(loaded, inputs, opts, emit) -> dict``, see :mod:`zoo.tasks`) and the ``zoo run``
        options it reads (fields of :class:`zoo.tasks.RunOptions`); any other option given for
        the task is an error.

    An architecture lists the tasks it can be built for; ``zoo run`` looks the model's task up
    here. zoo's own tasks are registered through this hook too (``zoo.tasks``).
    """


@hookspec
def register_commands(cli):
    """Add commands to the ``zoo`` command line.

    :param cli: the root :class:`click.Group`; decorate functions with ``@cli.command()`` or
        call ``cli.add_command(...)``.

    Commands must not clash with built-in ones (``list``, ``info``, ``plugins``, ``verify``,
    ``run``, ...); a clash is reported as a plugin error.
    """
