"""What each CLI subcommand does; cli.py only parses arguments."""
from __future__ import annotations

import argparse
import csv
import errno
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplab.errors import UserError
from sweeplab.metrics import format_metric, ranked_label
from sweeplab.program import program
from sweeplab.redact import redact

if TYPE_CHECKING:
    from mlflow.entities import Run
    from omegaconf import DictConfig

    from sweeplab.hydra_habits import TrainLine
    from sweeplab.sweep.plan import SweepPlan
    from sweeplab.tracking.runs import TrainRun
    from sweeplab.train import TrainResult


def format_metrics(m: dict[str, Any], epochs: int | None = None) -> str:
    parts = [f"epoch {int(m['epoch']):>3}" + (f"/{epochs}" if epochs else "")]
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "test/acc"):
        if key in m:
            parts.append(f"{key} {format_metric(key, m[key])}")
    if "epoch_seconds" in m:
        parts.append(f"{m['epoch_seconds']:.1f}s ({m['samples_per_second']:.0f} samples/s)")
    return "  ".join(parts)


def run_folder(output_dir: str, kind: str, label: str) -> Path:
    """Where a run's files go; made by ``save_run`` once there is something to save."""
    return Path(output_dir) / kind / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}"


def save_run(folder: Path, cfg: DictConfig, result: TrainResult) -> None:
    """The run's files (sweeplab.run_files), metrics.csv and final_metrics.json."""
    from sweeplab.compose import to_yaml
    from sweeplab.models.summary import summarize
    from sweeplab.run_files import write_run_files
    from sweeplab.train import run_dataset

    folder.mkdir(parents=True, exist_ok=True)
    write_run_files(folder, to_yaml(cfg), summarize(result.model, result.input_shape), result.state, run_dataset(cfg))
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(result.history[0]))
        writer.writeheader()
        writer.writerows(result.history)
    (folder / "final_metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n")


def cmd_train(args: argparse.Namespace) -> int:
    from sweeplab import hydra_habits
    from sweeplab.compose import compose_with_choices

    if args.multirun:
        return _multirun(args)
    hydra_habits.refuse_sweeps_without_multirun(args.overrides)
    line = hydra_habits.train_line(args.overrides)
    cfg, choices = compose_with_choices(line.overrides)
    folder = line.run_dir or run_folder(cfg.output_dir, "train", f"{cfg.model.name}-{cfg.data.name}")
    if args.info:
        print(hydra_habits.info_text(cfg, choices, args.overrides, args.info), end="")
        return 0
    if args.cfg:
        print(hydra_habits.config_text(cfg, args.cfg, choices, line, folder), end="")
        return 0
    return _train(cfg, choices, line, folder)


