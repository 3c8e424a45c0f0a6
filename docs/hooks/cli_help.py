"""mkdocs hook: replace ``<!-- cli-help -->`` in a page by the ``--help`` text of ``dgjax`` and of every
sub-command, taken from ``dgjax.cli.build_parser()``, so the command-line page cannot drift from argparse."""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- cli-help -->"


def cli_help_markdown() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width; fix it so builds are reproducible
    from dgjax.cli import build_parser

    parser = build_parser()
    parts = ["## `dgjax --help`", "", "```text", parser.format_help().rstrip(), "```", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        parts += [f"## `dgjax {name}`", "", "```text", p.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown, page, config, files, **kwargs):
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_help_markdown())
    return markdown
