"""The Ray backend: one Ray task per run of a grid, on a local Ray instance or a cluster.

Resources per run: ``gpus_per_run`` GPUs (a fraction such as 0.25 packs several small runs on one GPU;
1 gives each run a GPU of its own; None: ``1 / jobs`` when the cluster has GPUs, i.e. ``jobs`` runs per
GPU) and one CPU. Ray sets ``CUDA_VISIBLE_DEVICES`` for each task, so a run's ``cuda`` device is the GPU
Ray assigned to it.

A killed run: when a run's worker process dies (killed, out of host memory, its node lost) Ray starts the
task again, up to ``max_retries`` times, on whatever GPU or node is free; the run resumes from its last
checkpoint in ``OUT`` (which must be a filesystem every node sees). A run that fails inside the trainer
(non-finite loss, CUDA out of memory, a bug) is recorded as failed and not retried. A run still without a
result after its retries is reported as failed without a summary on disk, so rerunning the grid resumes
it, and every other run of the grid goes on meanwhile.
"""
from __future__ import annotations

import math
from typing import Callable

from ..config import config_to_dict
from . import worker_env

DEFAULT_RETRIES = 2


def check_gpus_per_run(gpus_per_run) -> float | None:
    """``gpus_per_run`` as a float: None, a fraction in (0, 1], or a whole number of GPUs (what Ray
    accepts); anything else is a ValueError naming the argument."""
    if gpus_per_run is None:
        return None
    if isinstance(gpus_per_run, bool) or not isinstance(gpus_per_run, (int, float)) or not math.isfinite(
            gpus_per_run) or gpus_per_run <= 0 or (gpus_per_run > 1 and gpus_per_run != int(gpus_per_run)):
        raise ValueError(f"gpus_per_run must be a fraction in (0, 1] or a whole number of GPUs, got {gpus_per_run!r}")
    return float(gpus_per_run)


def task_options(cluster_gpus: float, jobs: int, gpus_per_run: float | None = None,
                 max_retries: int = DEFAULT_RETRIES, environ=None) -> dict:
    """The ``ray.remote`` options of one run (see the module docstring)."""
    gpus_per_run = check_gpus_per_run(gpus_per_run)
    if gpus_per_run is None:
        gpus_per_run = 1.0 / jobs if cluster_gpus else 0.0
    elif not cluster_gpus:
        raise ValueError(f"gpus_per_run is {gpus_per_run:g} but the Ray cluster has no GPUs; leave it unset "
                         f"(one CPU per run)")
    elif gpus_per_run > cluster_gpus:
        raise ValueError(f"gpus_per_run is {gpus_per_run:g} but the Ray cluster has {cluster_gpus:g} GPU(s); "
                         f"allowed: at most {cluster_gpus:g}")
    return {"num_cpus": 1, "num_gpus": gpus_per_run, "max_retries": max_retries,
            "runtime_env": {"env_vars": worker_env(environ)}}


def run_ray(todo, out_dir, *, jobs: int, worker: Callable, crashed: Callable, done: Callable,
            ray_address=None, retry_failed: bool = False, init_kwargs: dict | None = None,
            gpus_per_run: float | None = None, max_retries: int = DEFAULT_RETRIES,
            worker_args: tuple = ()) -> None:
    """Run the specs ``todo`` as Ray tasks ``worker(config_dict, out_dir, retry_failed) -> summary`` and
    call ``done(summary)`` as each finishes (``crashed(spec, out_dir, reason)`` for a task that still
    failed after its retries). Starts a local Ray instance (or joins ``ray_address``) unless Ray is
    already initialized, and shuts down what it started."""
    try:
        import ray
    except ImportError:
        from ..runner import MissingBackend
        raise MissingBackend("--backend ray needs the ray package (pip install 'mixerzoo[ray]')") from None
    gpus_per_run = check_gpus_per_run(gpus_per_run)
    started = False
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False, **(init_kwargs or {})}
        if ray_address:
            kwargs["address"] = ray_address
        ray.init(**kwargs)
        started = True
    try:
        opts = task_options(float(ray.cluster_resources().get("GPU", 0)), jobs, gpus_per_run, max_retries)
        remote = ray.remote(**opts)(worker)
        refs = {remote.remote(config_to_dict(s.config), str(out_dir), retry_failed, *worker_args): s for s in todo}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            s = refs[ready[0]]
            try:
                done(ray.get(ready[0]))
            except ray.exceptions.RayError as e:
                done(crashed(s, out_dir, f"ray task failed: {type(e).__name__}: {str(e).splitlines()[0]}"))
    finally:
        if started:
            ray.shutdown()
