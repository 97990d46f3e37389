"""The ``sweeplab`` command: train, sweep, sync, status, best, report, dashboard, ui, models, datasets."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sweeplab.errors import UserError
from sweeplab.redact import redact
from sweeplab.sweep.stop import interrupted_exit_code, watch_sigterm

EXAMPLES = """examples:
  sweeplab train model=lenet
  sweeplab train -m optimizer.lr=0.01,0.1 model=lenet,mlp   (a grid sweep: Ray, Optuna, MLflow)
  sweeplab train model=mlp --cfg job
  sweeplab train model=vgg data=cifar10 optimizer.lr=0.01 model.activation=tanh
  sweeplab sweep default
  sweeplab sweep activations train.epochs=3
  sweeplab best default --register default-best
  sweeplab dashboard default
  sweeplab ui
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweeplab",
        description="Deep-learning experiment sweeps: Hydra configs, Optuna search, Ray Tune trials, MLflow tracking.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print sweeplab's version")
    parser.add_argument("-sc", "--shell-completion", metavar="install=bash|zsh",
                        help='shell completion: eval "$(sweeplab --shell-completion install=bash)"')
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train one model from conf/ plus Hydra overrides")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=mlp optimizer.lr=0.1")
    p.add_argument("-m", "--multirun", action="store_true",
                   help="run every combination of comma lists, range() and choice() as a grid sweep")
    prints = p.add_mutually_exclusive_group()  # each prints and exits, as Hydra's own refuse to go together
    prints.add_argument("-c", "--cfg", choices=("job", "hydra", "all"),
                        help="print the composed config (job), Hydra's record (hydra) or both, then exit")
    prints.add_argument("--info", nargs="?", const="all", choices=("all", "searchpath", "defaults", "config"),
                        help="print the config search path, config groups and their options, the config; then exit")

    p = sub.add_parser("sweep", help="run a sweep file from sweeps/ (by name) or a path")
    p.add_argument("sweep", help="sweep name (sweeps/<name>.yaml) or path to a sweep file")
    p.add_argument("overrides", nargs="*", help="Hydra overrides applied to every trial")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep: the latest of this name or file, "
                        "or the sweep id given instead")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines, only trial ends and the summary")
    p.add_argument("-c", "--cfg", choices=("job", "hydra", "all"),
                   help="print the config the trials compose from (job), Hydra's record (hydra) or both, then exit")

    p = sub.add_parser("sync", help="send the MLflow calls a sweep kept while its tracking store was down")
    p.add_argument("sweep", help="sweep name, id or file")
    p.add_argument("overrides", nargs="*", help="Hydra overrides that locate the stores (output_dir=..., cluster=...)")

    p = sub.add_parser("status", help="trials by state and the best so far")
    p.add_argument("sweep", nargs="?", help="sweep name, id or file (default: all sweeps)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides that locate the stores (output_dir=..., cluster=...)")

    p = sub.add_parser("best", help="print the best trial as a runnable 'sweeplab train' command")
    p.add_argument("sweep", help="sweep name, id or file")
    p.add_argument("overrides", nargs="*", help="Hydra overrides that locate the stores")
    p.add_argument("--register", metavar="NAME",
                   help="also register the best trial's MLflow Model in the Model Registry as NAME")

    p = sub.add_parser("report", help="rebuild a sweep's HTML report from the tracking store")
    p.add_argument("sweep", help="sweep name, id or file")
    p.add_argument("overrides", nargs="*", help="Hydra overrides that locate the stores")
    p.add_argument("--out", help="folder to write the report to (default: <output_dir>/reports/<sweep id>)")

    p = sub.add_parser("dashboard", help="serve optuna-dashboard for the sweeps' Optuna storage on 127.0.0.1")
    p.add_argument("sweep", nargs="?", help="sweep name, id or file to open (default: the list of every sweep)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides that locate the storage (output_dir=..., cluster=...)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1")

    p = sub.add_parser("ui", help="serve the MLflow UI for the configured store on 127.0.0.1")
    p.add_argument("overrides", nargs="*", help="Hydra overrides that locate the store")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--allowed-hosts", help="Host headers the server answers, comma-separated "
                                           "(mlflow server --allowed-hosts); set it when --host is not loopback")

    sub.add_parser("models", help="list registered models with their keys and defaults")
    sub.add_parser("datasets", help="list registered datasets")
    for command_parser in sub.choices.values():
        command_parser.set_defaults(command_parser=command_parser)  # its usage goes with its mistakes
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)  # overrides may follow a flag: sweep x --resume a=b
    if args.version:
        from sweeplab import __version__

        print(f"sweeplab {__version__}")
        return 0
    if args.shell_completion:
        return _shell_completion(parser, args.shell_completion)
    if args.command is None:
        parser.print_help()
        return 2
    unknown = [e for e in extra if not _is_override(e) or not hasattr(args, "overrides")]
    if unknown:
        args.command_parser.error(_unrecognized(args, unknown))
    if extra:
        args.overrides = [*args.overrides, *extra]
    watch_sigterm()  # SIGTERM ends a command as Ctrl-C does (exit 143), not midway through a write
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # no "Creating initial MLflow database tables" chatter
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars after the summary
    try:
        _sweep_before_overrides(args)
        _refuse_words_that_are_no_override(args)
        from sweeplab import commands

        return getattr(commands, f"cmd_{args.command}")(args) or 0
    except UserError as err:
        # masked here too: a library's own text (MLflow's, SQLAlchemy's) may quote the URL it was given
        print(f"sweeplab {args.command}: error: {redact(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sweeplab {args.command}: interrupted", file=sys.stderr)
        return interrupted_exit_code()
    except BrokenPipeError:  # the reader of stdout went away (sweeplab models | head -3): stop quietly, as a
        from sweeplab.quick_exit import PIPE_GONE  # pipe's writer does

        return PIPE_GONE


