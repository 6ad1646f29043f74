"""Executors: who runs a sweep's items. In-process (the default) or a Ray cluster of N workers.

A sweep (`trace_facts`, `run_counterfact`) describes its work as independent items, (id, payload)
pairs, and a module-level function `fn(model, payload) -> record` (a dict of JSON values). The executor
runs `fn` on each payload, on the one model in this process or on Ray actors that each load the model
ONCE from a picklable `ModelSpec`. Only the driver writes the sweep folder (`toolkit.sweep.SweepFolder`):

    * an item's file is written atomically by the driver when its first result arrives, and a result
      for an item already on disk is dropped, so an item is done exactly once even when Ray retries a
      task after a worker died (its half-done run on the dead worker never wrote anything);
    * `<out>/runs.jsonl` gets one line per item written (host, pid, worker, seconds), appended by the
      same single writer; the item's JSON carries the same facts under "run".

Seeds belong to items (each item's payload holds its seed), never to workers, so a sweep's numbers do
not depend on how many workers ran it or which one ran which item (bit for bit on the CPU).
"""
from __future__ import annotations

import os
import socket
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator
from ..core import checks

INSTALL = "pip install workbench[ray]"


def import_ray():
    """Ray, imported when first needed (an optional extra)."""
    try:
        import ray
    except ImportError:
        raise ValueError(f"workers / ray_address: running a sweep on Ray needs the optional extra: {INSTALL}") from None
    return ray


def check_executor_args(workers, ray_address) -> None:
    """`workers`: None or an int >= 1; `ray_address`: None or a non-empty string ("auto", "host:6379",
    "ray://host:10001"). Giving either needs Ray installed; checked before a sweep writes anything."""
    checks.integer(workers, "workers (the number of Ray workers)", none_ok=True)
    if ray_address is not None and (not isinstance(ray_address, str) or not ray_address.strip()):
        raise checks.fail('ray_address', "a Ray cluster address ('auto', 'host:6379', 'ray://host:10001')", ray_address)
    joined = "ray" in sys.modules and sys.modules["ray"] is not None and sys.modules["ray"].is_initialized()
    if ray_address is None and workers is not None and not joined and workers > (os.cpu_count() or 1):
        # a local cluster has this machine's cores: more workers than that would never all start (a cluster this
        # process already joined is checked against its own resources by RayExecutor)
        raise ValueError(f"workers: {workers} workers need {workers} CPUs; a local cluster on this machine has "
                         f"{os.cpu_count() or 1} CPUs (use at most that many, or --ray-address of a larger cluster)")
    if ray_address is None and workers is not None and "ray" not in sys.modules:
        # a cluster of this machine only: every socket on 127.0.0.1 (Ray reads this when imported), and
        # time for a raylet that starts slowly on a busy machine
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    if workers is not None or ray_address is not None:
        import_ray()
    if ray_address is not None:
        probe_address(ray_address.strip())


def start_local_cluster(ray, num_cpus: int = 2, attempts: int = 3) -> None:
    """`ray.init` of a cluster of this machine, tried `attempts` times: on a busy machine Ray's dashboard agent
    can take longer to start than the raylet waits for it (a fixed 15 s), and the node then fails to start."""
    import psutil  # a dependency of Ray

    for attempt in range(attempts):
        before = {c.pid for c in psutil.Process().children(recursive=True)}
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            return
        except BaseException as e:  # Ray raises a bare Exception for this; Ctrl-C / SIGTERM land here too
            ray.shutdown()
            # a node that failed to start leaves its GCS server behind: stop every process this attempt started
            for c in psutil.Process().children(recursive=True):
                if c.pid not in before:
                    try:
                        c.kill()
                    except psutil.NoSuchProcess:
                        pass
            if not isinstance(e, Exception) or "timed out during startup" not in str(e) or attempt == attempts - 1:
                raise


def probe_address(address: str, timeout: float = 10.0) -> None:
    """Refuse, within `timeout` seconds and naming it, a cluster address where nothing answers ("auto" is
    looked up by Ray itself): `ray.init` alone waits minutes there."""
    if address != "auto":
        hostport = address.split("://", 1)[-1]
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise checks.fail('ray_address', "'auto', 'host:port' or 'ray://host:port'", address)
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
        except OSError as e:
            raise ValueError(f"ray_address: no Ray cluster answers at {address!r} "
                             f"({e.strerror or type(e).__name__}, within {timeout:g} s)") from None


