"""Training loop for one stage: AdamW, warmup + decay, clipping, bf16 autocast, periodic evaluation,
checkpoint/resume, a non-finite guard, and DistributedDataParallel under ``torchrun``.

Determinism: training batches are a pure function of ``(step, batch size, stage seed)`` (the Task
contract), the model is initialized from a seeded generator state, and a checkpoint stores the model,
optimizer, scheduler, step and every RNG state (torch CPU/CUDA, Python, NumPy). So on the CPU a run
interrupted at any step and resumed from its last checkpoint ends with exactly the weights and metrics
of an uninterrupted run (tested).

Learning-rate schedule (:func:`lr_factor`): linear warmup from 0 over ``warmup_steps`` optimizer steps,
then linear or cosine decay to ``min_lr_ratio * lr`` at the last step (BERT / RoBERTa recipe; Liu et
al., "RoBERTa", 2019, Sec. 3.1), or constant.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import OptimConfig, StageConfig
from .tasks.base import IGNORE_INDEX, Task


class TrainingFailed(RuntimeError):
    """A run cannot continue; ``reason`` is recorded in its summary."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class NonFiniteError(TrainingFailed):
    """The loss or the gradient norm became NaN or infinite."""


# ----------------------------------------------------------------------------------------- files
def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new content, never a part:
    write a temporary file in the same directory, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


class MetricsLog:
    """Append-only JSON-lines log (``metrics.jsonl``). Each record is one line, flushed at once;
    :meth:`truncate` drops the records a resumed stage will write again (rewritten atomically), so a
    resumed run's log has no duplicate steps. ``enabled=False`` (non-zero DDP ranks) writes nothing."""

    def __init__(self, path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def append(self, record: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True, default=_json_default) + "\n")
            f.flush()

    def records(self) -> list[dict]:
        return read_jsonl(self.path)

    def truncate(self, stage: str, after_step: int) -> None:
        """Remove the records of ``stage`` with ``step > after_step``."""
        if not self.enabled or not self.path.exists():
            return
        keep = [r for r in self.records() if not (r.get("stage") == stage and r.get("step", 0) > after_step)]
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True, default=_json_default) + "\n"
                                             for r in keep))


def read_jsonl(path) -> list[dict]:
    """Records of a JSON-lines file; a torn last line (killed mid-write) is skipped."""
    out = []
    path = Path(path)
    if not path.exists():
        return out
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


# ----------------------------------------------------------------------------------------- devices
def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device is 'cuda' but no CUDA device is available; allowed here: auto, cpu")
        return torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device must be one of auto, cpu, cuda; got {name!r}")


def autocast_dtype(precision: str, device: torch.device):
    """The autocast dtype: bf16 on CUDA for ``auto``/``bf16``; None (fp32) on the CPU for ``auto``."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    raise ValueError(f"precision must be one of auto, fp32, bf16; got {precision!r}")


def stage_seed(seed: int, stage: str, purpose: str = "") -> int:
    """A 31-bit seed derived from the run seed and the stage name (stable across processes)."""
    import hashlib
    h = hashlib.sha256(f"{seed}:{stage}:{purpose}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


# ----------------------------------------------------------------------------------------- schedule
def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (0-based).

    Warmup: (step + 1) / warmup_steps for step < warmup_steps. Then progress
    p = (step - warmup) / max(1, total - warmup) in [0, 1) decays as ``linear`` 1 - p or ``cosine``
    (1 + cos(pi p)) / 2, scaled into [min_lr_ratio, 1]; ``constant`` stays 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    p = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    p = min(max(p, 0.0), 1.0)
    if schedule == "linear":
        decay = 1.0 - p
    elif schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * p))
    else:
        raise ValueError(f"schedule must be one of linear, cosine, constant; got {schedule!r}")
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, total_steps: int):
    """AdamW (decoupled weight decay; Loshchilov & Hutter 2019) with no decay on vectors and scalars
    (biases, norm gains, per-position tables of one channel) and the schedule of :func:`lr_factor`."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused CUDA implementation updates every tensor in a few launches instead of several per tensor.
    on_cuda = bool(decay + no_decay) and all(p.device.type == "cuda" for p in decay + no_decay)
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            eps=cfg.eps, **({"fused": True} if on_cuda else {}))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.warmup_steps, total_steps, cfg.schedule, cfg.min_lr_ratio))
    return opt, sched


# ----------------------------------------------------------------------------------------- RNG
def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))


