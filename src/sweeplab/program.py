"""How a command line that sweeplab prints for its user to paste names sweeplab."""
from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path


def program() -> str:
    """``sweeplab`` where that name on PATH runs this installation; else this installation's own console script by
    its absolute path (the README's ``.venv/bin/sweeplab``, with no venv activated), which works from any folder;
    else ``<this python> -m sweeplab``."""
    script = Path(sys.executable).with_name("sweeplab")  # beside the interpreter, as pip installs it
    on_path = shutil.which("sweeplab")
    if on_path is not None and script.exists() and Path(on_path).resolve() == script.resolve():
        return "sweeplab"
    if script.exists():
        return shlex.quote(str(script.absolute()))
    return shlex.join([sys.executable, "-m", "sweeplab"])


def command_line(*args: str) -> str:
    """A command line to paste: ``program()`` then ``args``, each quoted for a POSIX shell; a Hydra override that
    holds single quotes (``output_dir='/data/mes données'``) in double quotes, as a user types it, where that
    needs no escapes."""
    return " ".join([program(), *map(_shell_word, args)])


def _shell_word(arg: str) -> str:
    quoted = shlex.quote(arg)
    if quoted != arg and "'" in arg and not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return quoted