def connect(ray, address: str, timeout: float = 10.0) -> None:
    """Join the Ray cluster at `address` ("auto", "host:port", "ray://host:port"), failing within `timeout`
    seconds with a message naming the address when nothing answers there."""
    probe_address(address, timeout)
    try:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    except Exception as e:  # Ray raises ConnectionError, RuntimeError, bare Exception
        ray.shutdown()
        raise ValueError(f"ray_address: could not join the Ray cluster at {address!r}: {e}") from None


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the driver's model: `load_model(name, **options)`, or for "tiny-<family>"
    `tiny_model(family, **options)`. `fingerprint` (the driver's `Model.fingerprint`) is checked on each
    worker, so a worker never runs a sweep on other weights (an edited model, another checkpoint)."""

    name: str
    options: dict = field(default_factory=dict)
    fingerprint: str | None = None

    def load(self):
        from ..core.loading import load_model
        from ..core.tiny import tiny_model

        if self.name.startswith("tiny-"):
            return tiny_model(self.name.removeprefix("tiny-"), **self.options)
        return load_model(self.name, **self.options)


def model_spec(model, **options) -> ModelSpec:
    """The spec of a `Model` loaded by name (`load_model(name)`, `tiny_model(family)`); `options` are the
    loading keywords it was built with (e.g. `n_layers=4` for a tiny model, `dtype=...`)."""
    from ..core.model import Model

    if isinstance(model, ModelSpec):
        return model
    if not isinstance(model, Model):
        raise checks.fail('model', 'a workbench Model or a ModelSpec', type(model).__name__)
    if not isinstance(model.name, str) or not model.name:
        raise ValueError("model: a model built in memory has no name to load it by on a worker; pass "
                         "model_spec=ModelSpec(name, options) naming how to load it")
    return ModelSpec(model.name, dict(options), model.fingerprint)


def _run_info(worker: int, seconds: float, cpu_seconds: float) -> dict:
    """Where an item ran and how long it took: wall-clock seconds, and the CPU seconds of its process (on a
    busy machine the two differ by the share of the cores the worker got)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "worker": worker, "seconds": round(seconds, 4),
            "cpu_seconds": round(cpu_seconds, 4)}


def _timed(fn: Callable, model, payload) -> tuple:
    t0, c0 = time.perf_counter(), time.process_time()
    record = fn(model, payload)
    return record, time.perf_counter() - t0, time.process_time() - c0


class InProcess:
    """Run the items one after another on the driver's model (the default executor)."""

    workers = 1

    def map(self, model, fn: Callable, items: list[tuple]) -> Iterator[tuple]:
        for item_id, payload in items:
            record, seconds, cpu = _timed(fn, model, payload)
            yield item_id, record, _run_info(0, seconds, cpu)

    def close(self) -> None:
        pass


class _Worker:
    """A Ray actor: loads the model once, then runs items on it."""

    def __init__(self, spec: ModelSpec, index: int, threads: int | None):
        import torch

        self.index, self.error = index, None
        # CPU threads: Ray's share for this actor unless given (torch's CPU results depend on the thread
        # count, so a run equals an in-process one bit for bit at the same count)
        torch.set_num_threads(threads or int(os.environ.get("OMP_NUM_THREADS", "1")))
        try:
            self.model = spec.load()
            self.fingerprint = self.model.fingerprint
        except Exception as e:  # reported by ready(): an actor whose constructor raises is hard to read
            self.model, self.fingerprint, self.error = None, None, f"{type(e).__name__}: {e}"

    def ready(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "worker": self.index,
                "fingerprint": self.fingerprint, "error": self.error}

    def run(self, fn: Callable, payload) -> tuple:
        record, seconds, cpu = _timed(fn, self.model, payload)
        return record, _run_info(self.index, seconds, cpu)


