"""Fused trials in a sweep (``sweep.fuse: K``): trials that share an architecture train as packs of up to K.

Every trial stays an ordinary Ray Tune trial, so Optuna, the scheduler and MLflow see it as
they see any other; it asks only for a token CPU share and hands its training to a *pack*:
a Ray actor holding one trial's real resources (``sweep.resources``) that trains its members
with ``sweeplab.fused.train_pack`` in a thread. Per epoch, each member's reporter hands the
epoch's metrics to its trial and waits until that trial has reported them to Tune (building
the checkpoint only if the trial asks for it); the trial then asks for its next epoch. When
Tune ends a trial (a scheduler stopped it, or it crashed), the driver-side ``PackCallback``
tells the pack, whose reporter for that member raises StopTraining: the member leaves the
pack, the others go on.

A ``PackManager`` actor seats joining trials: those with equal ``fused.fusion_key`` share a
forming pack, which starts when K have joined, or ``FORMATION_S`` after the last one joined.
A trial that resumes from a checkpoint (a retry, a resumed sweep) or whose model cannot be
fused trains alone in a pack of one, through ``train``, still on the pack's resources.
"""
from __future__ import annotations

import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray
from omegaconf import DictConfig
from ray import tune
from ray.tune.experiment import Trial

from sweeplab.errors import ConfigError
from sweeplab.fusion import MEMBER_KEYS, TRAINING_GROUPS, fusing, fusion_key

if TYPE_CHECKING:
    from sweeplab.sweep.plan import SweepPlan
    from sweeplab.sweep.trainable import TrialSpec
    from sweeplab.train import Reporter, TrainingDiverged, TrainResult

MEMBER_CPU = 0.01  # what a member trial asks of Ray: its pack holds the real resources
FORMATION_S = 2.0  # a pack with room starts this long after its last member joined
NAMESPACE = "sweeplab"  # the pack manager's: trial workers find it by name
PAUSING = ("hyperband", "pbt")  # schedulers that pause trials (Ray's HyperBand at its milestones, PBT to exploit)
_MANAGERS: dict[str, Any] = {}  # the driver holds each manager's handle: without one, Ray ends the actor


# -- planning: the driver decides whether a sweep fuses ------------------------------------------
def check_fusable_plan(cfg: DictConfig, dims: list, overrides: list[str], sweep_file) -> None:
    """With sweep.fuse > 1: refuse a sweep in which no two trials could ever share a pack."""
    from sweeplab.compose import compose
    from sweeplab.fused import fusable

    sc = cfg.sweep
    if sc.fuse <= 1:
        return
    where = f"sweep.fuse={sc.fuse} in {sweep_file}"
    if sc.fuse > sc.max_concurrent:
        raise ConfigError(f"{where}: a pack holds trials that run at once, but "
                          f"sweep.max_concurrent={sc.max_concurrent}; set sweep.max_concurrent to at least {sc.fuse}")
    if str(sc.scheduler.kind) in PAUSING:  # Tune has no callback for a pause: the member would not leave its pack
        raise ConfigError(f"{where}: sweep.scheduler.kind={sc.scheduler.kind} pauses trials, and a pack's members "
                          "train each epoch together, so a paused member would hold its pack up for good; fuse "
                          "with asha, median or none, or set sweep.fuse=1")
    for dim in dims:
        if dim.type != "categorical" and dim.key.startswith(TRAINING_GROUPS) and dim.key not in MEMBER_KEYS:
            raise ConfigError(f"{where}: sweep.space searches {dim.key} over a range, so no two trials share it and "
                              f"none can share a pack (members may differ only in {', '.join(MEMBER_KEYS)}); "
                              f"search {dim.key} as categorical choices, or set sweep.fuse=1")
    groups = [d for d in dims if d.is_group]
    choices: list[list[str]] = [[f"{d.key}={c}"] for d in groups for c in d.choices] or [[]]
    reasons = []
    for extra in choices:
        probe = compose([*overrides, *extra], sweep_file) if extra else cfg
        reason = fusable([probe, probe])
        if reason is None:
            return
        reasons.append(reason)
    raise ConfigError(f"{where}: no trial of this sweep can train fused: {reasons[0]}; set sweep.fuse=1")


