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


@pytest.mark.slow  # ~20 s: starting a local Ray instance dominates
def test_ray_backend_on_a_local_instance(tmp_path):
    ray = pytest.importorskip("ray")
    sp = specs(2)
    t0 = time.perf_counter()
    res = runner.run_grid(sp, tmp_path, jobs=2, backend="ray", progress=False, echo=lambda *a: None,
                          ray_init_kwargs={"num_cpus": 2, "include_dashboard": False,
                                           "runtime_env": {"env_vars": {"PYTHONPATH": str(HERE)}}})
    assert [r["status"] for r in res] == ["completed", "completed"]
    for s in sp:
        assert json.loads((tmp_path / s.run_id / "summary.json").read_text())["status"] == "completed"
    assert not ray.is_initialized()                  # the backend shuts down the instance it started
    print(f"ray backend: {time.perf_counter() - t0:.1f}s")


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
            torch.save(summary, Path(out) / "rank1_summary.pt")
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
    rank1 = torch.load(tmp_path / "ddp" / "rank1_summary.pt", weights_only=False)
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
    """Failed before: SIGKILL of one worker broke the process pool and failed every pending run."""
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
