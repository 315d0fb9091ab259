"""Run a grid: one directory per run, skip/resume, local worker processes, Ray, torchrun.

Layout of ``OUT/<run-id>/``:

* ``config.json``  -- the resolved config, run id, seed, library versions, device (atomic write)
* ``metrics.jsonl`` -- one JSON record per log/eval event (``stage``, ``step``, ...)
* ``ckpt/<stage>.safetensors`` -- resumable checkpoints, no pickle (``ablations.checkpoint``); a finished
  stage keeps its final weights only
* ``summary.json`` -- written last, atomically: ``status`` completed | failed (with ``reason``), the
  final metrics of every stage, the parameter count, the average; its presence marks the run finished
* ``error.txt`` -- the traceback of an unexpected failure

Rerunning skips finished runs (``retry_failed`` reruns failed ones) and resumes the others from their
checkpoints, so killing a grid loses at most ``checkpoint_every`` steps of the runs in flight and never
a finished run.

Backends: ``local`` with ``jobs == 1`` runs in this process; ``jobs > 1`` runs that many spawned worker
processes sharing the device (each with ``cpu_count // jobs`` torch threads on the CPU). ``ray`` submits
one Ray task per run (``ray.init()`` locally, or ``ray_address`` to join a cluster; ``OUT`` must then be a
shared filesystem). Under ``torchrun`` every process walks the same runs and each run trains with DDP.
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

from .checkpoint import SUFFIX as CKPT_SUFFIX
from .config import RunConfig, StageConfig, canonical_json, config_to_dict, run_config_from_dict
from .grid import RunSpec, run_id as compute_run_id
from .provenance import fingerprint, made_by_other_code, source_hash
from .trainer import (MetricsLog, NonFiniteError, TrainingFailed, atomic_write_json, autocast_dtype, dist_info,
                      init_distributed, resolve_device, seed_everything, stage_seed, train_stage)

FINISHED = ("completed", "failed")


class MissingBackend(RuntimeError):
    """The requested backend (ray) is not installed."""


class DataUnavailable(RuntimeError):
    pass


def _unavailable_errors() -> tuple:
    """Exceptions a task raises when its data cannot be reached (no file, no network, no `datasets`):
    an ``optional`` stage becomes "unavailable" instead of failing the run."""
    from .tasks import base
    return (getattr(base, "DataUnavailableError", OSError), FileNotFoundError, ConnectionError)


# ----------------------------------------------------------------------------------------- models
def build_model(model_cfg, task, stage: StageConfig, max_seq_len: int) -> torch.nn.Module:
    """The model for one stage: ``mixers.MixerEncoder`` with the head the task needs
    (``MixerForMaskedLM`` for token tasks, ``MixerForSequenceClassification`` for sequence tasks), or
    ``model_cfg.builder(model_cfg, task, stage, max_seq_len)`` when a custom builder is configured."""
    if model_cfg.builder is not None:
        mod, fn = model_cfg.builder.split(":")
        return getattr(importlib.import_module(mod), fn)(model_cfg, task, stage, max_seq_len)
    import mixers
    enc = mixers.MixerEncoder(
        vocab_size=task.vocab_size, d_model=model_cfg.d_model, n_layers=model_cfg.n_layers, mixer=model_cfg.mixer,
        sequence_aligned=model_cfg.sequence_aligned, max_seq_len=max_seq_len,
        position_embeddings=model_cfg.position_embeddings, mlp_ratio=model_cfg.mlp_ratio,
        dropout=model_cfg.dropout, expand=model_cfg.expand, headdim=model_cfg.headdim, qk_dim=model_cfg.qk_dim,
        d_conv=model_cfg.d_conv, impl=model_cfg.impl, **model_cfg.mixer_kwargs)
    if task.kind == "token":
        return mixers.MixerForMaskedLM(enc)
    return mixers.MixerForSequenceClassification(enc, num_labels=task.num_labels, pooling=stage.pooling)


def num_parameters(model) -> int:
    f = getattr(model, "num_parameters", None)
    return int(f()) if callable(f) else sum(p.numel() for p in model.parameters())


_TASK_CACHE: dict[str, object] = {}
# Tasks whose data could not be reached in this invocation: (exception type, message) per (task, options).
# A GLUE stage offline spends ~25 s in the hub client's retries; every later run needing the same data fails
# at once with the same message instead (one message per task and option set, not one per run).
_TASK_FAILURES: dict[str, tuple[type, str]] = {}


def _task_key(stage: StageConfig) -> str:
    return canonical_json([stage.task, stage.options])


def build_task(stage: StageConfig):
    """``ablations.tasks.build(stage.task, **stage.options)``, memoized per process: tasks are immutable
    (batches are pure functions of their arguments), and building a text task parses a corpus, so the
    runs a worker executes share one instance per (task, options). Unreachable data is remembered too
    (:data:`_TASK_FAILURES`): the first failure prints one warning, later builds fail at once."""
    from . import tasks
    key = _task_key(stage)
    if key not in _TASK_CACHE:
        if key in _TASK_FAILURES:
            kind, msg = _TASK_FAILURES[key]
            err = _remade(kind, msg)
        else:
            try:
                _TASK_CACHE[key] = tasks.build(stage.task, **stage.options)
                return _TASK_CACHE[key]
            except _unavailable_errors() as e:
                msg = f"{e} (task {stage.task!r}, options {canonical_json(stage.options)})"
                _TASK_FAILURES[key] = (type(e), msg)
                print(f"mixerzoo: warning: data unavailable: {msg}; the runs of this invocation that need it "
                      f"do not retry it", file=sys.stderr)
                err = _remade(type(e), msg)
        if stage.optional:
            raise DataUnavailable(f"{type(err).__name__}: {err}") from None
        raise err
    return _TASK_CACHE[key]


def _remade(kind: type, msg: str) -> Exception:
    try:
        return kind(msg)
    except Exception:  # noqa: BLE001 - an exception type with another constructor
        return OSError(msg)


def remember_failures(failures: dict) -> None:
    """Seed :data:`_TASK_FAILURES` in a worker with what the parent found (``{key: (type, message)}``)."""
    _TASK_FAILURES.update(failures or {})


def resolve_jobs(jobs, specs) -> int:
    """``"auto"``: one single-threaded worker per CPU core when every run is on the CPU (tiny models
    scale better over processes than over threads), else 1. An int is returned as is (validated)."""
    if jobs == "auto":
        on_cpu = all(s.config.device == "cpu" or (s.config.device == "auto" and not torch.cuda.is_available())
                     for s in specs)
        return max(1, min(os.cpu_count() or 1, len(specs))) if on_cpu else 1
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer or 'auto', got {jobs!r}")
    return jobs


# ----------------------------------------------------------------------------------------- one run
def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
    for mod in ("numpy", "triton", "tokenizers", "datasets", "mixerzoo"):
        try:
            if mod == "mixerzoo":
                from importlib.metadata import version
                out[mod] = version("mixerzoo")
            else:
                out[mod] = importlib.import_module(mod).__version__
        except Exception:  # noqa: BLE001 - optional packages: record absence, do not fail a run over it
            out[mod] = None
    out["git"] = _git_revision()
    return out


def _git_revision() -> str | None:
    from .provenance import git_revision
    return git_revision()


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index} {torch.cuda.get_device_name(device)}"
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def is_finished(summary: dict | None, retry_failed: bool = False, rerun_stale: bool = False) -> bool:
    """Whether a run with this summary is done and skipped: completed, or failed and not retried; with
    ``rerun_stale``, not when it was made by other code (:func:`provenance.made_by_other_code`)."""
    if summary is None or (rerun_stale and made_by_other_code(summary)):
        return False
    return summary.get("status") == "completed" or (summary.get("status") == "failed" and not retry_failed)


SUMMARY_KEYS = ("run_id", "status", "mixer", "sequence_aligned")


def summary_problem(data) -> str | None:
    """Why ``data`` (a parsed ``summary.json``) is not a run summary this code reads, or None: it must be
    an object with the keys of :data:`SUMMARY_KEYS` (``run_id`` and ``status`` strings) and ``stages``, when
    present, an object of stage objects whose ``metrics`` are objects."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    missing = [k for k in SUMMARY_KEYS if k not in data]
    if missing:
        return f"missing key(s) {', '.join(missing)}"
    for key in ("run_id", "status"):
        if not isinstance(data[key], str):
            return f"{key!r} is {data[key]!r}, not a string"
    stages = data.get("stages", {})
    if not isinstance(stages, dict) or not all(
            isinstance(st, dict) and isinstance(st.get("metrics", {}), dict) for st in stages.values()):
        return "'stages' is not an object of stage objects"
    return None