def start_packs(plan: SweepPlan, sweep_id: str, spec: TrialSpec) -> TrialSpec:
    """The spec the sweep's trials run with: with fusing on, a ``PackManager`` seats them in packs
    (its name travels in the spec); otherwise ``spec`` as it is. Call with Ray started."""
    import dataclasses

    sc = plan.cfg.sweep
    if sc.fuse > 1 and not fusing(plan.cfg):
        print(f"sweeplab sweep: sweep.fuse={sc.fuse}: fusing is off without a GPU (on CPUs it does not pay); "
              "the trials train unfused", flush=True)
    if not fusing(plan.cfg):
        return spec
    name = f"sweeplab-packs-{sweep_id}"
    resources = {"num_cpus": float(sc.resources.cpu), "num_gpus": float(sc.resources.gpu)}
    manager = PackManager.options(name=name, namespace=NAMESPACE, max_concurrency=4 * int(sc.max_concurrent) + 8)
    _MANAGERS[name] = manager.remote(int(sc.fuse), bool(sc.fuse_on_cpu), resources)
    print(f"sweeplab sweep: trials sharing an architecture train fused, in packs of up to {sc.fuse} "
          f"({sc.resources.cpu:g} CPU + {sc.resources.gpu:g} GPU per pack)", flush=True)
    return dataclasses.replace(spec, pack_manager=name)


def member_resources(spec: TrialSpec, resources: DictConfig) -> dict[str, float]:
    """What one trial asks of Ray: the sweep's resources, or a token share when its pack holds them."""
    if spec.pack_manager is None:
        return {"cpu": resources.cpu, "gpu": resources.gpu}
    return {"cpu": MEMBER_CPU, "gpu": 0}


# -- the member trial's side ------------------------------------------------------------------------
_FUSABLE: dict[tuple, bool] = {}  # fusion_key -> whether the model can train fused (one check per process)


def _key(cfg: DictConfig) -> tuple | None:
    """The trial's pack key, or None when its model cannot train fused (it then trains alone)."""
    from sweeplab.fused import fusable

    key = fusion_key(cfg)
    if key not in _FUSABLE:
        _FUSABLE[key] = fusable([cfg, cfg]) is None
    return key if _FUSABLE[key] else None


def train_in_pack(manager_name: str, cfg: DictConfig, reporter: Reporter, resume: dict | None = None) -> None:
    """``train``'s part in a member trial: the pack trains, this trial reports each of its epochs
    through ``reporter`` (run_trial's: metrics and checkpoint to Tune) and asks for the next."""
    context = tune.get_context()
    trial_id, order = context.get_trial_id(), _natural(context.get_trial_name())
    manager = ray.get_actor(manager_name, namespace=NAMESPACE)
    key, refused = _key(cfg), None
    pack: Any
    while True:  # a pack that started training meanwhile refuses; the manager then seats the trial anew
        pack = ray.get(manager.join.remote(trial_id, key, resume is not None, refused))
        if ray.get(pack.add.remote(trial_id, order, cfg, resume)):
            break
        refused = pack
    after = 0
    while True:
        kind, payload = ray.get(pack.step.remote(trial_id, after))
        if kind == "epoch":
            reporter(payload, lambda: ray.get(pack.checkpoint.remote(trial_id)))
            after = int(payload["epoch"])
        elif kind == "done":
            return
        elif kind == "diverged":
            from sweeplab.train import TrainingDiverged

            raise TrainingDiverged(payload)
        elif kind == "invalid":
            from sweeplab.errors import UserError

            raise UserError(payload)
        else:
            raise RuntimeError(f"the trial's pack failed: {payload}")


def _natural(name: str) -> tuple:
    """Trial names in the order Tune made them: trial_009_seed0 before trial_010_seed0."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


# -- the pack -----------------------------------------------------------------------------------------
@dataclass
class _Seat:
    """One member of a pack: its config, and the two queues between its trial and the pack's thread."""

    cfg: DictConfig
    resume: dict | None
    order: tuple  # where it reports in each epoch: trials in the order Tune made them
    to_trial: queue.Queue = field(default_factory=queue.Queue)  # ("epoch", metrics) | ("state", dict) | (end, why)
    to_pack: queue.Queue = field(default_factory=queue.Queue)  # "checkpoint" | "next" | "leave"


