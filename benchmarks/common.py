"""What every benchmark script shares: its command line's look."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written (its example commands keep their lines), and each option's
    default after its help, unless it has none or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, "", argparse.SUPPRESS) and action.default is not False and "default" not in text:
            text += " (default: %(default)s)"
        return text


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)