def read_summary(run_dir, warn=None) -> dict | None:
    """The run's ``summary.json``, or None when there is none or it is unreadable (not JSON, or not a
    summary: :func:`summary_problem`). An unreadable one marks no finished run (the run runs again and
    replaces it); ``warn(message)``, when given, is told its path and cause."""
    p = Path(run_dir) / "summary.json"
    if not p.exists():
        return None
    try:
        data = json.loads(p.read_text())
        problem = summary_problem(data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:  # written by something else, or torn
        problem = f"not valid JSON ({e})"
    if problem is None:
        return data
    if warn is not None:
        warn(f"unreadable summary {str(p)!r} ({problem}); the run is not finished and runs again")
    return None


def _primary(task, metrics: dict) -> float | None:
    for split in task.eval_splits:
        m = metrics.get(split, {})
        if task.primary_metric in m:
            return float(m[task.primary_metric])
    return None


def execute_run(cfg: RunConfig | RunSpec, out_dir, *, retry_failed: bool = False, progress: bool = False,
                callbacks=()) -> dict:
    """Run (or resume, or skip) one run into ``out_dir/<run-id>/`` and return its summary dict
    (``skipped: True`` when it was already finished).

    Non-finite losses/gradients, CUDA out-of-memory and any other exception in the run are recorded
    as ``status: failed`` with a ``reason``; KeyboardInterrupt / SystemExit propagate and leave the run
    resumable.
    """
    if isinstance(cfg, RunSpec):
        cfg = cfg.config
    rid = compute_run_id(cfg)
    run_dir = Path(out_dir) / rid
    world, rank, local_rank = dist_info()
    main = rank == 0
    prev = read_summary(run_dir)
    if is_finished(prev, retry_failed):
        return {**prev, "skipped": True}
    for mod in cfg.plugins:
        importlib.import_module(mod)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = None
    if world == 1:
        lock = _try_lock(run_dir)
        if lock is None:
            return {"run_id": rid, "seed": cfg.seed, "mixer": cfg.model.mixer,
                    "sequence_aligned": cfg.model.sequence_aligned, "stages": {}, "status": "running",
                    "reason": "another process is running it (lock held on .lock)", "skipped": True,
                    "wall_s": 0.0}
    try:
        prev = read_summary(run_dir)  # finished by another process between the first check and the lock?
        if is_finished(prev, retry_failed):
            return {**prev, "skipped": True}
        return _execute(cfg, rid, run_dir, world, rank, local_rank, main, progress, callbacks)
    finally:
        if lock is not None:
            lock.close()


def _try_lock(run_dir: Path):
    """An exclusive advisory lock on ``run_dir/.lock`` (released when the process ends, even when
    killed), so two invocations on the same OUT never train the same run at once; None if held."""
    import fcntl
    f = open(run_dir / ".lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def _execute(cfg, rid, run_dir, world, rank, local_rank, main, progress, callbacks) -> dict:
    device = resolve_device(cfg.device, local_rank if world > 1 else None)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the NCCL group, so its communicator binds this GPU
    if world > 1:
        init_distributed(device)
    if main:
        atomic_write_json(run_dir / "config.json", {
            "run_id": rid, "seed": cfg.seed, "config": config_to_dict(cfg), "versions": versions(),
            "device": device_description(device), "precision": str(autocast_dtype(cfg.precision, device)
                                                                   or "float32"),
            "world_size": world, "argv": sys.argv, "code": fingerprint()})
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=main)
    t0 = time.perf_counter()
    summary = {"run_id": rid, "seed": cfg.seed, "mixer": cfg.model.mixer,
               "sequence_aligned": cfg.model.sequence_aligned, "labels": dict(cfg.labels),
               "device": device_description(device), "stages": {}, "params": None, "code": fingerprint()}
    status, reason = "completed", None
    try:
        pretrained = None
        pre_len = None
        stages = ([cfg.pretrain] if cfg.pretrain is not None else []) + list(cfg.tasks)
        for i, stage in enumerate(stages):
            name = stage.stage_name
            st0 = time.perf_counter()
            try:
                task = build_task(stage)
            except DataUnavailable as e:
                summary["stages"][name] = {"status": "unavailable", "reason": str(e), "task": stage.task,
                                           "in_average": stage.in_average}
                continue
            is_pretrain = cfg.pretrain is not None and i == 0
            if cfg.model.max_seq_len is not None:
                max_len = cfg.model.max_seq_len
            elif stage.init == "pretrain":
                max_len = pre_len
            else:
                max_len = task.seq_len
            seed_everything(stage_seed(cfg.seed, name, "init"))
            model = build_model(cfg.model, task, stage, max_len).to(device)
            if stage.init == "pretrain":
                try:
                    model.encoder.load_state_dict(pretrained)
                except RuntimeError as e:
                    raise TrainingFailed(f"stage {name!r}: the pretrained encoder does not fit this task's model "
                                         f"(vocab_size {task.vocab_size}? max_seq_len {max_len}?): {e}") from None
            fixed_len = None if cfg.model.sequence_aligned else max_len
            legacy = run_dir / "ckpt" / f"{name}.pt"
            if legacy.exists() and main:  # pickle: never loaded, since unpickling a received file can run code
                print(f"mixerzoo: warning: {legacy} is a pickle checkpoint of an older version; it is not loaded "
                      f"and stage {name!r} trains from its safetensors checkpoint or from scratch", file=sys.stderr)
            final = train_stage(model, task, stage, seed=cfg.seed, device=device, precision=cfg.precision,
                                ckpt_path=run_dir / "ckpt" / f"{name}{CKPT_SUFFIX}", log=log,
                                checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
                                fixed_length=fixed_len, callbacks=callbacks, progress=progress,
                                compile_model=cfg.compile)
            if is_pretrain:
                pretrained = {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}
                pre_len = max_len
            if is_pretrain or summary["params"] is None:
                summary["params"] = num_parameters(model)
            summary["stages"][name] = {
                "status": "completed", "task": stage.task, "kind": task.kind, "metrics": final,
                "primary_metric": task.primary_metric, "higher_is_better": task.higher_is_better,
                "primary": _primary(task, final), "in_average": stage.in_average and not is_pretrain,
                "steps": stage.steps, "init": stage.init, "wall_s": time.perf_counter() - st0,
                "role": "pretrain" if is_pretrain else ("finetune" if stage.init == "pretrain" else "scratch"),
                "task_info": _describe(task)}
            if main:
                from .export import export_stage
                export_stage(run_dir, name, model, task, run_id=rid)
            del model
    except NonFiniteError as e:
        status, reason = "failed", f"non-finite: {e.reason}"
    except TrainingFailed as e:
        status, reason = "failed", e.reason
    except torch.OutOfMemoryError as e:
        status, reason = "failed", f"out of memory: {str(e).splitlines()[0] if str(e) else 'CUDA OOM'}"
        _free_cuda()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - one broken run must not stop the grid; the reason is kept
        status, reason = "failed", f"{type(e).__name__}: {e}"
        if main:
            (run_dir / "error.txt").write_text(traceback.format_exc())
    summary.update(status=status, reason=reason, wall_s=time.perf_counter() - t0,
                   average=_average(summary["stages"]), finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                  time.gmtime()))
    if main:
        atomic_write_json(run_dir / "summary.json", summary)
    return summary


