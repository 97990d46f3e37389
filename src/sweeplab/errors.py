"""Errors caused by what a user wrote: the CLI prints them without a traceback."""
from __future__ import annotations

import difflib
from collections.abc import Collection


def did_you_mean(name: str, known: Collection[str]) -> str:
    """``"; did you mean 'lr'?"`` for a mistyped ``name`` close to one of ``known``, else ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class UserError(Exception):
    """A mistake in a config, a sweep file, an override or a command line."""


class ConfigError(UserError):
    """A config or sweep file that cannot be composed or validated."""


class ArchitectureError(UserError):
    """A model whose layers cannot fit the input: named layer, input size and parameters."""


class DatasetNotFoundError(UserError):
    """Dataset files missing on disk, with the paths and how to get them."""
