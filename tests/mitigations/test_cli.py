"""Every ``python -m mitigations`` command's help: plain text (no reST markup), no "(default: None)"
and no default on required options, and one ``--cam-target`` vocabulary across commands."""

from __future__ import annotations

import re

import pytest

from mitigations import auto
from mitigations.__main__ import build_parser
from mitigations.cam_target import CAM_TARGETS
from mitigations.crayon import annotate
from mitigations.registry import builtin_recipes

COMMANDS = [(name,) for name in builtin_recipes()] + [("crayon", "annotate"), ("auto",)]


def parser_of(command: tuple[str, ...]):
    """The argparse parser behind ``command`` (a recipe's subparser, or crayon annotate's)."""
    if command == ("crayon", "annotate"):
        return annotate.build_parser()
    if command == ("auto",):
        return auto.build_parser()
    subparsers = next(a for a in build_parser(builtin_recipes())._actions if a.dest == "recipe")
    return subparsers.choices[command[0]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_is_plain_text_and_required_options_show_no_default(cli, capsys, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option
    assert cli(*command, "--help") == 0
    text = capsys.readouterr().out
    assert "``" not in text
    assert "(default: None)" not in text
    required = [a for a in parser_of(command)._actions if a.required]
    own = {"--model"} if command == ("auto",) else {"--model", "--out"}  # auto: the command's --out
    assert {a.option_strings[0] for a in required} >= own
    for action in required:
        line = re.search(rf"^\s+{action.option_strings[0]}\b.*$", text, re.M)
        assert line is not None and "(default" not in line.group(0), line
    if command != ("auto",):  # auto has no option with a default
        assert re.search(r"\(default: \S+\)", text)  # the optional ones still show theirs


def test_cam_target_is_one_vocabulary_in_every_command():
    found = {
        command: next(a for a in parser_of(command)._actions if a.dest == "cam_target").choices
        for command in [("roi-iou",), ("crayon",), ("crayon", "annotate")]
    }
    assert all(tuple(choices) == CAM_TARGETS for choices in found.values()), found
    assert CAM_TARGETS == ("label", "predicted", "positive")
