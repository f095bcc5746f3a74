"""Dataclass fields that are also command-line flags: the default, the help text, the allowed
choices and the type, kept on the field (the run's Config and the router's RouterConfig are
built from them, and so are train.py's parser and docs/cli.md)."""
from __future__ import annotations

from dataclasses import field


def option(default, help: str, choices=None, type=None):
    return field(default=default, metadata={"help": help, "choices": choices, "type": type})