def _train(cfg: DictConfig, choices: dict[str, str], line: TrainLine, folder: Path) -> int:
    from sweeplab.checks import validate
    from sweeplab.hydra_habits import write_record
    from sweeplab.progress import EpochBar
    from sweeplab.tracking.store import check_writable
    from sweeplab.train import train

    validate(cfg)  # shapes and names, before any data is loaded
    check_writable(Path(cfg.output_dir), "output_dir")
    if line.run_dir is not None:
        check_writable(line.run_dir, "hydra.run.dir")
    if cfg.tracking.enabled:  # an unreachable or broken store fails now, not after training
        from sweeplab.tracking.store import check_store, tracking_uri

        check_store(tracking_uri(cfg))
    print(f"sweeplab train: {cfg.model.name} on {cfg.data.name}, {cfg.optimizer.name} lr={cfg.optimizer.lr}, "
          f"{cfg.train.epochs} epochs, seed {cfg.train.seed} -> {folder}", flush=True)

    # the MLflow run is made before training, to hold each epoch as it ends and a failure, but after the device
    # and the data are found: a mistake in either leaves no run behind
    run: TrainRun | None = None
    bundle = None
    if cfg.tracking.enabled:
        from sweeplab.config.schema import DataConfig
        from sweeplab.data.datasets import load_dataset
        from sweeplab.structured import typed
        from sweeplab.tracking.runs import TrainRun
        from sweeplab.train import resolve_device

        resolve_device(cfg.train.device)
        bundle = load_dataset(typed(cfg.data, DataConfig))
        run = TrainRun(cfg, folder)

    def report(metrics, _checkpoint):
        print(format_metrics(metrics, cfg.train.epochs), flush=True)
        if run is not None:
            run.log_epoch(metrics)

    try:
        with EpochBar(int(cfg.train.epochs)) as bar:
            result = train(cfg, reporter=report, bundle=bundle, on_batch=bar.on_batch if bar.enabled else None)
        save_run(folder, cfg, result)  # the run folder exists only once there is something in it
        write_record(folder, cfg, choices, line)
    except BaseException as err:
        if run is not None:
            run.fail(err)
        raise
    final = result.metrics
    shown = [k for k in ("val/acc", "val/loss", "test/acc") if k in final]
    print("final: " + "  ".join(f"{k} {format_metric(k, final[k])}" for k in shown)
          + f"  params {result.num_params:,}  run folder {folder}")
    if run is not None:
        _finish(run, result, folder)
    return 0


def _finish(run: TrainRun, result: Any, folder: Path) -> None:
    """The trained run's end in MLflow. A store that refuses it (down, full) fails no training: the run folder
    holds everything, and the run stays RUNNING in the store, not FAILED with the store's error as its reason."""
    try:
        run.finish(result, folder)
    except KeyboardInterrupt as err:
        run.fail(err)
        raise
    except Exception as err:
        why = (str(err).strip().splitlines() or [""])[0][:300]
        raise UserError(f"trained and saved in {folder}, but the MLflow store {redact(run.client.tracking_uri)} did "
                        f"not take the run's end ({type(err).__name__}: {why}); its run {run.run_id} stays RUNNING "
                        "there") from None


def _multirun(args: argparse.Namespace) -> int:
    """``train -m``: the overrides' grid as a sweep (Ray, Optuna's grid sampler, MLflow parent and child runs)."""
    from sweeplab.sweep.multirun import planned_multirun

    if args.cfg or args.info:
        raise UserError("--cfg and --info show one run's config: drop -m (--multirun) to see it")
    plan, fixed = planned_multirun(args.overrides)
    print(f"sweeplab train -m: a grid sweep, written to {plan.sweep_file}", flush=True)
    return _run_sweep(str(plan.sweep_file), fixed, resume=False, quiet=False, planned=plan)


