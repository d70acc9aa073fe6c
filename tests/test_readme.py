"""The README stays true: its CLI synopsis names every option each command has, and nothing
the commands lack."""
from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from zoo.cli import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
SYNOPSIS = README[README.index("## The CLI"):]
SYNOPSIS = SYNOPSIS[SYNOPSIS.index("```"):SYNOPSIS.index("```", SYNOPSIS.index("```") + 3)]


def _commands(group: click.Group, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))
        else:
            yield " ".join(prefix + (name,)), cmd


COMMANDS = dict(_commands(cli))


def _lines_of(command: str) -> str:
    """The synopsis lines of one command: its first line and the indented ones after it."""
    lines = SYNOPSIS.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"zoo {command} ") or line == f"zoo {command}")
    block = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith(" "):
            break
        block.append(line)
    return "\n".join(block)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_synopsis_names_every_option(command):
    text = _lines_of(command)
    for param in COMMANDS[command].params:
        if isinstance(param, click.Option) and not param.hidden:
            longest = max(param.opts, key=len)
            if longest == "--help":
                continue
            assert re.search(re.escape(longest) + r"\b", text), f"README: `zoo {command}` lacks {longest}"


def test_the_synopsis_names_no_option_that_does_not_exist():
    for command in COMMANDS:
        named = set(re.findall(r"(--[a-z][a-z-]*)", _lines_of(command).split("#")[0]))
        real = {o for p in COMMANDS[command].params for o in getattr(p, "opts", [])}
        assert named <= real | {"--help"}, f"README: `zoo {command}` names {sorted(named - real)}"
