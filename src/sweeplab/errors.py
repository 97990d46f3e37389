"""Errors caused by what a user wrote: the CLI prints them without a traceback."""


class UserError(Exception):
    """A mistake in a config, a sweep file, an override or a command line."""


class ConfigError(UserError):
    """A config or sweep file that cannot be composed or validated."""


class ArchitectureError(UserError):
    """A model whose layers cannot fit the input: named layer, input size and parameters."""


class DatasetNotFoundError(UserError):
    """Dataset files missing on disk, with the paths and how to get them."""