def _override_text(value) -> str:
    """A value as a user types it after key= (lists without spaces: [100,100])."""
    if isinstance(value, (list, bool)) or value is None:
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def cmd_models(args: argparse.Namespace) -> int:
    """Each model with the keys its presets give it: what `sweeplab train model=X` uses."""
    from sweeplab.compose import compose, flatten, group_options
    from sweeplab.models import MODELS
    from sweeplab.models.layers import ACTIVATIONS, POOLINGS, WeightInit

    presets: dict[str, list[tuple[str, dict]]] = {}
    for option in group_options("model"):
        model = compose([f"model={option}"]).model
        presets.setdefault(model.name, []).append((option, flatten(model)))
    for name in MODELS.names():
        print(f"{name:<15} {MODELS.get(name).description}")
        for preset, keys in presets.get(name, []):
            values = " ".join(f"{k}={_override_text(v)}" for k, v in keys.items() if k != "name")
            print(f"{'':<15} model={preset}: {values}")
    print(f"\nmodel.activation:  {', '.join(ACTIVATIONS.names())}")
    print(f"model.pooling:     {', '.join(POOLINGS.names())} (models that pool)")
    print(f"model.weight_init: {', '.join(WeightInit)}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from sweeplab.data import DATASETS

    for name in DATASETS.names():
        e = DATASETS.get(name)
        where = "offline" if e.offline else "needs files under data.root (or data.download=true)"
        shape = "x".join(map(str, e.input_shape))
        print(f"{name:<14} {shape:<8} {e.num_classes} classes  {e.description}; {where}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.cfg:
        print(_sweep_config_text(args), end="")
        return 0
    return _run_sweep(args.sweep, args.overrides, resume=args.resume, quiet=args.quiet)


def _sweep_config_text(args: argparse.Namespace) -> str:
    """``sweep --cfg``: what its trials compose from, the sweep: block included, as ``train --cfg`` prints it (Hydra's
    record names the sweep's output_dir as its folder); with --resume, from the recorded file and overrides."""
    from sweeplab.compose import SWEEP_GROUP, compose_with_choices, resolve_sweep_file
    from sweeplab.hydra_habits import TrainLine, config_text
    from sweeplab.sweep.launch import recorded_plan

    if args.resume:
        plan = recorded_plan(args.sweep, args.overrides)[0]
        sweep_file, overrides, text = plan.sweep_file, plan.overrides, plan.sweep_text
    else:
        sweep_file, overrides, text = resolve_sweep_file(args.sweep), list(args.overrides), None
    cfg, choices = compose_with_choices(overrides, sweep_file, text)
    choices[SWEEP_GROUP] = str(sweep_file)  # not the name of the copy Hydra composed
    return config_text(cfg, args.cfg, choices, TrainLine(overrides, typed=overrides), Path(cfg.output_dir))


def _run_sweep(ref: str, overrides: list[str], resume: bool, quiet: bool, planned: SweepPlan | None = None) -> int:
    from sweeplab.sweep.launch import launch_sweep
    from sweeplab.sweep.summary import format_summary

    outcome = launch_sweep(ref, overrides, resume=resume, quiet=quiet, planned=planned,
                           on_outcome=lambda outcome: print(f"\n{format_summary(outcome)}", flush=True))
    if outcome.unfinished:
        from sweeplab.sweep.stop import interrupted_exit_code

        print(f"\n{_continue_with(outcome.sweep_id, overrides, _ran_with(outcome, overrides))}", flush=True)
        return interrupted_exit_code()
    if not outcome.completed():  # nothing to rank: a sweep that produced no result has failed
        from sweeplab.sweep.launch import located_command

        status = located_command("status", outcome.sweep_id, overrides, cfg=_ran_with(outcome, overrides))
        print(f"sweeplab sweep: error: no trial of {outcome.sweep_id} ran to the end ({outcome.counts_text()}); "
              f"the reasons are above and in '{status}'. Fix the config or the space and run it again",
              file=sys.stderr)
        return 1
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from sweeplab.sweep.sync import sync_sweep

    sweep_id, sent, left = sync_sweep(args.sweep, args.overrides)
    if not sent and not left:
        print(f"sweep {sweep_id}: no tracking call is waiting to be sent")
        return 0
    print(f"sweep {sweep_id}: sent {sent} tracking call(s) to MLflow" + (f", {left} still unsent" if left else ""))
    return 1 if left else 0


def _storage(overrides) -> str:
    from sweeplab.compose import compose
    from sweeplab.sweep.plan import optuna_storage_url

    return optuna_storage_url(compose(overrides))


def _ran_with(outcome: Any, overrides: list[str]) -> DictConfig:
    """The config the sweep ran with: its file's locations (an output_dir it sets) beside the command line's."""
    from sweeplab.compose import compose

    return compose(overrides, Path(outcome.record["sweep_file"]), outcome.record.get("sweep_text"))


def _continue_with(sweep_id: str, overrides, cfg: DictConfig | None = None) -> str:
    from sweeplab.sweep.launch import resume_command

    return f"sweep {sweep_id} was interrupted; continue it with:\n  {resume_command(sweep_id, overrides, cfg)}"


def cmd_status(args: argparse.Namespace) -> int:
    from sweeplab.compose import compose
    from sweeplab.sweep.launch import resume_command
    from sweeplab.sweep.plan import optuna_storage_url
    from sweeplab.sweep.results import find_sweep, list_sweeps, load_outcome
    from sweeplab.sweep.summary import format_summary, format_table

    cfg = compose(args.overrides)
    storage = optuna_storage_url(cfg)
    if args.sweep:
        outcome = load_outcome(storage, find_sweep(storage, args.sweep)["sweep_id"])
        print(format_summary(outcome))
        if outcome.interrupted:
            print(f"\n{_continue_with(outcome.sweep_id, args.overrides, cfg)}")
        return 0
    rows, interrupted = [], []
    for record in list_sweeps(storage):
        outcome = load_outcome(storage, record["sweep_id"])
        best, metric = outcome.best(), outcome.objectives[0][0]
        stopped = outcome.interrupted
        if stopped:
            interrupted.append(outcome.sweep_id)
        trials = outcome.counts_text() + (" (interrupted)" if stopped else "")
        rows.append([record["sweep_id"], record["started"], trials,
                     f"{ranked_label(metric)} {format_metric(metric, best.value())}" if best else "-"])
    if not rows:
        print(f"no sweeps in {redact(storage)} yet: run '{program()} sweep default'")
        return 0
    print(format_table(["sweep", "started", "trials", "best"], rows))
    for sweep_id in interrupted:  # running trials of a driver that is gone: --resume continues them
        print(f"continue {sweep_id} with: {resume_command(sweep_id, args.overrides, cfg)}")
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from sweeplab.sweep.rerun import PBT_RERUN, after_pbt, best_command
    from sweeplab.sweep.results import find_sweep, load_outcome

    storage = _storage(args.overrides)
    record = find_sweep(storage, args.sweep)
    outcome = load_outcome(storage, record["sweep_id"])
    if args.register is not None:  # its store holds runs the driver may still be writing, and calls on their way
        outcome.refuse_while_running("register its best trial once it has ended")
    best = outcome.best()
    if best is None:
        from sweeplab.sweep.launch import located_command, resume_command

        sweep_id = record["sweep_id"]
        then = (f"resume it: {resume_command(sweep_id, args.overrides)}" if outcome.interrupted
                else "it is still running" if outcome.unfinished
                else f"why: {located_command('status', sweep_id, args.overrides)}")
        raise UserError(f"sweep {sweep_id} has no trial that ran every epoch ({outcome.counts_text()}); {then}")
    metric = outcome.objectives[0][0]
    seeds = best.completed_seeds()  # in sweep.seeds' order: the first is the one the command reruns
    ranked = format_metric(metric, best.value())  # as status ranks it: over its seeds
    shown = (f"{ranked} over {len(seeds)} seeds; seed {seeds[0]}, rerun below: "
             f"{format_metric(metric, best.seeds[seeds[0]]['values'][0])}" if len(seeds) > 1
             else f"{ranked} with seed {seeds[0]}")
    print(f"# best of {record['sweep_id']}: trial {best.number}, {ranked_label(metric)} {shown}", file=sys.stderr)
    if after_pbt(outcome):
        print(f"# {PBT_RERUN}", file=sys.stderr)
    if args.register is not None:  # "" too: the registry names what is wrong with it; before the command, which
        _register_best(args, record["sweep_id"], storage)  # a script would run although the registering failed
    print(best_command(outcome, best, int(seeds[0])))
    return 0


def _register_best(args: argparse.Namespace, sweep_id: str, storage: str) -> None:
    """Register the best trial's MLflow Model (logging it first if the sweep did not) as ``args.register``."""
    from sweeplab.compose import compose
    from sweeplab.sweep.launch import sync_command
    from sweeplab.sweep.results import best_trial_runs
    from sweeplab.tracking.journal import Journal, journal_path
    from sweeplab.tracking.models import register
    from sweeplab.tracking.report import find_parent_run
    from sweeplab.tracking.store import existing_client, tracking_uri

    cfg = compose(args.overrides)
    client = existing_client(tracking_uri(cfg))
    missed = Journal(journal_path(cfg.output_dir, sweep_id)).pending()  # what an outage of the store kept
    if missed:  # the best trial's run may lack its files, or its end
        raise UserError(f"the MLflow store {client.tracking_uri} misses part of {sweep_id}: {len(missed)} of the "
                        f"sweep's calls to it are still waiting: send them with "
                        f"'{sync_command(sweep_id, args.overrides, cfg)}', then register")
    parent = find_parent_run(client, sweep_id, cfg.tracking.experiment)
    found = best_trial_runs(client, parent.info.run_id, storage, sweep_id)
    if not found:
        raise UserError(f"the best trial of {sweep_id} has no completed run in the MLflow store {client.tracking_uri} "
                        f"(was the sweep run with tracking=none?)")
    version, new = register(client, found[0].info.run_id, args.register)
    done = "registered" if new else "already registered as"
    print(f"{done} model {version.name} version {version.version}: models:/{version.name}/{version.version} "
          f"(run {found[0].info.run_id})", file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> int:
    from sweeplab.compose import compose
    from sweeplab.tracking.report import build_report, find_parent_run
    from sweeplab.tracking.store import check_writable, existing_client, tracking_uri

    cfg = compose(args.overrides)
    client = existing_client(tracking_uri(cfg))
    parent = find_parent_run(client, _report_ref(args.sweep, cfg), cfg.tracking.experiment)
    sweep_id = parent.data.tags.get("sweeplab.sweep_id", parent.info.run_name)
    out = Path(args.out) if args.out else Path(cfg.output_dir) / "reports" / sweep_id
    check_writable(out, "--out" if args.out else "output_dir")
    path = build_report(client, parent.info.run_id, out, optuna_storage=_recorded_storage(parent, cfg))
    print(f"report for {sweep_id}: {path.resolve()}")
    return 0


def _report_ref(ref: str, cfg: DictConfig) -> str:
    """A sweep file as the sweep id ``status`` and ``best`` find for it (the sweeps run from that file, where the
    study is at hand: every ``train -m`` grid is named multirun), else as its sweep.name; a name or id as it is."""
    from sweeplab.sweep.plan import optuna_storage_url
    from sweeplab.sweep.results import file_sweep, find_sweep

    named = file_sweep(ref)
    if named is None:
        return ref
    try:
        return str(find_sweep(optuna_storage_url(cfg), ref)["sweep_id"])
    except UserError:  # no study here: the report is rebuilt from the tracking store alone
        return named[0]


def _recorded_storage(parent: Run, cfg: DictConfig) -> str | None:
    """The Optuna storage a sweep's parent run recorded, or this command's where it names the same URL with the
    password the run holds masked (``cluster.optuna_storage=...``), or where the recorded one is a local file that
    is gone and this command's is there (the sweep's folder moved); None: the recorded one."""
    from sweeplab.sweep.plan import optuna_storage_url
    from sweeplab.tracking.study_store import local_file

    recorded = parent.data.params.get("optuna_storage")
    own = optuna_storage_url(cfg)
    if not recorded or own == recorded:
        return None
    was, is_here = local_file(recorded), local_file(own)
    moved = was is not None and is_here is not None and not was.exists() and is_here.exists()
    return own if redact(own) == recorded or moved else None


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_port_free(host: str, port: int) -> None:
    """``port`` is a TCP port that a server can listen on at ``host``, or a UserError saying what would be right."""
    import socket

    if not 1 <= port <= 65535:
        raise UserError(f"--port {port} is not a TCP port: give one between 1 and 65535 (without --port: the "
                        "command's own)")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is already in use (another 'sweeplab ui' or server?): "
                            "stop it or choose another with --port") from None
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror or err}): check --host and --port") from None