def _on_cpu(value: Any) -> Any:
    """A checkpoint state with every tensor on the CPU: the member trial may have no GPU."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_on_cpu(v) for v in value)
    return value


class _PackActor:
    """Trains one pack in a thread; its members' trials talk to it through ``step``/``checkpoint``."""

    def __init__(self, pack_id: int, capacity: int, force: bool) -> None:
        import torch

        self.capacity, self.force = capacity, force
        self.seats: dict[str, _Seat] = {}
        self.cond = threading.Condition()
        self.closed = False
        self.last_join = time.monotonic()
        gpus = ray.get_gpu_ids()
        self.placement = {"node_ip": ray.util.get_node_ip_address(), "gpu_ids": ",".join(map(str, gpus))}
        self.pack_id = pack_id
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))  # one thread per granted CPU
        threading.Thread(target=self._run, name=f"sweeplab-pack-{pack_id}", daemon=True).start()

    def add(self, trial_id: str, order: tuple, cfg: DictConfig, resume: dict | None) -> bool:
        """Seat a trial; False once the pack is full or training."""
        with self.cond:
            if self.closed or len(self.seats) >= self.capacity:
                return False
            self.seats[trial_id] = _Seat(cfg, resume, order)
            self.last_join = time.monotonic()
            self.cond.notify_all()
            return True

    def step(self, trial_id: str, after: int) -> tuple[str, Any]:
        """The member's next epoch (after it reported epoch ``after``), or how its training ended."""
        seat = self.seats[trial_id]
        if after:
            seat.to_pack.put("next")
        return seat.to_trial.get()

    def checkpoint(self, trial_id: str) -> dict:
        seat = self.seats[trial_id]
        seat.to_pack.put("checkpoint")
        return seat.to_trial.get()[1]

    def leave(self, trial_id: str) -> None:
        """Tune ended this member's trial: it leaves the pack at its next report."""
        if trial_id in self.seats:
            self.seats[trial_id].to_pack.put("leave")

    def _form(self) -> list[tuple[str, _Seat]]:
        with self.cond:
            while len(self.seats) < self.capacity:
                left = FORMATION_S - (time.monotonic() - self.last_join)
                if self.seats and left <= 0:
                    break
                self.cond.wait(timeout=left if self.seats else None)
            self.closed = True
            # in the order Tune made the trials, however they joined: a scheduler's decisions depend on it
            return sorted(self.seats.items(), key=lambda item: item[1].order)

    def _reporter(self, seat: _Seat, size: int) -> Reporter:
        def report(metrics: dict, checkpoint) -> None:
            seat.to_trial.put(("epoch", {**metrics, **self.placement, "pack": f"{self.pack_id} ({size} trials)"}))
            while True:
                request = seat.to_pack.get()
                if request == "checkpoint":
                    seat.to_trial.put(("state", _on_cpu(checkpoint())))
                elif request == "next":
                    return
                else:
                    from sweeplab.train import StopTraining

                    raise StopTraining

        return report

    def _run(self) -> None:
        from sweeplab.fused import train_pack
        from sweeplab.train import TrainingDiverged, granted_device, train

        seats = self._form()
        cfgs = [seat.cfg for _, seat in seats]
        for cfg in cfgs:  # the pack's GPU grant, not its members' (they ask Ray for none)
            cfg.train.device = granted_device(cfg.train.device, ray.get_gpu_ids())
        reporters = [self._reporter(seat, len(seats)) for _, seat in seats]
        ended: set[int] = set()

        def end(index: int, outcome: TrainResult | TrainingDiverged) -> None:
            """A member's trial ends as soon as its member has, while the pack may train on: a diverged member's
            trial would otherwise hold its share of the resources until the pack ends."""
            ended.add(index)
            seats[index][1].to_trial.put(
                ("diverged", str(outcome)) if isinstance(outcome, TrainingDiverged) else ("done", None))

        try:
            if seats[0][1].resume is not None:  # the manager seats a resuming trial alone
                try:
                    end(0, train(cfgs[0], reporters[0], resume=seats[0][1].resume))
                except TrainingDiverged as err:
                    end(0, err)
            else:
                train_pack(cfgs, reporters, force=self.force, on_end=end)
        except Exception as err:  # every member's trial still training fails with it; Tune may retry each alone
            from sweeplab.errors import UserError

            why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            # a config that cannot train (its data, its shapes) ends each trial invalid, as alone: no retry
            message = ("invalid", str(err)) if isinstance(err, UserError) else ("error", why)
            for index, (_, seat) in enumerate(seats):
                if index not in ended:
                    seat.to_trial.put(message)


