"""The reference of train.py's flags, generated from its parser, and the page that holds it.

    python -m moelab.training.cli_reference           # rewrite the table in docs/cli.md
    python -m moelab.training.cli_reference --check   # exit 1 if docs/cli.md is out of date

Every field of ``Config`` is a ``--flag`` of ``build_parser()``; :func:`cli_markdown` turns the
parser into one Markdown table (flag, default, choices, help), in the order of the fields.
docs/cli.md is a hand-written introduction followed by that table between two marker comments;
only the part between the markers is rewritten, so the page and the parser cannot drift apart
unnoticed (tests/test_docs.py compares them).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..paths import REPO_ROOT
from .config import build_parser
from .exits import EXIT_BAD_INPUT

BEGIN = "<!-- BEGIN GENERATED: python -m moelab.training.cli_reference -->"
END = "<!-- END GENERATED -->"
DEFAULT_PAGE = REPO_ROOT / "docs" / "cli.md"
REGENERATE = "python -m moelab.training.cli_reference"


def _cell(text: str) -> str:
    """Text that keeps its meaning inside one Markdown table cell."""
    return (" ".join(str(text).split())
            .replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")
            .replace("<", "&lt;").replace(">", "&gt;"))


def _default(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreTrueAction):
        return "off"
    if action.default is None:
        return "none"
    return f"`{action.default}`"


def _choices(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreTrueAction):
        return "switch"
    if action.choices is None:
        return ""
    return ", ".join(f"`{choice}`" for choice in action.choices)


def cli_markdown() -> str:
    """The Markdown table of every flag of train.py (no markers), ending with a newline."""
    lines = ["| flag | default | choices | help |", "|---|---|---|---|"]
    for action in build_parser()._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag = max(action.option_strings, key=len)
        lines.append(f"| `{flag}` | {_default(action)} | {_choices(action)} | {_cell(action.help or '')} |")
    return "\n".join(lines) + "\n"


def generated_block(page: str) -> str | None:
    """The text between the markers of a page, or None if it has no (ordered) markers."""
    start, stop = page.find(BEGIN), page.find(END)
    if start < 0 or stop < start:
        return None
    return page[start + len(BEGIN):stop].strip("\n") + "\n"


def render(page: str | None) -> str:
    """The page with its generated block replaced by the current table (a bare page if None)."""
    block = f"{BEGIN}\n{cli_markdown()}{END}"
    if page is None:
        return f"# train.py command line\n\n{block}\n"
    if generated_block(page) is None:
        raise ValueError(f"the page has no {BEGIN!r} ... {END!r} markers")
    start, stop = page.find(BEGIN), page.find(END) + len(END)
    return page[:start] + block + page[stop:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or check) the flag table of docs/cli.md.")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the page differs")
    parser.add_argument("--page", type=Path, default=DEFAULT_PAGE, help="the page (default: docs/cli.md)")
    args = parser.parse_args(argv)
    current = args.page.read_text() if args.page.exists() else None
    try:
        wanted = render(current)
    except ValueError as error:
        print(f"{args.page}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.check:
        if current != wanted:
            print(f"{args.page} is out of date with train.py's flags; run: {REGENERATE}", file=sys.stderr)
            return 1
        print(f"{args.page} is up to date")
        return 0
    if current != wanted:
        args.page.parent.mkdir(parents=True, exist_ok=True)
        args.page.write_text(wanted)
        print(f"wrote {args.page}")
    else:
        print(f"{args.page} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
