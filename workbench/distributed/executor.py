"""Executors: who runs a sweep's items. In-process (the default) or a Ray cluster of N workers.

A sweep (`trace_facts`, `run_counterfact`) describes its work as independent items, (id, payload)
pairs, and a module-level function `fn(model, payload) -> record` (a dict of JSON values). The executor
runs `fn` on each payload, on the one model in this process or on Ray actors that each load the model
ONCE from a picklable `ModelSpec`. Only the driver writes the sweep folder (`core.sweep.SweepFolder`):

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
        raise ValueError(f"ray_address: expected a Ray cluster address ('auto', 'host:6379', 'ray://host:10001'), "
                         f"got {ray_address!r}")
    if ray_address is None and workers is not None and "ray" not in sys.modules:
        # a cluster of this machine only: every socket on 127.0.0.1 (Ray reads this when imported), and
        # time for a raylet that starts slowly on a busy machine
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    if workers is not None or ray_address is not None:
        import_ray()


def start_local_cluster(ray, num_cpus: int = 2, attempts: int = 3) -> None:
    """`ray.init` of a cluster of this machine, tried `attempts` times: on a busy machine Ray's dashboard agent
    can take longer to start than the raylet waits for it (a fixed 15 s), and the node then fails to start."""
    for attempt in range(attempts):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            return
        except Exception as e:  # Ray raises a bare Exception for this
            ray.shutdown()
            if "timed out during startup" not in str(e) or attempt == attempts - 1:
                raise


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
        raise ValueError(f"model: expected a workbench Model or a ModelSpec, got {type(model).__name__}")
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
            raise ValueError(f"spec: expected a ModelSpec (see model_spec), got {type(spec).__name__}")
        self.spec, self.retries, self.started_ray = spec, retries, False
        if address is not None:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        elif not ray.is_initialized():
            start_local_cluster(ray, max(workers or 1, os.cpu_count() or 1))
            self.started_ray = True
        res = ray.cluster_resources()
        n_gpus = int(res.get("GPU", 0))
        self.workers = workers or n_gpus or max(1, sum(1 for n in ray.nodes() if n.get("Alive")))
        gpus = gpus_per_worker if gpus_per_worker is not None else (1 if n_gpus else 0)
        # each worker holds its GPU (or its CPU) while it lives, so the scheduler spreads workers over free devices
        actor = ray.remote(_Worker).options(max_restarts=retries, max_task_retries=retries, num_gpus=gpus,
                                            num_cpus=cpus_per_worker)
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
            [ref], _ = ray.wait(list(inflight), num_returns=1)
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
        for a in self.actors:
            ray.kill(a)
        self.actors = []
        if self.started_ray:
            ray.shutdown()


def make_executor(model, workers: int | None = None, ray_address: str | None = None, executor=None, spec=None):
    """The executor a sweep runs on: `executor` if given, Ray when `workers` or `ray_address` is given,
    else in-process. Returns (executor, owned): an executor made here is closed by the sweep."""
    if executor is not None:
        if workers is not None or ray_address is not None:
            raise ValueError("executor: give an executor, or workers / ray_address, not both")
        if not hasattr(executor, "map"):
            raise ValueError(f"executor: expected InProcess() or a RayExecutor, got {type(executor).__name__}")
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


def run_items(sweep, items: Iterable[tuple], fn: Callable, model, executor, *, total: int | None = None,
              done: int = 0, progress: bool = True, desc: str = "items", unit: str = "item",
              on_record: Callable | None = None) -> None:
    """Run the (id, payload) items not yet in `sweep` on `executor` and write each result as it arrives.

    One tqdm bar over the sweep (`total` items, `done` of them finished before), with the throughput
    of all workers together. The driver is the only writer, and skips a result for an item already
    written, so every item is written once. `on_record(id, record)` runs after each write (figures)."""
    from tqdm.auto import tqdm

    from ..core.io import append_jsonl

    todo = [(i, p) for i, p in items if not sweep.done(i)]
    total = (done + len(todo)) if total is None else total
    bar = tqdm(total=total, initial=done, disable=not progress, desc=desc, unit=unit)
    bar.set_postfix(workers=getattr(executor, "workers", 1))
    try:
        for item_id, record, info in executor.map(model, fn, todo):
            if sweep.done(item_id):
                continue
            sweep.save(item_id, {**record, "run": info})
            append_jsonl(sweep.path / "runs.jsonl", {"id": item_id, **info})
            if on_record is not None:
                on_record(item_id, record)
            bar.update(1)
    finally:
        bar.close()