class _Manager:
    """Seats joining trials in packs and releases a pack once Tune has ended all its members."""

    def __init__(self, size: int, force: bool, resources: dict[str, float]) -> None:
        self.size, self.force, self.resources = size, force, resources
        self.lock = threading.Lock()
        self.forming: dict[tuple, Any] = {}  # pack key -> the pack that may still take members
        self.pack_of: dict[str, Any] = {}  # trial id -> its pack
        self.members: dict[int, set[str]] = {}  # pack id -> trial ids not yet ended
        self.handles: dict[int, Any] = {}
        self.next_id = 0

    def join(self, trial_id: str, key: tuple | None, resumes: bool, refused=None):
        """The pack this trial is to train in (one of its own when it resumes or cannot fuse); the trial
        then takes its seat there. ``refused``: a pack that had started before the trial got there.
        Never waits on a pack (one starting may wait for the resources another still holds)."""
        with self.lock:
            self._release(trial_id)  # a retried trial rejoins under its id
            if refused is not None:
                # it comes back through Ray as another handle of the same actor: equal, not identical
                self.forming = {k: p for k, p in self.forming.items() if p != refused}
            shared = None if resumes else key  # the key of the packs this trial may share
            pack = self.forming.get(shared) if shared is not None else None
            if pack is None:
                pack = self._new_pack(self.size if shared is not None else 1)
                if shared is not None:
                    self.forming[shared] = pack
            self.pack_of[trial_id] = pack
            self.members[self._id(pack)].add(trial_id)
            if shared is not None and len(self.members[self._id(pack)]) >= self.size:
                del self.forming[shared]
            return pack

    def leave(self, trial_id: str) -> None:
        """Tune ended this trial (completed, stopped, crashed or about to be retried)."""
        with self.lock:
            self._release(trial_id)

    def _new_pack(self, capacity: int):
        self.next_id += 1
        pack = Pack.options(**self.resources, max_concurrency=2 * capacity + 4).remote(
            self.next_id, capacity, self.force)
        self.handles[self.next_id], self.members[self.next_id] = pack, set()
        return pack

    def _id(self, pack) -> int:
        return next(i for i, h in self.handles.items() if h == pack)

    def _release(self, trial_id: str) -> None:
        pack = self.pack_of.pop(trial_id, None)
        if pack is None:
            return
        pack.leave.remote(trial_id)
        pack_id = self._id(pack)
        self.members[pack_id].discard(trial_id)
        if not self.members[pack_id]:  # nobody needs it: its resources go back to Ray
            self.forming = {k: p for k, p in self.forming.items() if p is not pack}
            del self.members[pack_id], self.handles[pack_id]
            ray.kill(pack)


Pack = ray.remote(num_cpus=1)(_PackActor)
PackManager = ray.remote(num_cpus=0)(_Manager)


# -- the driver's side ---------------------------------------------------------------------------------
class PackCallback(tune.Callback):
    """Tells the pack manager when Tune ends a member trial, so the member leaves its pack."""

    def __init__(self, manager_name: str) -> None:
        self.manager_name = manager_name

    def _ended(self, trial: Trial) -> None:
        manager = _MANAGERS.get(self.manager_name)
        if manager is not None:
            manager.leave.remote(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._ended(trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._ended(trial)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._ended(trial)  # its retry resumes from its checkpoint, in a pack of its own

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        manager = _MANAGERS.pop(self.manager_name, None)
        if manager is not None:
            ray.kill(manager)  # and with it every pack it made
