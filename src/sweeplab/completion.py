"""Shell completion, as Hydra apps offer it: ``eval "$(sweeplab --shell-completion install=bash)"``.

The installed shell function asks ``sweeplab --shell-completion query=bash`` for the words that fit the
cursor (subcommands, flags, sweep names, ``model=`` -> conf/model/*.yaml, ``optimizer.`` -> schema keys);
the keys come from the config the line composes, so ``model=mlp model.`` offers the MLP's keys.
"""
from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence

from sweeplab.errors import UserError

SHELLS = ("bash", "zsh")

_BASH = r"""# sweeplab completion for {shell}: eval "$({prog} --shell-completion install={shell})"
_sweeplab_complete() {{
    local IFS=$'\n'
    COMPREPLY=($(COMP_LINE="$COMP_LINE" COMP_POINT="$COMP_POINT" {query} --shell-completion query=bash 2>/dev/null))
    if [[ ${{#COMPREPLY[@]}} -eq 1 && "${{COMPREPLY[0]}}" == *[=.] ]]; then
        compopt -o nospace 2>/dev/null  # model= and optimizer. go on with the same word
    fi
}}
COMP_WORDBREAKS=${{COMP_WORDBREAKS//=}}  # model=lenet is one word, as in Hydra's own completion
complete -o default -F _sweeplab_complete sweeplab
"""


def install_script(shell: str, query: str | None = None) -> str:
    """The script that `eval` installs; ``query`` is the command the shell runs on TAB (this Python by default,
    so it works from a virtualenv that is not on PATH)."""
    query = query or f"{shlex.quote(sys.executable)} -m sweeplab"
    text = _BASH.format(shell=shell, prog="sweeplab", query=query)
    if shell == "zsh":  # zsh runs bash completion functions through bashcompinit
        text = "autoload -U +X bashcompinit && bashcompinit\n" + text
    return text


def uninstall_script(shell: str) -> str:
    return "complete -r sweeplab\n"


def split_line(line: str) -> tuple[list[str], str]:
    """The words before the cursor's word (without the program) and the word being typed."""
    try:
        words = shlex.split(line)
    except ValueError:  # an open quote
        words = line.split()
    current = words.pop() if line and not line[-1].isspace() and words else ""
    return words[1:], current


def candidates(words: Sequence[str], current: str, commands: Mapping[str, Sequence[str]]) -> list[str]:
    """What may replace ``current``: ``commands`` maps each subcommand to its flags ('' to the top-level flags)."""
    if not words:
        pool = list(commands.get("", [])) if current.startswith("-") else [c for c in commands if c]
        return sorted(w for w in pool if w.startswith(current))
    command = words[0]
    if current.startswith("-"):
        return sorted(w for w in commands.get(command, []) if w.startswith(current))
    if command not in commands or command in ("models", "datasets"):
        return []
    if command == "sweep" and not [w for w in words[1:] if not w.startswith("-")] and "=" not in current:
        from sweeplab.compose import sweeps_dir

        return sorted(p.stem for p in sweeps_dir().glob("*.yaml") if p.stem.startswith(current))
    return _override_candidates(words[1:], current)


def _override_candidates(words: Sequence[str], current: str) -> list[str]:
    from sweeplab.compose import compose, flatten
    from sweeplab.hydra_habits import config_groups

    groups = config_groups()
    if "=" in current:
        key, prefix = current.split("=", 1)
        return [f"{key}={o}" for o in groups.get(key, []) if o.startswith(prefix)]
    picked = [w for w in words if w.split("=", 1)[0] in groups and "," not in w]
    try:
        cfg = compose(picked)
    except UserError:
        cfg = compose([])
    keys = [f"{g}=" for g in groups] + [f"{k}=" for k in flatten(cfg)]
    if "." not in current:  # one level at a time: optimizer= and optimizer. before optimizer.lr=
        keys = sorted({k if "." not in k else k.split(".")[0] + "." for k in keys})
    return sorted(k for k in keys if k.startswith(current))


def query(env: Mapping[str, str], commands: Mapping[str, Sequence[str]]) -> str:
    """The answer to the shell's TAB: one candidate a line, from COMP_LINE up to COMP_POINT."""
    line = env.get("COMP_LINE", "")
    point = int(env.get("COMP_POINT", len(line)))
    words, current = split_line(line[:point])
    return "\n".join(candidates(words, current, commands))


def shell_completion(request: str, commands: Mapping[str, Sequence[str]], env: Mapping[str, str]) -> str:
    """``--shell-completion install=bash|zsh``, ``uninstall=bash|zsh`` or ``query=bash`` (what the script calls)."""
    action, _, shell = request.partition("=")
    if action not in ("install", "uninstall", "query") or shell not in SHELLS:
        raise UserError(f"--shell-completion {request}: expected install=bash, install=zsh, uninstall=bash "
                        "or uninstall=zsh (then: eval \"$(sweeplab --shell-completion install=bash)\")")
    if action == "install":
        return install_script(shell)
    if action == "uninstall":
        return uninstall_script(shell)
    return query(env, commands)