# ----------------------------------------------------------------------------------------- DDP
def dist_info() -> tuple[int, int, int]:
    """(world_size, rank, local_rank) from the torchrun environment; (1, 0, 0) otherwise."""
    return (int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)),
            int(os.environ.get("LOCAL_RANK", 0)))


def is_main_process() -> bool:
    return dist_info()[1] == 0


def shard_batch(batch: dict, rank: int, world: int) -> dict:
    """Rows ``[rank * B/world, (rank + 1) * B/world)`` of every tensor: with DDP's gradient averaging,
    a step on the shards equals a step on the whole batch (exactly so for per-sequence losses)."""
    b = next(iter(batch.values())).shape[0]
    if b % world:
        raise ValueError(f"batch_size ({b}) must be divisible by the number of DDP processes ({world})")
    n = b // world
    return {k: v[rank * n:(rank + 1) * n] for k, v in batch.items()}


# NVLink multicast (NVLS) can take a host's GPUs out of service when it misbehaves, and the shared GPU
# hosts this library is run on keep it off. A value the user set is passed on unchanged.
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def multicast_off_env(environ=None) -> dict:
    """The variables that keep NVLink multicast off: ``environ``'s value where set, else the "off" value of
    :data:`MULTICAST_OFF`."""
    environ = os.environ if environ is None else environ
    return {k: environ.get(k, v) for k, v in MULTICAST_OFF.items()}


def init_distributed(device: torch.device) -> None:
    """Join the torchrun process group (NCCL on CUDA, gloo on the CPU) unless already joined, with
    NVLink multicast off where the environment does not say otherwise (NCCL reads it at communicator
    creation)."""
    for k, v in multicast_off_env().items():
        os.environ.setdefault(k, v)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def _distributed() -> bool:
    return dist_info()[0] > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def _collective_device(device: torch.device) -> torch.device:
    """Where a tensor must live for a collective: NCCL reduces CUDA tensors, gloo CPU tensors."""
    return device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


def _unwrap(model):
    return model.module if hasattr(model, "module") and isinstance(
        model, torch.nn.parallel.DistributedDataParallel) else model


def _scored_items(task, batch: dict) -> int:
    """What a task's mean loss averages over: scored positions (token tasks), sequences (sequence tasks)."""
    if task.kind == "token":
        return int((batch["labels"] != IGNORE_INDEX).sum())
    return int(batch["labels"].shape[0])


def _throughput_row(rate: float, distributed: bool, device: torch.device) -> dict:
    """``tokens_per_s`` (all processes together) and, under DDP, ``tokens_per_s_rank`` (one per rank,
    gathered to every rank; the log is written by rank 0)."""
    if not distributed:
        return {"tokens_per_s": rate}
    t = torch.zeros(dist_info()[0], dtype=torch.float64, device=_collective_device(device))
    t[dist_info()[1]] = rate
    torch.distributed.all_reduce(t)
    per_rank = t.tolist()
    return {"tokens_per_s": sum(per_rank), "tokens_per_s_rank": per_rank}


# ----------------------------------------------------------------------------------------- evaluation
def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _memory_row(device: torch.device) -> dict:
    """Peak device memory so far, for the log (CUDA only: a host query, no sync). Concurrent runs share
    one GPU, and a run near the card's limit slows every run there (allocator retries), so the log says
    what each run holds."""
    if device.type != "cuda":
        return {}
    return {"peak_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            "reserved_gb": round(torch.cuda.memory_reserved(device) / 2**30, 3),
            "alloc_retries": int(torch.cuda.memory_stats(device).get("num_alloc_retries", 0))}


def evaluate(model, task, splits: Iterable[str], batch_size: int, device: torch.device, amp_dtype,
             fixed_length: int | None = None) -> dict:
    """``{split: metrics}`` over the task's evaluation splits.

    ``fixed_length``: for a fixed (not sequence-aligned) parameterization, the length of its learned
    tables; a split whose sequences are longer is reported as ``{"not_extendable": True}`` without
    running (such a matrix is not defined beyond its training length -- the paper's point about SAMs).
    """
    model.eval()
    out = {}
    ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()

    def predict(batch):
        batch = _to_device(batch, device)
        with ctx:
            return model(batch["input_ids"], batch["attention_mask"])

    # Under DDP each process evaluates its share of the batches (sharded_evaluate); a task that defines its
    # own evaluate() is run whole on every process, since only it knows how to combine its parts.
    world, rank, _ = dist_info()
    shard = _distributed() and type(task).evaluate is Task.evaluate
    for split in splits:
        if fixed_length is not None:
            first = next(iter(task.eval_batches(split, batch_size)), None)
            if first is not None and first["input_ids"].shape[1] > fixed_length:
                out[split] = {"not_extendable": True}
                continue
        with torch.no_grad():
            if shard:
                out[split] = sharded_evaluate(task, predict, split, batch_size, rank, world,
                                              _collective_device(device))
            else:
                out[split] = task.evaluate(predict, split, batch_size)
    model.train()
    return out