def _describe(task) -> dict:
    try:
        return task.describe()
    except Exception as e:  # noqa: BLE001 - descriptive metadata only
        return {"error": str(e)}


def _free_cuda():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _average(stages: dict) -> float | None:
    """Mean (in percent) of the primary metrics of the stages counted in the average (the fine-tuned
    downstream tasks: the paper's GLUE average); None when none of them completed."""
    vals = [s["primary"] for s in stages.values()
            if s.get("status") == "completed" and s.get("in_average") and s.get("higher_is_better")
            and s.get("primary") is not None]
    return 100.0 * sum(vals) / len(vals) if vals else None


def _num(value, spec: str) -> str:
    """``value`` formatted with ``spec`` when it is a number; anything else (a summary written by other
    code) as it is."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return repr(value)


def one_line(summary: dict) -> str:
    """The one-line summary printed per finished run."""
    head = f"{summary['run_id']:<40s}"
    if summary.get("skipped"):
        head += " [skipped: already " + summary.get("status", "?") + "]"
    if summary.get("status") == "running":
        return f"{summary['run_id']:<40s} [skipped: {summary.get('reason')}]"
    wall = _num(summary.get("wall_s", 0), ".0f")
    if summary.get("status") != "completed":
        return f"{head} FAILED ({wall}s): {summary.get('reason')}"
    parts = []
    for name, st in summary.get("stages", {}).items():
        if st.get("status") == "unavailable":
            parts.append(f"{name}=n/a")
        elif st.get("primary") is not None:
            parts.append(f"{name}.{st.get('primary_metric')}={_num(st['primary'], '.3f')}")
    avg = summary.get("average")
    avg_txt = f" avg={_num(avg, '.1f')}" if avg is not None else ""
    return f"{head} ok ({wall}s){avg_txt} " + " ".join(parts)


# ----------------------------------------------------------------------------------------- grids
def filter_specs(specs: list[RunSpec], filters: list[str]) -> list[RunSpec]:
    """Keep the runs whose resolved config has every ``dotted.key=value`` of ``filters``; a value may list
    alternatives separated by ``|`` (``model.mixer=toeplitz|cauchy``: either)."""
    out = specs
    for f in filters:
        if "=" not in f:
            raise ValueError(f"--filter must look like KEY=VALUE (e.g. model.mixer=cauchy), got {f!r}")
        key, value = f.split("=", 1)
        keep = []
        for s in out:
            node = config_to_dict(s.config)
            for part in key.split("."):
                if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                elif isinstance(node, dict) and part in node:
                    node = node[part]
                else:
                    raise ValueError(f"--filter: {key!r} is not a config field (e.g. model.mixer, seed)")
            if str(node).lower() in {v.lower() for v in value.split("|")}:
                keep.append(s)
        out = keep
    if not out:
        raise ValueError(f"--filter {' '.join(filters)} selects no run of the grid")
    return out


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_in_worker(cfg_dict: dict, out_dir: str, retry_failed: bool, failures: dict | None = None) -> dict:
    remember_failures(failures)
    cfg = run_config_from_dict(cfg_dict)
    return execute_run(cfg, out_dir, retry_failed=retry_failed)


def run_grid(specs: list[RunSpec], out_dir, *, jobs: int | str = 1, backend: str = "local", ray_address=None,
             retry_failed: bool = False, progress: bool = True, ray_init_kwargs: dict | None = None,
             echo=print, gpus_per_run: float | None = None, rerun_stale: bool = False, warn=None,
             stop_after: float | None = None) -> list[dict]:
    """Run every spec (skipping finished ones), print one line per finished run, return the summaries
    in the order of ``specs`` (of the runs that finished). ``stop_after``: seconds after which no run starts (runs
    under way finish; the rest are left, unstarted, for a later call: a session with a time limit works through
    a grid in several calls). ``jobs``: concurrent runs (worker processes, or Ray tasks sharing a GPU),
    or ``"auto"`` (see :func:`resolve_jobs`). ``gpus_per_run``: Ray only, see :mod:`ablations.backends.ray_backend`.

    Finished runs made by other code (another source hash, :mod:`ablations.provenance`) are reused with
    a warning (``warn``, default: stderr); ``rerun_stale`` moves their files into ``<run-id>/stale-<hash>/``
    and runs them again."""
    warn = warn or (lambda msg: print(f"mixerzoo: warning: {msg}", file=sys.stderr))
    if backend not in ("local", "ray"):
        raise ValueError(f"backend must be one of local, ray; got {backend!r}")
    if stop_after is not None:
        if isinstance(stop_after, bool) or not isinstance(stop_after, (int, float)) or not stop_after > 0:
            raise ValueError(f"stop_after must be a number of seconds > 0, got {stop_after!r}")
        if backend != "local":
            raise ValueError("stop_after (--stop-after) works with the local backend; Ray schedules every run at once")
    deadline = None if stop_after is None else time.monotonic() + stop_after

    def may_start() -> bool:
        return deadline is None or time.monotonic() < deadline

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    world, rank, _ = dist_info()
    if world > 1:
        if backend != "local" or jobs not in (1, "auto"):
            raise ValueError("under torchrun use --backend local --jobs 1 (each run is spread over the processes)")
        jobs = 1
        echo = echo if rank == 0 else (lambda *a, **k: None)
        progress = progress and rank == 0
    results: dict[str, dict] = {}
    todo = []
    stale = []
    for s in specs:
        prev = read_summary(out_dir / s.run_id, warn=warn if rank == 0 else None)
        if is_finished(prev, retry_failed) and made_by_other_code(prev) and rank == 0:
            if rerun_stale and _set_aside(out_dir / s.run_id, prev):
                prev = None
            else:
                stale.append((s.run_id, (prev.get("code") or {}).get("source_hash")))
        if is_finished(prev, retry_failed):
            results[s.run_id] = {**prev, "skipped": True}
            echo(one_line(results[s.run_id]))
        else:
            todo.append(s)
    if stale:
        rid, h = stale[0]
        warn(f"{len(stale)} finished run(s) in {out_dir} were made by other code (e.g. {rid}: source hash "
             f"{h or 'not recorded'}, this code {source_hash()}); they are reused as they are; --rerun-stale "
             f"reruns them")
    jobs = resolve_jobs(jobs, todo) if todo else 1
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="runs", unit="run", dynamic_ncols=True)

    def done(summary):
        results[summary["run_id"]] = summary
        line = one_line(summary)
        if bar is not None:
            bar.write(line)
            bar.update(1)
        else:
            echo(line)

    if todo and (backend == "ray" or jobs > 1):
        _warm_tasks(todo)
    try:
        if backend == "ray":
            _run_ray(todo, out_dir, jobs, ray_address, retry_failed, ray_init_kwargs or {}, done, gpus_per_run)
        elif jobs == 1 or len(todo) <= 1:
            for s in todo:
                if not may_start():
                    break
                done(execute_run(s.config, out_dir, retry_failed=retry_failed, progress=progress))
        else:
            _run_pool(todo, out_dir, jobs, retry_failed, done, may_start)
    finally:
        if bar is not None:
            bar.close()
    left = sum(s.run_id not in results for s in todo)
    if left:
        echo(f"{left} run(s) not started: {stop_after:g} s (stop_after) had passed; run the same command again to "
             f"run them")
    return [results[s.run_id] for s in specs if s.run_id in results]


def _set_aside(run_dir: Path, summary: dict) -> bool:
    """Move a stale run's files into ``run_dir/stale-<source hash>/`` (kept, not deleted), so that it
    trains again from scratch; False when another process holds the run's lock."""
    lock = _try_lock(run_dir)
    if lock is None:
        return False
    try:
        dest = run_dir / f"stale-{(summary.get('code') or {}).get('source_hash') or 'unknown'}"
        dest.mkdir(exist_ok=True)
        for name in ("summary.json", "config.json", "metrics.jsonl", "error.txt", "ckpt"):
            if (run_dir / name).exists():
                target = dest / name
                if target.exists():
                    import shutil
                    shutil.rmtree(target) if target.is_dir() else target.unlink()
                os.replace(run_dir / name, target)
        return True
    finally:
        lock.close()


