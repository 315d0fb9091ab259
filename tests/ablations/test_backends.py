"""Execution backends: local worker processes (--jobs), Ray on a local instance, torchrun-style DDP (gloo)."""
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch

import standin_plugin
from ablations import runner
from ablations.config import run_config_from_dict
from ablations.checkpoint import load_checkpoint
from ablations.grid import RunSpec, run_id

HERE = Path(__file__).parent


def specs(n, **over):
    out = []
    for seed in range(n):
        c = run_config_from_dict(standin_plugin.config(seed=seed, **over))
        out.append(RunSpec(run_id=run_id(c), config=c, point={"seed": seed}))
    return out


def test_jobs_run_in_parallel_worker_processes(tmp_path):
    sp = specs(3)
    lines = []
    res = runner.run_grid(sp, tmp_path, jobs=2, progress=False, echo=lines.append)
    assert [r["run_id"] for r in res] == [s.run_id for s in sp]
    assert all(r["status"] == "completed" for r in res)
    assert len(lines) == 3 and all(" ok " in ln for ln in lines)
    # same results as in-process execution (workers are deterministic too)
    inproc = runner.execute_run(sp[1].config, tmp_path / "inproc")
    assert inproc["stages"]["standin_parity"]["metrics"] == res[1]["stages"]["standin_parity"]["metrics"]
    # rerun: everything is skipped
    again = runner.run_grid(sp, tmp_path, jobs=2, progress=False, echo=lines.append)
    assert all(r.get("skipped") for r in again)


def test_interrupt_stops_worker_processes_at_once(tmp_path):
    # Ctrl-C while workers train: the grid must stop now, not after the runs already queued to the pool
    # (each of the long runs below takes ~15 s); interrupted runs are left resumable.
    import multiprocessing

    quick = specs(1)
    long = [RunSpec(run_id=run_id(c), config=c, point={}) for c in (run_config_from_dict(standin_plugin.config(
        seed=seed, checkpoint_every=1000, pretrain={"steps": 6000, "eval_every": 6000})) for seed in (1, 2, 3))]

    def interrupt(line):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run_grid(quick + long, tmp_path, jobs=2, progress=False, echo=interrupt)
    t0 = time.perf_counter()
    deadline = t0 + 10
    while multiprocessing.active_children() and time.perf_counter() < deadline:
        time.sleep(0.05)
    assert not multiprocessing.active_children()
    assert time.perf_counter() - t0 < 10
    assert (tmp_path / quick[0].run_id / "summary.json").exists()
    for s in long:
        d = tmp_path / s.run_id
        assert not (d / "summary.json").exists()
        if d.exists():                                   # its lock died with the worker: a rerun can resume it
            lock = runner._try_lock(d)
            assert lock is not None
            lock.close()


