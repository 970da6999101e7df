"""What every ``python -m mitigations`` command line shares: usage errors on one line, and help
that shows each option's default where it has one."""

from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (exit code 2), like every other refusal."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}; see --help\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except for required options and unset (None/False) ones."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)