def _warm_tasks(todo) -> None:
    """Build every distinct task once in this process before workers start, so that on-disk caches
    (corpus, trained tokenizer) exist and all workers load the same files: tokenizer training is not
    deterministic, and concurrent workers each training their own would make runs incomparable.
    Errors are left for the runs themselves to report."""
    seen = set()
    for s in todo:
        for mod in s.config.plugins:
            importlib.import_module(mod)
        for stage in ([s.config.pretrain] if s.config.pretrain is not None else []) + list(s.config.tasks):
            key = _task_key(stage)
            if key in seen:
                continue
            seen.add(key)
            try:
                build_task(stage)
            except Exception:  # noqa: BLE001 - reported by the run that needs the task
                pass


def _worker_main(conn, threads: int, cfg_dict: dict, out_dir: str, retry_failed: bool,
                 failures: dict | None = None) -> None:
    """Entry point of a worker process: one run, its summary sent back over ``conn``."""
    _worker_init(threads)
    try:
        result = {"summary": _run_in_worker(cfg_dict, out_dir, retry_failed, failures)}
    except (KeyboardInterrupt, SystemExit):
        result = {"interrupted": True}  # Ctrl-C reaches the workers too: the run stays resumable
    except BaseException as e:  # noqa: BLE001 - reported by the parent as this run's failure
        result = {"error": f"{type(e).__name__}: {e}"}
    conn.send(result)
    conn.close()