@pytest.mark.slow  # ~30 s: starting a local Ray instance dominates
def test_ray_grid_survives_a_killed_run_and_packs_runs_on_a_gpu(tmp_path, monkeypatch):
    # Three runs on a local Ray instance with one (pretend) GPU and two CPUs, half a GPU per run; the worker of
    # run 1 dies mid-pretraining (os._exit, as if killed): Ray starts it again and it resumes from its checkpoint.
    ray = pytest.importorskip("ray")
    from ablations.backends.ray_backend import task_options
    marker, steps = tmp_path / "killed.marker", tmp_path / "steps.log"
    sp = specs(3)
    killed_cfg = run_config_from_dict(standin_plugin.config(
        seed=1, model={"mixer_kwargs": {"exit_at_call": 8, "exit_marker": str(marker)}},
        pretrain={"options": {"step_log": str(steps)}}))
    sp[1] = RunSpec(run_id=run_id(killed_cfg), config=killed_cfg, point={})
    monkeypatch.setenv("NCCL_DEBUG", "WARN")
    monkeypatch.delenv("NCCL_NVLS_ENABLE", raising=False)
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}})
    try:
        t0 = time.perf_counter()
        res = runner.run_grid(sp, tmp_path / "grid", backend="ray", gpus_per_run=0.5, progress=False,
                              echo=lambda *a: None)
        print(f"ray grid: {time.perf_counter() - t0:.1f}s")
        assert [r["status"] for r in res] == ["completed"] * 3
        for s in sp:
            assert json.loads((tmp_path / "grid" / s.run_id / "summary.json").read_text())["status"] == "completed"
        # the worker env: multicast off where the parent leaves it unset, the parent's NCCL settings passed on
        probe = ray.remote(**task_options(1.0, 1, 0.5))(
            lambda: {k: os.environ.get(k) for k in ("NCCL_NVLS_ENABLE", "NCCL_DEBUG", "NVSHMEM_DISABLE_NVLS")})
        assert ray.get(probe.remote()) == {"NCCL_NVLS_ENABLE": "0", "NCCL_DEBUG": "WARN", "NVSHMEM_DISABLE_NVLS": "1"}
    finally:
        ray.shutdown()
    assert marker.exists()                                   # the worker did die
    by_pid = {}
    for pid, step in (ln.split() for ln in steps.read_text().splitlines()):
        by_pid.setdefault(pid, []).append(int(step))
    first, second = by_pid.values()                          # two processes trained the pretraining stage
    assert first == list(range(8)) and second == list(range(5, 12))   # resumed at its step-5 checkpoint
    ref = runner.execute_run(killed_cfg, tmp_path / "ref")   # the marker exists now: no kill
    assert res[1]["stages"]["standin_parity"]["metrics"] == ref["stages"]["standin_parity"]["metrics"]
    assert res[1]["stages"]["standin_copy"]["metrics"] == ref["stages"]["standin_copy"]["metrics"]


def test_ray_task_options():
    from ablations.backends.ray_backend import task_options
    assert task_options(0.0, 4)["num_gpus"] == 0.0                      # no GPUs: one CPU per run
    assert task_options(8.0, 1)["num_gpus"] == 1.0                      # one run per GPU
    assert task_options(8.0, 4)["num_gpus"] == 0.25                     # --jobs 4: four runs per GPU
    assert task_options(8.0, 1, gpus_per_run=0.5)["num_gpus"] == 0.5
    assert task_options(8.0, 1, gpus_per_run=2)["num_gpus"] == 2.0
    assert task_options(8.0, 1)["max_retries"] >= 1
    env = task_options(1.0, 1, environ={"NCCL_NVLS_ENABLE": "1", "HOME": "/x"})["runtime_env"]["env_vars"]
    assert env == {"NCCL_NVLS_ENABLE": "1", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
    for bad in (0, -1, 1.5, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="gpus_per_run must be a fraction in"):
            task_options(8.0, 1, gpus_per_run=bad)
    with pytest.raises(ValueError, match="gpus_per_run is 2 but the Ray cluster has 1 GPU"):
        task_options(1.0, 1, gpus_per_run=2)
    with pytest.raises(ValueError, match="gpus_per_run is 0.5 but the Ray cluster has no GPUs"):
        task_options(0.0, 1, gpus_per_run=0.5)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg_dict, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        summary = runner.execute_run(run_config_from_dict(cfg_dict), out)
        if rank == 1:  # rank 1 writes nothing itself; record what it computed for the comparison
            (Path(out) / "rank1_summary.json").write_text(json.dumps(summary, default=str))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_ddp_two_process_gloo_matches_single_process(tmp_path):
    # Sequence task only: with equal shards, the average of the shard losses is the full-batch loss, so two
    # DDP processes must reproduce the single-process run (up to float reduction order).
    cfg_dict = standin_plugin.config(pretrain=None, model={"dropout": 0.0}, tasks=[
        {"task": "standin_parity", "steps": 4, "batch_size": 8, "optim": {"lr": 1e-2, "warmup_steps": 1}}])
    c = run_config_from_dict(cfg_dict)
    single = runner.execute_run(c, tmp_path / "single")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), cfg_dict, str(tmp_path / "ddp")), nprocs=2,
                                join=True)
    d = tmp_path / "ddp" / run_id(c)
    ddp = json.loads((d / "summary.json").read_text())
    assert ddp["status"] == "completed"
    conf = json.loads((d / "config.json").read_text())
    assert conf["world_size"] == 2
    a = load_checkpoint(d / "ckpt" / "standin_parity.safetensors")["model"]
    b = load_checkpoint(tmp_path / "single" / run_id(c) / "ckpt" / "standin_parity.safetensors")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    rank1 = json.loads((tmp_path / "ddp" / "rank1_summary.json").read_text())
    assert rank1["stages"]["standin_parity"]["metrics"]["val"]["accuracy"] == \
        single["stages"]["standin_parity"]["metrics"]["val"]["accuracy"]
    assert json.loads((d / "summary.json").read_text())["stages"]["standin_parity"]["metrics"]["val"]["accuracy"] \
        == single["stages"]["standin_parity"]["metrics"]["val"]["accuracy"]