class RayExecutor:
    """Items on `workers` Ray actors, each holding the model (loaded once, from `spec`).

    `address`: None starts a local cluster (or uses the one this process already joined); "auto" or
    "host:port" joins a running cluster (`ray start --head` on one node, `ray start --address ...` on the
    others). `workers` defaults to the cluster's GPUs (one actor per GPU), else its nodes. A worker killed
    mid-item is restarted by Ray (`max_restarts`) and its item run again (`max_task_retries`, and, if an
    actor is gone for good, the driver resubmits the item to another one, at most `retries` times)."""

    def __init__(self, spec: ModelSpec, workers: int | None = None, address: str | None = None, *,
                 retries: int = 3, gpus_per_worker: float | None = None, cpus_per_worker: float = 1,
                 threads: int | None = None):
        check_executor_args(workers if address is not None else (workers or 1), address)
        ray = import_ray()
        if not isinstance(spec, ModelSpec):
            raise checks.fail('spec', 'a ModelSpec (see model_spec)', type(spec).__name__)
        self.spec, self.retries, self.started_ray, self.actors = spec, retries, False, []
        if address is not None:
            connect(ray, address)
        elif not ray.is_initialized():
            start_local_cluster(ray, os.cpu_count() or 1)
            self.started_ray = True
        try:
            res = ray.cluster_resources()
            n_gpus = int(res.get("GPU", 0))
            self.workers = workers or n_gpus or max(1, sum(1 for n in ray.nodes() if n.get("Alive")))
            gpus = gpus_per_worker if gpus_per_worker is not None else (1 if n_gpus else 0)
            # bounded: every worker holds its CPUs (and GPU) while it lives, so workers the cluster cannot
            # place would wait forever; refuse them before any actor starts
            need, have = self.workers * cpus_per_worker, res.get("CPU", 0)
            if need > have or (gpus and self.workers * gpus > n_gpus):
                where = f"at {address!r}" if address is not None else "on this machine"
                raise ValueError(f"workers: {self.workers} workers need {need:g} CPUs and {self.workers * gpus:g} GPUs; "
                                 f"the Ray cluster {where} has {have:g} CPUs and {n_gpus} GPUs")
            # each worker holds its GPU (or its CPU) while it lives, so the scheduler spreads workers over free devices
            actor = ray.remote(_Worker).options(max_restarts=retries, max_task_retries=retries, num_gpus=gpus,
                                                num_cpus=cpus_per_worker)
        except BaseException:
            self.close()
            raise
        self.actors = [actor.remote(spec, i, threads) for i in range(self.workers)]
        self.info = None

    def start(self) -> list[dict]:
        """Wait for every worker to load its model; check the fingerprints. Returns each worker's host and pid."""
        ray = import_ray()
        if self.info is None:
            self.info = ray.get([a.ready.remote() for a in self.actors])
            for w in self.info:
                if w["error"]:
                    raise ValueError(f"model: worker {w['worker']} on {w['host']} could not load {self.spec.name!r}: {w['error']}")
                if self.spec.fingerprint and w["fingerprint"] != self.spec.fingerprint:
                    raise ValueError(f"model: worker {w['worker']} loaded {self.spec.name!r} with fingerprint "
                                     f"{w['fingerprint']}, the driver's model has {self.spec.fingerprint} (edited "
                                     "weights, or other loading options: pass them in the ModelSpec)")
        return self.info

    def map(self, model, fn: Callable, items: list[tuple]) -> Iterator[tuple]:
        """Yield (id, record, run info) as items finish, in any order; one item in flight per worker."""
        ray = import_ray()
        from ray.exceptions import RayActorError, RayTaskError

        self.start()
        pending, inflight, tries = deque(items), {}, {}
        free = deque(range(len(self.actors)))

        def submit(k):
            item_id, payload = pending.popleft()
            inflight[self.actors[k].run.remote(fn, payload)] = (k, item_id, payload)

        while pending and free:
            submit(free.popleft())
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)  # a timeout: Ctrl-C / SIGTERM are seen
            if not ready:
                continue
            ref = ready[0]
            k, item_id, payload = inflight.pop(ref)
            try:
                record, info = ray.get(ref)
            except RayTaskError as e:  # the item's own error (bad input, ...): raise it as itself
                raise e.as_instanceof_cause() from None
            except RayActorError as e:  # the worker died and Ray gave up retrying: another worker runs it
                tries[item_id] = tries.get(item_id, 0) + 1
                if tries[item_id] > self.retries:
                    raise RuntimeError(f"item {item_id!r}: its worker died {tries[item_id]} times ({e})") from None
                pending.appendleft((item_id, payload))
                k = (k + 1) % len(self.actors)
            else:
                yield item_id, record, info
            if pending:
                submit(k)

    def close(self) -> None:
        """Stop the workers (and the local cluster if this executor started it)."""
        ray = import_ray()
        try:
            for a in self.actors:
                ray.kill(a)
        finally:
            self.actors = []
            if self.started_ray:
                ray.shutdown()
                self.started_ray = False