def cmd_dashboard(args: argparse.Namespace) -> int:
    """optuna-dashboard for the sweeps' Optuna storage, on loopback unless --host says otherwise."""
    from optuna_dashboard import wsgi

    from sweeplab.sweep.results import find_sweep, list_sweeps
    from sweeplab.tracking.study_store import open_storage

    check_port_free(args.host, args.port)
    storage = _storage(args.overrides)
    url = f"http://{args.host}:{args.port}/dashboard"
    if args.sweep:
        sweep_id = find_sweep(storage, args.sweep)["sweep_id"]
        study_id = open_storage(storage).get_study_id_from_name(sweep_id)
        print(f"optuna-dashboard for {redact(storage)}\n  sweep {sweep_id}: {url}/studies/{study_id}", flush=True)
    else:
        sweeps = ", ".join(r["sweep_id"] for r in list_sweeps(storage)) or "none yet"
        print(f"optuna-dashboard for {redact(storage)} (sweeps: {sweeps})\n  {url}", flush=True)
    serve_until_stopped(wsgi(open_storage(storage)), args.host, args.port)
    return 0


def serve_until_stopped(app: Any, host: str, port: int) -> None:
    """Serve a WSGI app (wsgiref, one request at a time, each logged) on a thread until Ctrl-C or SIGTERM,
    which reach the main thread as KeyboardInterrupt. Served from the main thread, as optuna-dashboard's
    run_server does, a signal that landed while a response was written was swallowed by wsgiref's error
    handler (it answers 500 and serves on), and the dashboard outlived its stop."""
    import socket
    import threading
    from wsgiref.simple_server import WSGIServer, make_server

    class Server(WSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = make_server(host, port, app, server_class=Server)
    thread = threading.Thread(target=server.serve_forever, name="sweeplab-dashboard", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    finally:  # a request still being answered gets a second to finish; the process ends after it either way
        stopper = threading.Thread(target=server.shutdown, daemon=True)
        stopper.start()
        stopper.join(1.0)
        server.server_close()


def cmd_ui(args: argparse.Namespace) -> int:
    import os

    from sweeplab.compose import compose
    from sweeplab.tracking.store import check_reachable, existing_client, tracking_uri

    cfg = compose(args.overrides)
    uri = tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        check_reachable(uri)  # a server that does not answer is named, not sent to the browser
        print(f"the tracking store is a server already: open {redact(uri)}")
        return 0
    if not args.allowed_hosts and not _is_loopback(args.host):
        print(f"sweeplab ui: warning: serving on {args.host} without --allowed-hosts: a page on any site can reach "
              "this server through a DNS name that points here (DNS rebinding); pass --allowed-hosts with the "
              "names people use to open it", file=sys.stderr, flush=True)
    check_port_free(args.host, args.port)
    client = existing_client(uri)
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    url = f"http://{args.host}:{args.port}"
    print(f"MLflow UI for {redact(uri)}\n  {url}/#/experiments?workflowType=machine_learning", flush=True)
    for e in experiments:
        print(f"  {e.name}: {url}/#/experiments/{e.experiment_id}/runs?workflowType=machine_learning", flush=True)
    artifacts = Path(cfg.output_dir).resolve() / "mlartifacts"
    # the store's URL (and so a database's password) in the server's environment, not on its command line,
    # which any user of the machine reads (ps); mlflow server takes it from MLFLOW_BACKEND_STORE_URI
    command = [sys.executable, "-m", "mlflow", "server", "--default-artifact-root", artifacts.as_uri(),
               "--host", args.host, "--port", str(args.port), "--workers", "1"]
    if args.allowed_hosts:
        command += ["--allowed-hosts", args.allowed_hosts]
    # GenAI job workers (eight processes) are of no use for training runs; exec so that a signal
    # to `sweeplab ui` reaches the server itself.
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_BACKEND_STORE_URI": uri,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    os.execve(sys.executable, command, env)
