"""Every benchmark of benchmarks/run.py at its smoke size: it runs to the end and prints one JSON line
whose figures are sane. No timing is asserted (the machine is shared); the figures' meaning is."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"
VENDOR = ROOT / "benchmarks" / ".vendor" / "hydra_plugins" / "hydra_optuna_sweeper"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # minutes each on a busy 2-core machine
KEYS = {"benchmark", "title", "size", "status", "reason", "checks", "figures", "seconds", "env"}
ENV_KEYS = {"date", "machine", "gpu", "versions", "size"}


def run_benchmarks(*args: str, results: Path, timeout: float = 1700) -> dict[str, dict]:
    proc = subprocess.run([sys.executable, str(RUN), *args, "--smoke", "--results", str(results)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("BENCH_JSON ")]
    by_name = {r["benchmark"]: r for r in lines}
    assert set(by_name) == {a for a in args if a.startswith("B")}, proc.stdout[-3000:] + proc.stderr[-3000:]
    for record in lines:
        assert set(record) >= KEYS, record.keys()
        assert set(record["env"]) >= ENV_KEYS and record["env"]["versions"]["torch"]
        assert record["size"] == "smoke"
        if record["status"] == "ok":
            assert record["checks"], record
            for check in record["checks"]:
                if not check["target"]:
                    assert check["met"] is None, check
                elif check["value"] is not None:  # met says whether the value lies within the target
                    assert math.isfinite(check["value"]), check
                    op, bound = check["target"].split()
                    within = check["value"] <= float(bound) if op == "<=" else check["value"] >= float(bound)
                    assert check["met"] is within
            for row in (r for r in proc.stdout.splitlines() if r.startswith(f"| {record['benchmark']} |")):
                assert "error" not in row
    # the results file holds the very lines printed, and a Markdown table of them
    jsonl = list(results.glob("*-smoke.jsonl"))
    assert len(jsonl) == 1
    assert [json.loads(line)["benchmark"] for line in jsonl[0].read_text().splitlines()] == list(by_name)
    assert "| benchmark | figure | value | target | met |" in jsonl[0].with_suffix(".md").read_text()
    return by_name


def ok(record: dict) -> dict:
    assert record["status"] == "ok", record["reason"]
    return {c["what"]: c for c in record["checks"]}


def check_value(checks: dict, starts: str) -> float:
    found = [c for what, c in checks.items() if what.startswith(starts)]
    assert len(found) == 1, (starts, list(checks))
    return found[0]["value"]


def test_cpu_account_counts_the_processes_it_starts_not_a_strangers():
    """harness.CpuAccount, behind B2's and B8's CPU by role: a test running beside a benchmark starts processes
    too (a Ray sweep's workers), and those must not count."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from harness import CpuAccount

    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass"
    stranger = subprocess.Popen(  # started before the account opens; its child, born while it is open, is not ours
        [sys.executable, "-c", f"import subprocess, sys; sys.stdin.readline(); subprocess.run([sys.executable, "
                               f"'-c', {busy!r}])"], stdin=subprocess.PIPE, text=True)
    time.sleep(0.2)  # born a few clock ticks before the account opens
    with CpuAccount(poll_s=0.1) as cpu:
        stranger.stdin.write("go\n")
        stranger.stdin.flush()
        subprocess.run([sys.executable, "-c", busy, "bare_loop.py"], check=True)  # ours, in the role "bare loop"
        stranger.communicate(timeout=60)
    roles = cpu.by_role()
    assert set(roles) == {"bare loop"} and roles["bare loop"] > 0.3, roles


def test_process_role_tells_ray_s_workers_from_its_raylet():
    """The roles of the command lines a local Ray's processes have (Ray 2.60): the raylet names default_worker.py in
    its --python_worker_command argument, and is one of Ray's services, not a trial worker."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from harness import process_role

    ray = "/venv/lib/python3.11/site-packages/ray"
    raylet = (f"{ray}/core/src/ray/raylet/raylet --raylet_socket_name=/tmp/ray/sockets/raylet "
              f"--python_worker_command=/venv/bin/python {ray}/_private/workers/default_worker.py --node-ip-address=x")
    assert process_role(raylet) == "Ray's services"
    assert process_role(f"/venv/bin/python {ray}/_private/workers/default_worker.py --node-ip-address=127.0.0.1") \
        == "trial workers"
    assert process_role("ray::IDLE") == process_role("ray::ImplicitFunc.train") == "trial workers"
    assert process_role(f"/venv/bin/python -u {ray}/dashboard/agent.py --node-ip-address=127.0.0.1") == "Ray's services"
    assert process_role(f"{ray}/core/src/ray/gcs/gcs_server --gcs_server_port=0") == "Ray's services"
    assert process_role("/venv/bin/python /venv/bin/sweeplab sweep smoke") == "driver"


def test_b1_trainer_against_the_bare_loop(tmp_path):
    record = run_benchmarks("B1", results=tmp_path)["B1"]
    checks = ok(record)
    assert 0.2 < check_value(checks, "sweeplab.train epoch / bare epoch") < 5
    assert checks[next(iter(checks))]["target"] == "<= 1.05"
    f = record["figures"]
    assert f["train_images"] == 1000 and len(f["sweeplab_epochs_s"]) == len(f["bare_epochs_s"]) == 4
    assert len(f["bare_channels_last_epochs_s"]) == 4 and f["memory_format"] == "auto"
    assert check_value(checks, "the same, the bare loop laid out") == pytest.approx(
        f["sweeplab_epoch_s"] / f["bare_channels_last_epoch_s"])  # the trainer's own overhead, like for like


def test_b2_b3_b4_share_one_workload(tmp_path):
    from sweeplab.tracking.store import empty_store_template

    empty_store_template()  # as `make venv` makes it
    records = run_benchmarks("B2", "B3", "B4", results=tmp_path)
    b2 = ok(records["B2"])
    f = records["B2"]["figures"]
    assert f["workload"]["trials"] == 4 and f["workload"]["concurrency"] == 2
    sweep, bare = f["sweeplab"], f["bare"]
    assert 0 < sweep["startup_s"] < sweep["startup_s"] + sweep["steady_s"] <= sweep["wall_s"]
    assert 0 < bare["startup_s"] < bare["wall_s"]
    assert check_value(b2, "sweeplab sweep / bare") == pytest.approx(sweep["wall_s"] / bare["wall_s"])
    nhwc = f["bare_channels_last"]  # the bare loop as fast as the trials: what orchestration alone adds
    assert 0 < nhwc["startup_s"] < nhwc["wall_s"] and nhwc["cpu_s"]["bare loop"] > 0
    assert check_value(b2, "orchestration alone") == pytest.approx(sweep["wall_s"] / nhwc["wall_s"])
    # the steady state begins at the first trial's start on its worker, after the workers' start-up, as the bare
    # loop's begins after its imports and data loading
    assert sweep["startup_s"] < sweep["began_s"] < sweep["wall_s"] and sweep["training_s"] < sweep["steady_s"]
    assert check_value(b2, "the first workers' start") == pytest.approx(sweep["began_s"] - sweep["startup_s"])
    assert check_value(b2, "steady-state overhead") == pytest.approx(
        (sweep["training_s"] - nhwc["steady_s"]) * 2 / 4)
    assert check_value(b2, "naive Ray Tune") > 0
    # every process each side started is counted, by what it is
    assert bare["cpu_s"]["bare loop"] > 0 and not {"driver", "trial workers"} & set(bare["cpu_s"])
    assert {"driver", "trial workers", "Ray's services"} <= set(sweep["cpu_s"])
    assert sweep["cpu_s"]["trial workers"] > 0 and sweep["cpu_s"]["driver"] > 0
    assert sweep["store_template_existed"] is True  # so the tracked sweep ran no MLflow migrations
    all_cpu = sum(sweep["cpu_s"].values())
    assert check_value(b2, "CPU seconds of all") == pytest.approx(all_cpu / sum(bare["cpu_s"].values()))
    # the same trainings one at a time (a core left to the driver and Ray): at full size only, two more sweeps
    assert "make bench" in f["one_at_a_time"] and check_value(b2, "with a core to spare") is None
    hydra = check_value(b2, "Hydra Optuna sweeper")
    if VENDOR.is_dir():
        assert hydra > 0
    else:  # not installed here: the figure is missing and says how to get it
        assert hydra is None and "make bench-deps" in f["hydra_optuna"]

    b3 = ok(records["B3"])
    figures = records["B3"]["figures"]
    assert figures["tracking_on"] == sweep  # B3 reuses B2's tracked run, and adds the untracked one
    assert figures["order"] == ["on", "off"] and figures["runs"] == [sweep, figures["tracking_none"]]
    assert check_value(b3, "sweep wall") == pytest.approx(sweep["wall_s"] / figures["tracking_none"]["wall_s"])
    assert check_value(b3, "trial phase") == pytest.approx(
        sweep["training_s"] / figures["tracking_none"]["training_s"])
    assert figures["one_at_a_time"] == f["one_at_a_time"] and check_value(b3, "with a core to spare") is None

    b4 = ok(records["B4"])
    latency = check_value(b4, "command start -> first epoch metric")
    assert sweep["startup_s"] < latency < sweep["wall_s"]  # a metric exists only after a trial started
    # (a trial's beginning on its worker is dated from its end, which the driver records late on a busy machine)
    assert check_value(b4, "command start -> first trial begun") == sweep["began_s"]


def test_b3_at_full_size_sums_its_own_sweeps_run_off_on_on_off(monkeypatch):
    """At full size B3 runs four sweeps of its own, back to back and mirrored, after a warm-up that counts on neither
    side when nothing ran before it, and takes each ratio from the sums (the sweeps stubbed: their figures chosen)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import b2_sweep

    calls = []
    walls = {1: 10.0, 2: 13.0, 3: 11.0, 4: 12.0}  # off, on, on, off

    def stub(size, tracking, concurrency=2, repeat=0):
        calls.append((tracking, concurrency, repeat))
        return {"wall_s": walls.get(repeat, 99.0), "training_s": walls.get(repeat, 99.0) / 2,
                "cpu_s": {"driver": 5.0 if tracking else 1.0}}

    monkeypatch.setattr(b2_sweep, "sweeplab_run", stub)
    monkeypatch.setattr(b2_sweep, "_runs", {})
    record = b2_sweep.run_b3("full").record({})
    checks = ok(record)
    assert calls[:5] == [(False, 2, -1), (False, 2, 1), (True, 2, 2), (True, 2, 3), (False, 2, 4)]
    assert check_value(checks, "sweep wall") == pytest.approx((13 + 11) / (10 + 12))
    assert check_value(checks, "trial phase") == pytest.approx((13 + 11) / (10 + 12))
    assert check_value(checks, "the driver's CPU") == pytest.approx(4.0)
    assert record["figures"]["order"] == ["off", "on", "on", "off"]


def test_b5_search_efficiency_reads_both_sweeps(tmp_path):
    record = run_benchmarks("B5", results=tmp_path)["B5"]
    ok(record)
    seed = record["figures"]["per_seed"]["0"]
    assert seed["random_epochs"] == 4 * 3  # 4 trials, no early stopping, 3 epochs each
    assert 4 <= seed["tpe_asha_epochs"] <= 12  # every trial runs at least its grace period
    for variant in ("random", "tpe_asha"):
        points = seed["curves"][variant]
        assert len(points) == 4
        assert all(0 < best <= 1 for _, best in points)
        assert [best for _, best in points] == sorted(best for _, best in points)  # best so far never drops
    if seed["tpe_asha_epochs_to_random_best"] is not None:
        assert seed["fraction"] == pytest.approx(seed["tpe_asha_epochs_to_random_best"] / 12)


def test_b6_gpu_code_path_runs_tiny_on_cpu(tmp_path):
    record = run_benchmarks("B6", "--device", "cpu", "--tiny", results=tmp_path)["B6"]
    ok(record)
    f = record["figures"]
    assert set(f["epoch_s"]) == {"lenet", "vgg"}
    assert all(s > 0 for options in f["epoch_s"].values() for s in options.values())
    assert set(f["epoch_s"]["lenet"]) == {"fp32", "bf16", "channels_last", "bf16+channels_last"}
    assert sorted(int(k) for k in f["packing"]) == [1, 2]
    assert all(p["aggregate_samples_per_s"] > 0 for p in f["packing"].values())
    assert all(c["met"] is None for c in record["checks"])  # a CPU run claims no GPU target


def test_b6_packs_as_processes_without_ray(tmp_path):
    """What benchmarks/gpu_device.sh runs on the lent GPU machine, which has no Ray for the packed sweeps."""
    record = run_benchmarks("B6", "--device", "cpu", "--tiny", "--packing", "processes", results=tmp_path)["B6"]
    checks = ok(record)
    f = record["figures"]
    assert f["packing_how"] == "processes" and sorted(int(k) for k in f["packing"]) == [1, 2]
    assert f["packing"]["2"]["samples"] == 2 * f["packing"]["1"]["samples"] > 0
    assert check_value(checks, "2 packed LeNet trials / 1, aggregate samples/s (processes, no Ray)") > 0
    assert "packed as processes without Ray" in record["reason"]
    assert set(f["sweeplab_epoch_s"]) == {"lenet", "vgg"}
    assert all(set(m) == {"eager"} for m in f["sweeplab_epoch_s"].values())  # no CUDA graph on a CPU


def test_gpu_profile_reads_the_eager_step_on_a_cpu(tmp_path):
    """benchmarks/gpu_profile.py, which gpu_device.sh runs on the GPU machine: on a CPU it profiles the eager LeNet
    step alone (no graph, no pack) and writes the profiler's table."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_profile.py"), "--device", "cpu",
                           "--steps", "3", "--table", str(tmp_path / "profile.txt")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [(r["mode"], r["device"], r["steps"]) for r in rows] == [("eager", "cpu", 3)]
    assert rows[0]["wall_ms_per_step"] > 0 and rows[0]["kernels_per_step"] == 0  # no GPU kernels on a CPU
    assert "## eager" in (tmp_path / "profile.txt").read_text()


def test_the_gpu_tier_runs_with_pytest_alone():
    """benchmarks/gpu_device.sh runs the gpu tier on the lent GPU machine, whose image has pytest but none of its
    plugins (xdist, timeout): the tests' conftest must load without them. A CPU collects and skips the tier."""
    bare = ["-p", "no:xdist", "-p", "no:timeout", "-p", "no:cacheprovider", "-o", "addopts=-ra"]
    done = subprocess.run([sys.executable, "-m", "pytest", *bare, "-m", "gpu", "-q", "tests/test_fused.py",
                           "tests/test_zoo_training.py", "tests/test_graphs.py"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:]  # 5 if it collected nothing


def test_b7_fused_trials_report_every_figure(tmp_path):
    record = run_benchmarks("B7", results=tmp_path)["B7"]
    checks = ok(record)
    row = record["figures"]
    assert row["trials"] == 16 and row["device"]
    assert row["packed_fuses"] == torch.cuda.is_available()
    for key in ("one_by_one_samples_per_second", "packed_samples_per_second", "fused_samples_per_second"):
        assert row[key] > 0
    assert check_value(checks, "16 LeNet trials packed / one by one") == pytest.approx(row["packed_speedup"])
    rounds = row["rounds_seconds"]  # each side's every round, the best of which it reports
    assert len(rounds["one_by_one"]) == len(rounds["packed"]) == 3 and min(rounds["packed"]) == row["packed_seconds"]
    assert row["max_val_loss_rel_diff"] < 1e-4  # the fused pack trained the same 16 trials


def test_b8_scale_profiles_the_driver(tmp_path):
    record = run_benchmarks("B8", results=tmp_path)["B8"]
    checks = ok(record)
    f = record["figures"]
    assert sorted(int(n) for n in f["runs"]) == [4, 8]
    for run in f["runs"].values():
        assert run["driver_cpu_s"] > 0 and run["wall_per_trial_s"] > 0
        assert run["client_process_cpu_s"] == 0  # under 128 trials the tracker's client stays in the driver
    assert check_value(checks, "driver and its MLflow client process") == pytest.approx(
        f["marginal_driver_and_client_process_cpu_s"])
    assert check_value(checks, "wall per trial at 8") == pytest.approx(f["runs"]["8"]["wall_per_trial_s"])
    parts = f["profiled"]["components_s"]
    # the MLflow calls run on the tracker's own thread; its callbacks, on the main thread, journal each call
    assert parts["mlflow tracking (sweeplab callback)"] > 0 and parts["optuna ask/tell (sweeplab searcher)"] > 0
    assert 0 < f["profiled"]["main_thread_cpu_s"] <= f["profiled"]["driver_cpu_s"] + 0.5
    assert 0 < check_value(checks, "driver main-thread CPU share: optuna") < 1
    assert f["cluster"]["nodes"] == 2 and f["cluster"]["trials"] == 4


@pytest.mark.parametrize(("storage", "backend"), [("sqlite", "RDBStorage"), ("journal", "JournalStorage")])
def test_searcher_cpu_runs_the_searcher_on_either_storage(storage, backend):
    """benchmarks/searcher_cpu.py, which docs/performance.md quotes for the storage's share of the searcher."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "searcher_cpu.py"), "6", "--sampler", "tpe",
                           "--storage", storage], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.endswith(f"(6 trials, tpe sampler, {backend})\n") and float(proc.stdout.split()[0]) > 0


def test_ab_runs_a_sweep_from_each_checkout_in_turn(tmp_path):
    """benchmarks/ab.py, behind docs/performance-log.md's A/B figures: the other side runs the other tree's code
    (each run checks that its harness is the tree's own), in the order other, this. Its b2 workload, the cheaper
    of the two at smoke size; either is one call of a function its own benchmark's test runs (B2's, B8's)."""
    import shutil

    other = tmp_path / "other"
    for part in ("src", "conf", "sweeps"):
        shutil.copytree(ROOT / part, other / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "benchmarks", other / "benchmarks",
                    ignore=shutil.ignore_patterns("__pycache__", "results", ".vendor"))
    command = [sys.executable, str(ROOT / "benchmarks" / "ab.py"), str(other), "--workload", "b2", "--size", "smoke",
               "--rounds", "1"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs, means = [json.loads(line) for line in proc.stdout.splitlines()[:2]], proc.stdout.splitlines()[2:]
    assert [r["tree"] for r in runs] == [str(other), str(ROOT)]
    assert all(r["wall_s"] > 0 and r["first_metric_s"] > 0 for r in runs)
    assert [json.loads(line)["runs"] for line in means] == [1, 1]


def test_sweep_cpu_accounts_one_command_by_process_role():
    """benchmarks/sweep_cpu.py, behind docs/performance.md's per-sweep CPU figures: a real sweep from a fresh folder."""
    outputs = ROOT / "outputs"  # where the sweep would write, were it started from the repository
    before = sorted(outputs.iterdir()) if outputs.exists() else []
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweep_cpu.py"), "--every", "1", "--", "sweep",
                           "smoke", "sweep.num_trials=1", "train.epochs=1", "data.subset=300", "tracking=none"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    *table, last = proc.stdout.splitlines()
    run = json.loads(last)
    assert {"driver", "trial workers", "Ray's services"} <= set(run["cpu_s"]) and run["wall_s"] > 0
    assert run["cpu_total_s"] == pytest.approx(sum(run["cpu_s"].values()), abs=0.1)
    # --every: each second's CPU by role, which adds up to the run's
    roles = [cell.strip() for cell in table[0].strip("|").split("|")][1:]
    rows = [[float(cell) for cell in line.strip("|").split("|")] for line in table[2:]]
    assert roles == sorted(run["cpu_s"]) and len(rows) >= run["wall_s"] - 1
    for index, role in enumerate(roles, start=1):
        assert sum(row[index] for row in rows) == pytest.approx(run["cpu_s"][role], abs=0.05 * len(rows) + 0.1)
    assert (sorted(outputs.iterdir()) if outputs.exists() else []) == before  # it wrote in a folder of its own


def test_idle_workers_counts_the_workers_of_either_setting():
    """benchmarks/idle_workers.py, behind docs/performance.md's emulated 16-core figure: on this machine's core
    count, Ray's default starts a worker per core for a sweep of one trial at a time, sweeplab's cap one."""
    cpus = 2
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "idle_workers.py"), "--cpus", str(cpus)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {run["setting"]: run for run in map(json.loads, proc.stdout.splitlines())}
    # Ray's default pre-starts a worker per core, and one more when a busy machine has not registered them by the
    # time the trial's actor is placed (3 of 2 once, with the suite's other workers beside it)
    assert runs["ray-default"]["workers_started"] >= cpus and runs["sweeplab"]["workers_started"] == 1
    for run in runs.values():
        assert run["most_alive_at_once"] == run["workers_started"] and run["their_uss_gb"] > 0
        assert run["ray_workers_cpu_s"] > 0 and run["wall_s"] > 0


def test_memory_format_times_each_convnet_in_either_layout():
    """benchmarks/memory_format.py, behind train.memory_format's default: a row per model and image shape, whose
    two layouts train the same model to the same loss but for the order of sums."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory_format.py"), "--models", "lenet",
                           "--images", "64", "--repeats", "1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| lenet")]
    assert [row[1].strip() for row in rows] == ["1x28x28", "3x32x32"]
    for row in rows:
        for timed in row[2:4]:  # "0.035 / 0.023 s = 1.54x"
            contiguous, channels_last = (float(t) for t in timed.split("s =")[0].split("/"))
            assert contiguous > 0 and channels_last > 0
        first, second = (float(v) for v in row[4].split(","))
        assert first == pytest.approx(second, rel=1e-3)