def _unrecognized(args: argparse.Namespace, unknown: list[str]) -> str:
    """What is wrong with the words a command does not take, and what it takes instead."""
    words = " ".join(unknown)
    if not hasattr(args, "overrides"):
        return f"unrecognized arguments: {words} (sweeplab {args.command} takes none: it lists every one)"
    if args.command == "sweep" and {"-m", "--multirun"} & set(unknown):
        return (f"unrecognized arguments: {words} (-m is train's, to run a grid of comma lists; a sweep file's trials "
                f"run as a sweep without it: sweeplab sweep {args.sweep} [key=value ...])")
    return f"unrecognized arguments: {words} (overrides look like key=value or ~key)"


def _is_override(word: str) -> bool:
    """Hydra's override grammar: key=value, +key=value, ++key=value, ~key, ~key=value."""
    return not word.startswith("-") and ("=" in word or word.startswith("~"))


def _refuse_words_that_are_no_override(args: argparse.Namespace) -> None:
    """A word after the sweep that is no key=value (a second sweep, ``output_dir /tmp/x`` with a space): Hydra would
    call it an override it cannot parse, and suggest quoting."""
    stray = [w for w in getattr(args, "overrides", []) if not _is_override(w)]
    if stray:
        takes = "one sweep, then overrides" if hasattr(args, "sweep") else "overrides"
        raise UserError(f"{stray[0]!r} is not key=value: sweeplab {args.command} takes {takes} like key=value "
                        "(output_dir=/tmp/x, not output_dir /tmp/x)")


def _sweep_before_overrides(args: argparse.Namespace) -> None:
    """``sweeplab best output_dir=... NAME``: argparse gives the first word to the sweep, wherever the name is;
    the sweep is the first word that is no override (a sweep file's path may hold '='), the rest are overrides.
    None where the command lists every sweep without one (status, dashboard)."""
    ref = getattr(args, "sweep", None)
    if ref is None or not _is_override(ref) or Path(ref).is_file():
        return
    words = [ref, *args.overrides]
    name = next((w for w in words if not _is_override(w)), None)
    if name is not None:
        words.remove(name)
    elif args.command not in ("status", "dashboard"):
        what = "name or file" if args.command == "sweep" else "name or id"
        raise UserError(f"no sweep given: its {what} comes first, then the overrides "
                        f"(sweeplab {args.command} NAME [key=value ...])")
    args.sweep, args.overrides = name, words


def _shell_completion(parser: argparse.ArgumentParser, request: str) -> int:
    from sweeplab.completion import shell_completion

    commands = {"": [o for a in parser._actions for o in a.option_strings]}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                commands[name] = [o for a in sub._actions for o in a.option_strings]
    try:
        print(shell_completion(request, commands, os.environ))
    except UserError as err:
        print(f"sweeplab: error: {err}", file=sys.stderr)
        return 2
    return 0


def run() -> None:
    """The ``sweeplab`` console script: ``main``, then a quick exit (``quick_exit``). An error escaping ``main`` exits
    as usual."""
    from sweeplab.quick_exit import quick_exit

    quick_exit(main())


if __name__ == "__main__":
    run()
