"""Sweeps past one process: executors that run a sweep's independent items in-process or on a Ray
cluster (`RayExecutor`, one model per worker, loaded once from a `ModelSpec`), and models split over
devices (`load_model(..., device_map=...)`). Ray is an optional extra: `pip install workbench[ray]`."""
from .devices import check_device_map, module_device, split_model
from .executor import (INSTALL, InProcess, ModelSpec, RayExecutor, Run, as_run, check_executor_args, connect, make_executor,
                       model_spec, run_items, start_local_cluster)

__all__ = ["Run", "as_run", "connect", "InProcess", "RayExecutor", "ModelSpec", "model_spec", "make_executor", "run_items", "check_executor_args",
           "INSTALL", "start_local_cluster", "split_model", "check_device_map", "module_device"]