def test_shard_batch_rejects_uneven_batches():
    b = {"input_ids": torch.zeros(6, 3, dtype=torch.long)}
    assert runner.dist_info() == (1, 0, 0)
    from ablations.trainer import shard_batch
    assert shard_batch(b, 1, 3)["input_ids"].shape == (2, 3)
    with pytest.raises(ValueError, match=r"batch_size \(6\) must be divisible by the number of DDP processes \(4\)"):
        shard_batch(b, 0, 4)


def test_a_killed_worker_fails_only_its_own_run(tmp_path):
    """A SIGKILLed worker fails only its own run; the pending runs still run."""
    sp = specs(4)
    doomed = run_config_from_dict(standin_plugin.config(seed=7, model={"mixer_kwargs": {"kill_step": 3}}))
    sp.insert(1, RunSpec(run_id=run_id(doomed), config=doomed, point={}))
    lines = []
    res = runner.run_grid(sp, tmp_path, jobs=2, progress=False, echo=lines.append)
    status = {r["run_id"]: r for r in res}
    assert status[run_id(doomed)]["status"] == "failed"
    assert "SIGKILL" in status[run_id(doomed)]["reason"]
    assert [status[s.run_id]["status"] for s in sp if s.run_id != run_id(doomed)] == ["completed"] * 4
    on_disk = json.loads((tmp_path / run_id(doomed) / "summary.json").read_text())
    assert on_disk["status"] == "failed" and "SIGKILL" in on_disk["reason"]
    assert any("FAILED" in ln and "SIGKILL" in ln for ln in lines)


def test_death_cause_names_signal_exit_code_and_oom():
    assert runner.death_cause(-9) .startswith("killed by SIGKILL")
    assert "out of memory" in runner.death_cause(-9, 0, 1)
    assert runner.death_cause(-11) == "killed by SIGSEGV"
    assert "code 3" in runner.death_cause(3)


@pytest.mark.parametrize("jobs", [1, 2])
def test_stop_after_starts_no_run_once_the_time_has_passed(tmp_path, monkeypatch, jobs):
    """--stop-after: runs start only while the time has not passed; those under way finish; a second call runs
    the rest (and skips the finished ones)."""
    sp = specs(4)
    clock = {"t": 0.0}
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock["t"])
    lines = []

    def echo(line):  # the time passes once the first run has finished
        lines.append(line)
        clock["t"] = 100.0

    first = runner.run_grid(sp, tmp_path, jobs=jobs, progress=False, echo=echo, stop_after=15)
    # the runs that started at t = 0 (one per job) finish; none starts after
    assert len(first) == jobs and all(r["status"] == "completed" for r in first)
    assert f"{4 - jobs} run(s) not started" in lines[-1] and "run the same command again" in lines[-1]
    second = runner.run_grid(sp, tmp_path, jobs=jobs, progress=False, echo=lambda *_: None)
    assert [r["run_id"] for r in second] == [s.run_id for s in sp]
    assert sum(bool(r.get("skipped")) for r in second) == jobs


@pytest.mark.parametrize("bad", [0, -1.0, True, "10"])
def test_stop_after_must_be_positive_seconds(tmp_path, bad):
    with pytest.raises(ValueError, match="stop_after must be a number of seconds > 0"):
        runner.run_grid(specs(1), tmp_path, progress=False, echo=lambda *_: None, stop_after=bad)
