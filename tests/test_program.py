"""The commands sweeplab prints for its user to paste (rerun a trial, resume a sweep, send what a down store missed)
name sweeplab so that they run as printed: the README calls `.venv/bin/sweeplab` with no venv activated."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sweeplab.compose import compose
from sweeplab.program import command_line, program
from sweeplab.sweep.launch import resume_command, sync_command

SCRIPT = Path(sys.executable).with_name("sweeplab")  # this installation's console script


def test_sweeplab_is_named_by_its_path_unless_path_finds_this_installation(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                               if Path(p).resolve() != SCRIPT.parent.resolve()))
    assert program() == shlex.quote(str(SCRIPT.absolute()))
    # every printed command starts so, and runs as printed from another folder, with no venv on PATH
    overrides = ["output_dir=out"]
    for command in (resume_command("smoke-1", overrides), sync_command("smoke-1", overrides, compose(overrides))):
        assert shlex.split(command)[0] == str(SCRIPT.absolute())
    done = subprocess.run([*shlex.split(program()), "--version"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "sweeplab" in done.stdout, done.stderr
    monkeypatch.setenv("PATH", os.pathsep.join([str(SCRIPT.parent), os.environ["PATH"]]))  # an activated venv
    assert program() == "sweeplab"
    assert resume_command("smoke-1", ["output_dir=out"]).startswith("sweeplab sweep smoke-1 --resume output_dir=")


def test_the_hints_name_sweeplab_as_the_printed_commands_do(tmp_path, monkeypatch):
    """A hint that tells its reader what to run next ("no sweeps ... yet: run '... sweep default'") names sweeplab
    the way the pasteable commands do, so that it runs as printed too."""
    from sweep_helpers import cli

    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                               if Path(p).resolve() != SCRIPT.parent.resolve()))
    out = f"output_dir={tmp_path / 'outputs'}"
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "optuna.journal").touch()  # a store that holds no sweep yet
    listed = cli("status", out, cwd=tmp_path)
    assert listed.returncode == 0 and f"yet: run '{program()} sweep default'" in listed.stdout, listed
    missing = cli("best", "smoke", f"output_dir={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert missing.returncode == 2 and f"(run '{program()} sweep default'" in missing.stderr, missing
    hinted = listed.stdout.split("run '", 1)[1].split("'", 1)[0].replace("sweep default", f"status {out}")
    done = subprocess.run(shlex.split(hinted), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "no sweeps in" in done.stdout, done.stderr


@pytest.mark.parametrize("arg", ["output_dir='/data/mes données'", "model.hidden_sizes=[64]", "x=1", "it's", "a b",
                                 "k='$HOME'", "k='a\"b'", "k='a\\b'"])
def test_a_printed_command_gives_the_shell_each_argument_as_it_is(arg):
    """Pasted into a POSIX shell, a printed command passes each argument unchanged; a Hydra override quoted for
    Hydra reads as its user would type it, in double quotes, where that needs no escape."""
    line = command_line("sweep", arg)
    assert shlex.split(line)[len(shlex.split(program())):] == ["sweep", arg]
    assert shlex.split(command_line(arg)) == shlex.split(program()) + [arg]
    if arg == "output_dir='/data/mes données'":
        assert line.endswith(f'"{arg}"')
