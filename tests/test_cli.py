"""`llama-pe --help`: every option of every command says what it does and shows its default, once."""

from __future__ import annotations

import argparse

import pytest

from llama_pe.commands.cli import build_parser


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


@pytest.mark.parametrize("command", list(parsers()))
def test_every_command_says_what_it_does_and_shows_an_example_that_parses(command):
    parser = parsers()[command]
    text = parser.format_help()
    assert parser.description and len(parser.description.split()) >= 10, f"{command}: no description"
    assert " ".join(parser.description.split()[:4]) in " ".join(text.split())
    examples = [line.strip() for line in text.split("example:\n", 1)[1].splitlines() if line.strip()]
    assert examples and all(line.startswith(command.split()[0] + " ") for line in examples), command
    assert "%%" not in text
    for line in examples:  # each example is a command line the parser takes, as shown
        words = line.split("<")[0].split()[1:]
        build_parser().parse_args([w.strip('"') for w in words])