@torch.no_grad()
def sharded_evaluate(task, predict: Callable[[dict], torch.Tensor], split: str, batch_size: int, rank: int,
                     world: int, comm_device: torch.device) -> dict[str, float]:
    """:meth:`Task.evaluate` spread over the ``world`` processes of a process group: the same metrics.

    Batch ``i`` of the split (the task's own batching, its last batch possibly short) is predicted by
    rank ``i % world`` only, so every example is evaluated exactly once whatever the remainder; a rank
    may get one batch more than another, or none. Every rank walks the split's batches (to know their
    number and sizes) but runs the model on its own ones only.

    Combining (every rank gets the result): token tasks all-reduce, per batch, the cross-entropy sum,
    the number of correct predictions and the number of scored positions, then add them up in batch
    order; sequence tasks all-reduce the logits into their rows of the whole split's ``(n, C)`` matrix
    (each row has one non-zero contributor, so the sum is exact) and call ``compute_metrics`` on it. The
    per-batch numbers are those of a single process, and they are combined in the same order, so the
    result is the single-process one (tested on CPU with gloo).

    ``comm_device``: where the collectives' tensors live (the GPU for NCCL, the CPU for gloo).
    """
    if split not in task.eval_splits:
        raise ValueError(f"split must be one of {task.eval_splits} for task {task.name!r}, got {split!r}")
    token = task.kind == "token"
    stats, labels_all, mine = [], [], {}
    for i, batch in enumerate(task.eval_batches(split, batch_size)):
        own = i % world == rank
        if token:
            row = [0.0, 0.0, 0.0]
            if own:
                logits = predict(batch).float()
                labels = batch["labels"].to(logits.device)
                keep = labels != IGNORE_INDEX
                logits, labels = logits[keep], labels[keep]
                row = [float(F.cross_entropy(logits, labels, reduction="sum")),
                       float(int((logits.argmax(-1) == labels).sum())), float(int(keep.sum()))]
            stats.append(row)
        else:
            labels_all.append(batch["labels"].cpu())
            if own:
                mine[i] = predict(batch).float()
    if token:
        t = torch.tensor(stats, dtype=torch.float64, device=comm_device).reshape(-1, 3)
        torch.distributed.all_reduce(t)
        loss_sum, correct, count = 0.0, 0, 0
        for b_loss, b_correct, b_count in t.tolist():   # in batch order, as Task.evaluate adds them
            loss_sum += b_loss
            correct += int(b_correct)
            count += int(b_count)
        if count == 0:
            raise ValueError(f"split {split!r} of task {task.name!r} has no scored positions")
        return task.token_metrics(loss_sum / count, correct / count)
    if not labels_all:
        raise ValueError(f"split {split!r} of task {task.name!r} is empty")
    sizes = [len(lab) for lab in labels_all]
    starts = [0]
    for n in sizes:
        starts.append(starts[-1] + n)
    width = task.num_labels
    full = torch.zeros(starts[-1], width, dtype=torch.float32, device=comm_device)
    for i, logits in mine.items():
        if logits.shape != (sizes[i], width):
            raise ValueError(f"sequence task {task.name!r}: the model returned logits of shape "
                             f"{tuple(logits.shape)} for a batch of {sizes[i]}; expected ({sizes[i]}, {width})")
        full[starts[i]:starts[i + 1]] = logits.to(comm_device)
    torch.distributed.all_reduce(full)
    return task.compute_metrics(full.cpu(), torch.cat(labels_all))


# ----------------------------------------------------------------------------------------- resume
def _nonfinite(tensors: dict, keys) -> str | None:
    """The first of ``keys`` whose floating-point tensor in ``tensors`` holds NaN or inf, or None."""
    for k in keys:
        v = tensors.get(k)
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return k
    return None


