"""`llama-pe --help`: every option of every command says what it does and shows its default, once."""

from __future__ import annotations

import argparse

import pytest

from llama_pe.cli import build_parser


def parsers() -> dict[str, argparse.ArgumentParser]:
    """The top-level parser and each command's, by the command line that shows their help."""
    top = build_parser()
    (commands,) = (a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return {"llama-pe": top, **{f"llama-pe {name}": parser for name, parser in commands.choices.items()}}


def shows_default(action: argparse.Action) -> bool:
    """A default the user could want to know: a value, not None, an empty list or a flag's off."""
    return action.default not in (None, argparse.SUPPRESS) and action.default != [] and action.nargs != 0


@pytest.mark.parametrize("command", parsers())
def test_every_option_has_help_and_shows_its_default_once(command):
    parser = parsers()[command]
    text = " ".join(parser.format_help().split())  # argparse wraps at the terminal's width: compare unwrapped
    stated = 0
    for action in parser._actions:
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help is not argparse.SUPPRESS, f"{command} {name}: no help"
        if shows_default(action):
            assert f"(default: {action.default})" in text or "(default:" in action.help, f"{command} {name}"
        stated += shows_default(action) or "(default:" in action.help
    assert text.count("(default:") == stated  # none said twice: once by the help text and again by the formatter


def test_every_command_has_help():
    top = build_parser()
    (commands,) = (a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in commands._choices_actions}
    assert set(helps) == set(commands.choices) and all(helps.values())