def make_executor(model, workers: int | None = None, ray_address: str | None = None, executor=None, spec=None):
    """The executor a sweep runs on: `executor` if given, Ray when `workers` or `ray_address` is given,
    else in-process. Returns (executor, owned): an executor made here is closed by the sweep."""
    if executor is not None:
        if workers is not None or ray_address is not None:
            raise ValueError("executor: give an executor, or workers / ray_address, not both")
        if not hasattr(executor, "map"):
            raise checks.fail('executor', 'InProcess() or a RayExecutor', type(executor).__name__)
        return executor, False
    check_executor_args(workers, ray_address)
    if workers is None and ray_address is None:
        return InProcess(), True
    ex = RayExecutor(spec or model_spec(model), workers, ray_address)
    try:
        ex.start()  # every worker's model loaded and checked before the sweep writes anything
    except BaseException:
        ex.close()
        raise
    return ex, True


@dataclass
class Run:
    """How a sweep runs, the one argument every sweep function takes (`run=Run(...)`) and the CLI builds from
    --workers / --ray-address / --force: on which executor (`executor` made beforehand, else Ray when `workers`
    or `ray_address` is given: a local cluster of `workers`, or the cluster at `ray_address`; else in-process),
    with a progress bar or not, and whether another configuration's results in the folder are replaced (`force`).
    Results are the same on every executor (bit for bit on the CPU at equal thread counts)."""

    workers: int | None = None
    ray_address: str | None = None
    executor: object = None
    progress: bool = True
    force: bool = False

    def check(self) -> "Run":
        """Every setting checked (and Ray importable when asked for) before a sweep loads or writes anything."""
        for name in ("progress", "force"):
            if not isinstance(getattr(self, name), bool):
                raise checks.fail(name, 'True or False', getattr(self, name))
        if self.executor is not None:
            if self.workers is not None or self.ray_address is not None:
                raise ValueError("executor: give an executor, or workers / ray_address, not both")
            if not hasattr(self.executor, "map"):
                raise checks.fail('executor', 'InProcess() or a RayExecutor', type(self.executor).__name__)
        check_executor_args(self.workers, self.ray_address)
        return self

    @property
    def distributed(self) -> bool:
        return self.workers is not None or self.ray_address is not None or \
            (self.executor is not None and not isinstance(self.executor, InProcess))

    def records(self, model, items: list[tuple], fn: Callable, folder=None, *, desc: str = "items",
                unit: str = "item") -> dict:
        """Run the (id, payload) items (`fn(model, payload) -> record`) on this run's executor; {id: record}.
        With a sweep folder (`toolkit.sweep.SweepFolder`, not yet started) through its driver: resumable, locked,
        finished items read back instead of run. With None, the same items on the same executor, kept in memory."""
        with self.executor_for(model) as ex:
            if folder is None:
                return {i: r for i, r, _ in ex.map(model, fn, list(items))}
            with folder.start():
                folder.run(items, fn, model, ex, progress=self.progress, desc=desc, unit=unit)
                return {i: folder.load(i) for i, _ in items}

    @contextmanager
    def executor_for(self, model, spec=None):
        """The executor for `model` (its workers started and their models checked before it is yielded);
        one made here is closed on the way out, also on Ctrl-C or SIGTERM (Ray's handler raises SystemExit)."""
        ex, owned = make_executor(model, self.workers, self.ray_address, self.executor, spec)
        try:
            yield ex
        finally:
            if owned:
                ex.close()


def as_run(run: Run | None = None, *, force: bool = False, progress: bool | None = None, workers=None,
           ray_address=None, executor=None) -> Run:
    """`run`, or a Run of the keywords the sweep functions also accept one by one (`force=`, `workers=`, ...);
    both at once is an error. Checked."""
    loose = {"force": force, "workers": workers, "ray_address": ray_address, "executor": executor}
    if run is not None:
        if not isinstance(run, Run):
            raise checks.fail('run', 'a workbench Run (workers, ray_address, executor, progress, force)',
                              type(run).__name__)
        given = [k for k, v in loose.items() if v not in (None, False)]
        if given:
            raise ValueError(f"run: give run=Run(...) or {', '.join(given)}=..., not both")
        return run.check()
    return Run(workers, ray_address, executor, True if progress is None else progress, force).check()


def run_items(sweep, items: Iterable[tuple], fn: Callable, model, executor, **kw) -> None:
    """`sweep.run(items, fn, model, executor, **kw)` (the one driver is `core.sweep.SweepFolder.run`)."""
    sweep.run(items, fn, model, executor, **kw)