def _resume(ckpt_path: Path, model, opt, sched, device, stage_name: str, log: MetricsLog, total_steps: int,
            splits: list) -> dict | None:
    """Load the checkpoint at ``ckpt_path`` into the model, optimizer, scheduler and RNGs; return it.

    A checkpoint that does not load (corrupt, truncated, another format, another model, metadata that
    does not fit this stage: a step outside 0..``total_steps``, final metrics of other splits than
    ``splits``; weights or optimizer moments holding NaN or inf, which training never checkpoints) leaves
    the model, the optimizer and the RNGs as they were, is renamed to ``<name>.unreadable`` (so the next
    attempt does not meet it again: no retry loop), and is reported with its path and cause on stderr
    and in the metrics log; the caller then trains the stage from scratch. Returns None in that case.
    """
    before_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    before_rng = rng_state(device)
    try:
        # Read on the CPU: load_state_dict moves each tensor to its parameter's device, and an optimizer's
        # step counts stay on the CPU unless it is fused or capturable, as torch's optimizers expect.
        ck = load_checkpoint(ckpt_path)
        if ck["step"] > total_steps:
            raise CheckpointError(ckpt_path, f"step {ck['step']} is past the stage's {total_steps} steps")
        if ck["done"] and sorted(ck["final"]) != sorted(splits):
            raise CheckpointError(ckpt_path, f"the final metrics are of the splits {sorted(ck['final'])}, the "
                                             f"stage evaluates {sorted(splits)}")
        # buffers may hold inf by design (a mask); parameters never do
        bad = _nonfinite(ck["model"], [k for k, _ in model.named_parameters(remove_duplicate=False)])
        if bad is not None:
            raise CheckpointError(ckpt_path, f"the weight {bad} holds NaN or inf")
        expected = model.state_dict()
        if set(ck["model"]) != set(expected):
            missing, extra = sorted(set(expected) - set(ck["model"])), sorted(set(ck["model"]) - set(expected))
            raise CheckpointError(ckpt_path, f"model keys differ (missing {missing[:3]}, unexpected {extra[:3]})")
        for k, v in ck["model"].items():
            if v.shape != expected[k].shape:
                raise CheckpointError(ckpt_path, f"{k} has shape {tuple(v.shape)}, the model {tuple(expected[k].shape)}")
        model.load_state_dict(ck["model"])
        if not ck["done"]:
            if ck["optimizer"] is None or ck["scheduler"] is None or ck["rng"] is None:
                raise CheckpointError(ckpt_path, "an unfinished stage's checkpoint lacks optimizer/scheduler/RNG state")
            for idx, entries in ck["optimizer"]["state"].items():
                bad = _nonfinite(entries, list(entries))
                if bad is not None:
                    raise CheckpointError(ckpt_path, f"the optimizer state {idx}.{bad} holds NaN or inf")
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            set_rng_state(ck["rng"], device)
        return ck
    except Exception as e:  # noqa: BLE001 - whatever the cause, the stage restarts instead of failing forever
        with torch.no_grad():
            model.load_state_dict(before_model)
        set_rng_state(before_rng, device)
        cause = e.cause if isinstance(e, CheckpointError) else f"{type(e).__name__}: {e}"
        aside = ckpt_path.with_name(ckpt_path.name + ".unreadable")
        try:
            os.replace(ckpt_path, aside)
        except OSError:
            aside = None
        msg = (f"checkpoint {str(ckpt_path)!r} does not load ({cause}); stage {stage_name!r} restarts from "
               f"scratch" + (f" (file moved to {aside.name})" if aside else ""))
        print(f"mixerzoo: warning: {msg}", file=sys.stderr)
        log.append({"stage": stage_name, "step": 0, "event": "checkpoint_unreadable", "path": str(ckpt_path),
                    "reason": cause})
        return None