def _oom_kills() -> int | None:
    """The kernel's OOM-kill count of this cgroup (cgroup v2 ``memory.events``), None where unreadable."""
    try:
        rel = next((ln.split("::", 1)[1] for ln in Path("/proc/self/cgroup").read_text().splitlines()
                    if ln.startswith("0::")), "/").strip().lstrip("/")
        for line in (Path("/sys/fs/cgroup") / rel / "memory.events").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def death_cause(exitcode: int | None, oom_before: int | None = None, oom_after: int | None = None) -> str:
    """Why a worker process ended without a result: the signal by name, or the exit code; OOM when the
    cgroup's OOM-kill count rose meanwhile (the kernel's OOM killer sends SIGKILL)."""
    import signal
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        cause = f"killed by {name}"
        if oom_before is not None and oom_after is not None and oom_after > oom_before:
            cause += " (out of memory: the kernel's OOM killer)"
        elif -exitcode == signal.SIGKILL:
            cause += " (the OOM killer sends this when memory runs out)"
        return cause
    return f"exited with code {exitcode} before reporting a result"


def _run_pool(todo, out_dir, jobs, retry_failed, done, may_start=lambda: True):
    """Run ``todo`` in up to ``jobs`` worker processes, one fresh process per run.

    One process per run: a fatal CUDA error (an illegal memory access, say) leaves a process's CUDA
    context unusable, and a worker that dies (the OOM killer's SIGKILL) takes only its own run with it:
    that run is recorded as failed with the cause and the next run starts in a new process. (A
    ``ProcessPoolExecutor`` cannot do this: one dead worker breaks the pool and every pending run.)
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait
    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = mp.get_context("spawn")  # fork after torch/CUDA initialization is unsafe
    queue = list(todo)
    running: dict = {}  # process sentinel -> [process, reader, spec, OOM-kill count at start, result]
    try:
        while (queue and may_start()) or running:
            while queue and len(running) < jobs and may_start():
                s = queue.pop(0)
                reader, writer = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker_main, name=f"mixerzoo-{s.run_id}",
                                   args=(writer, threads, config_to_dict(s.config), str(out_dir), retry_failed,
                                         dict(_TASK_FAILURES)))
                proc.start()
                writer.close()
                running[proc.sentinel] = [proc, reader, s, _oom_kills(), None]
            readers = {e[1]: e for e in running.values() if e[4] is None}
            for ready in wait(list(running) + list(readers)):
                if ready in readers:
                    entry = readers[ready]
                    try:
                        entry[4] = ready.recv()
                    except (EOFError, OSError):
                        entry[4] = {}
                    continue
                proc, reader, s, oom_before, result = running.pop(ready)
                proc.join()
                if result is None and reader.poll():
                    try:
                        result = reader.recv()
                    except (EOFError, OSError):
                        result = None
                reader.close()
                if result and "summary" in result:
                    done(result["summary"])
                elif result and "interrupted" in result:
                    done(_crashed(s, out_dir, "worker process interrupted; rerun to resume", persist=False))
                elif result and "error" in result:
                    done(_crashed(s, out_dir, f"worker process failed: {result['error']}"))
                else:
                    import signal
                    stopped = proc.exitcode in (-signal.SIGINT, -signal.SIGTERM)  # asked to stop: resumable
                    done(_crashed(s, out_dir, f"worker process {death_cause(proc.exitcode, oom_before, _oom_kills())}",
                                  persist=not stopped))
    finally:
        # Ctrl-C or an error here: stop the workers now. A killed run resumes from its last checkpoint
        # (files are written atomically; its lock dies with the process).
        for proc, *_ in running.values():
            if proc.is_alive():
                proc.terminate()
        for proc, *_ in running.values():
            proc.join(timeout=10)


def _crashed(spec: RunSpec, out_dir, reason: str, persist: bool = True) -> dict:
    """Summary of a run whose worker ended without writing one. With ``persist`` it is written to disk as
    failed (so the report shows it; ``--retry-failed`` resumes it from its last checkpoint), unless another
    process has written a summary meanwhile."""
    summary = {"run_id": spec.run_id, "seed": spec.config.seed, "status": "failed", "reason": reason,
               "mixer": spec.config.model.mixer, "sequence_aligned": spec.config.model.sequence_aligned,
               "labels": dict(spec.config.labels), "stages": {}, "params": None, "average": None, "wall_s": 0.0,
               "code": fingerprint(),
               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    run_dir = Path(out_dir) / spec.run_id
    try:
        if persist and run_dir.is_dir() and read_summary(run_dir) is None:
            atomic_write_json(run_dir / "summary.json", summary)
    except OSError:
        pass
    return summary


def _run_ray(todo, out_dir, jobs, ray_address, retry_failed, init_kwargs, done, gpus_per_run=None):
    from .backends.ray_backend import run_ray
    run_ray(todo, out_dir, jobs=jobs, worker=_run_in_worker, crashed=_crashed, done=done, ray_address=ray_address,
            retry_failed=retry_failed, init_kwargs=init_kwargs, gpus_per_run=gpus_per_run,
            worker_args=(dict(_TASK_FAILURES),))