# ----------------------------------------------------------------------------------------- training
def train_stage(model: torch.nn.Module, task, stage: StageConfig, *, seed: int, device: torch.device,
                precision: str = "auto", ckpt_path=None, log: MetricsLog | None = None,
                checkpoint_every: int = 0, log_every: int = 10, fixed_length: int | None = None,
                callbacks: Iterable[Callable] = (), progress: bool = False, compile_model: bool = False) -> dict:
    """Train ``model`` on ``task`` for ``stage.steps`` optimizer steps and return the final evaluation
    ``{split: metrics}``.

    model: ``forward(input_ids (B, L), attention_mask (B, L)) -> logits`` (token tasks (B, L, V),
    sequence tasks (B, num_labels)), already on ``device``. Under torchrun (``WORLD_SIZE > 1`` and an
    initialized process group) it is wrapped in DistributedDataParallel and each process trains on its
    shard of every batch, its loss weighted so that the gradient is the whole batch's; evaluation is
    sharded (:func:`sharded_evaluate`); only rank 0 writes the log and checkpoints, every rank loads them.

    Resume: when ``ckpt_path`` holds a checkpoint of this stage, training continues from its step
    (a finished stage returns its recorded metrics after loading its weights). Checkpoints are
    written every ``checkpoint_every`` steps (0: only at the end) and at the end (weights only).

    ``callbacks``: called as ``cb(stage_name, step, model)`` after every optimizer step (and after
    that step's checkpoint); an exception from a callback propagates (tests use this to simulate
    a kill).

    ``compile_model``: the training steps run ``torch.compile(model)`` (the DDP wrapper, under torchrun);
    evaluation, checkpoints and the returned model stay the eager module, which shares its parameters.

    Raises :class:`NonFiniteError` when the loss or the gradient norm is NaN/inf, and lets
    ``torch.OutOfMemoryError`` propagate (the runner records both as failures).
    """
    name = stage.stage_name
    log = log or MetricsLog(os.devnull, enabled=False)
    world, rank, _ = dist_info()
    distributed = _distributed()
    amp_dtype = autocast_dtype(precision, device)
    splits = list(stage.eval_splits) if stage.eval_splits else list(task.eval_splits)
    for s in splits:
        if s not in task.eval_splits:
            raise ValueError(f"eval_splits of stage {name!r}: {s!r} is not a split of task {task.name!r}; "
                             f"allowed: {', '.join(task.eval_splits)}")
    data_seed = stage_seed(seed, name, "data")

    opt, sched = build_optimizer(model, stage.optim, stage.steps)
    start = 0
    ckpt_path = Path(ckpt_path) if ckpt_path is not None else None
    if ckpt_path is not None and ckpt_path.exists():
        resumed = _resume(ckpt_path, model, opt, sched, device, name, log, stage.steps, splits)
        if resumed is None:  # unreadable: this stage restarts from scratch with fresh optimizer state
            opt, sched = build_optimizer(model, stage.optim, stage.steps)
        elif resumed["done"]:
            return resumed["final"]
        else:
            start = resumed["step"]
    log.truncate(name, start)

    train_model = model
    if distributed:
        # Every rank has read the checkpoint before rank 0 may replace it (rank 0 alone writes them).
        torch.distributed.barrier()
        kw = {"device_ids": [device.index]} if device.type == "cuda" else {}
        train_model = torch.nn.parallel.DistributedDataParallel(model, **kw)
    if compile_model:
        train_model = torch.compile(train_model)

    def save(step: int, done: bool, final=None):
        if ckpt_path is None or rank != 0:
            return
        if done:
            save_checkpoint(ckpt_path, model_state=model.state_dict(), step=step, done=True, final=final)
        else:
            save_checkpoint(ckpt_path, model_state=model.state_dict(), step=step, done=False,
                            optimizer=opt.state_dict(), scheduler=sched.state_dict(), rng=rng_state(device))

    ctx = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None else nullcontext
    params = [p for p in model.parameters() if p.requires_grad]
    clip = stage.optim.grad_clip if stage.optim.grad_clip > 0 else float("inf")
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=stage.steps, initial=start, desc=name, leave=False, dynamic_ncols=True)
    train_model.train()
    # The loss sum and the non-finite guard stay on the device between log steps: reading them back every
    # step would stall the host until the GPU catches up, and small models are bound by the host's kernel
    # launches. The first bad step is recorded on the device and raised at the next check, which comes
    # before any evaluation or checkpoint, so no checkpoint ever holds a step past a non-finite one.
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    first_bad_loss = torch.full((), -1, dtype=torch.int64, device=device)
    first_bad_grad = torch.full((), -1, dtype=torch.int64, device=device)
    loss_n, t0 = 0, time.perf_counter()
    # Throughput: this rank's real (unpadded) tokens over the training time between log rows; evaluation and
    # checkpoint time is left out, so that runs with different eval/checkpoint settings compare.
    tokens, span_t0, paused = 0, time.perf_counter(), 0.0
    selected_only = task.kind == "token" and getattr(model, "predicts_selected", False)

    def raise_if_nonfinite():
        bad_loss, bad_grad = int(first_bad_loss), int(first_bad_grad)
        if bad_loss >= 0 and (bad_grad < 0 or bad_loss <= bad_grad):
            raise NonFiniteError(f"non-finite loss at step {bad_loss} of stage {name!r}")
        if bad_grad >= 0:
            raise NonFiniteError(f"non-finite gradient norm at step {bad_grad} of stage {name!r}")

    for step in range(start, stage.steps):
        batch = task.train_batch(step, stage.batch_size, data_seed)
        weight = 1.0
        if distributed:
            # Random draws in the step (dropout): every rank from its own stream, as one process draws different
            # masks for the two halves of a batch, and a function of the step, so that a run resumed from a
            # checkpoint (which holds rank 0's RNG state only) draws the same masks on every rank.
            torch.manual_seed(stage_seed(seed, name, f"step {step} rank {rank}"))
            whole = batch
            batch = shard_batch(batch, rank, world)
            # DDP averages the ranks' gradients. Weighting each rank's mean loss by its share of the batch's
            # scored items makes that average the gradient of the whole batch's mean loss, also when the
            # shards score different numbers of tokens (masked LM draws its masks per sequence).
            weight = world * _scored_items(task, batch) / max(1, _scored_items(task, whole))
        tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        batch = _to_device(batch, device)
        with ctx():
            if selected_only:
                # Only the scored positions go through the vocabulary head: the same loss (the mean over
                # the positions whose label is not IGNORE_INDEX), a fraction of the work for masked LM.
                keep = batch["labels"] != IGNORE_INDEX
                logits = train_model(batch["input_ids"], batch["attention_mask"], positions=keep)
                loss = task.loss(logits[None], {**batch, "labels": batch["labels"][keep][None]})
            else:
                logits = train_model(batch["input_ids"], batch["attention_mask"])
                loss = task.loss(logits, batch)
            if weight == 0.0:  # a shard with nothing scored: its mean is NaN; it adds zero to the gradient
                loss = logits.float().sum() * 0.0
            elif weight != 1.0:
                loss = loss * weight
        finite = torch.isfinite(loss.detach()).to(torch.float32)
        if distributed:  # every rank sees the same flags, so all of them stop at the same check
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        first_bad_loss = torch.where((finite < 1) & (first_bad_loss < 0), step + 1, first_bad_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        first_bad_grad = torch.where(~torch.isfinite(grad_norm) & (first_bad_grad < 0), step + 1, first_bad_grad)
        opt.step()
        sched.step()
        done_steps = step + 1
        loss_sum += loss.detach().float()
        loss_n += 1
        evaluating = bool(stage.eval_every) and done_steps % stage.eval_every == 0 and done_steps < stage.steps
        saving = bool(checkpoint_every) and done_steps % checkpoint_every == 0 and done_steps < stage.steps
        logging_now = done_steps % log_every == 0 or done_steps == stage.steps
        if logging_now or evaluating or saving or callbacks:
            raise_if_nonfinite()
        if logging_now:
            if distributed:  # the whole batch's loss: the mean of the ranks' weighted losses
                torch.distributed.all_reduce(loss_sum)
                loss_sum /= world
            train_loss = float(loss_sum) / loss_n   # waits for the device, so the clock below is honest
            now = time.perf_counter()
            rate = _throughput_row(tokens / max(now - span_t0 - paused, 1e-9), distributed, device)
            log.append({"stage": name, "step": done_steps, "train_loss": train_loss,
                        "lr": opt.param_groups[0]["lr"], "grad_norm": float(grad_norm),
                        "time_s": now - t0, **rate, **_memory_row(device)})
            loss_sum.zero_()
            loss_n = 0
            if bar is not None:  # the logged loss: reading the step's loss would stall the host every step
                bar.set_postfix(loss=f"{train_loss:.3f}", refresh=False)
            tokens, span_t0, paused = 0, time.perf_counter(), 0.0
        pause_t0 = time.perf_counter()
        if evaluating:
            metrics = evaluate(model, task, splits, stage.eval_batch_size, device, amp_dtype, fixed_length)
            for split, m in metrics.items():
                log.append({"stage": name, "step": done_steps, "split": split, **m})
        if saving:
            save(done_steps, done=False)
            if distributed:
                torch.distributed.barrier()
        if evaluating or saving:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            paused += time.perf_counter() - pause_t0
        if bar is not None:
            bar.update(1)
        for cb in callbacks:
            cb(name, done_steps, model)
    if bar is not None:
        bar.close()
    raise_if_nonfinite()
    final = evaluate(model, task, splits, stage.eval_batch_size, device, amp_dtype, fixed_length)
    for split, m in final.items():
        log.append({"stage": name, "step": stage.steps, "split": split, "final": True, **m})
    save(stage.steps, done=True, final=final)
    if distributed:
        torch.distributed.barrier()
    return final
