"""Training checkpoints without pickle: one safetensors file per stage.

A run directory may come from someone else (a shared ``--out`` under Ray, a directory passed around),
so nothing in it is unpickled. A checkpoint is a single ``.safetensors`` file:

* tensors: the model's state dict under ``model.<name>``, the optimizer's per-parameter state under
  ``optim.<param index>.<key>``, and the tensor-valued RNG states under ``rng.<name>``;
* the safetensors header metadata ``mixerzoo`` (a JSON string): format version, stage step, ``done``,
  the final metrics of a finished stage, the optimizer's param groups and non-tensor state entries, the
  scheduler's state dict, and the Python / NumPy RNG states as JSON lists.

One file, written to a temporary name and renamed, so a reader sees an old or a new checkpoint, never
a mixture. Loading parses the header as JSON and reads tensors with ``safetensors``, nothing else.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = 1
SUFFIX = ".safetensors"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as a mixerzoo checkpoint; ``path`` names it."""

    def __init__(self, path, cause: str):
        super().__init__(f"checkpoint {str(path)!r} does not load: {cause}")
        self.path = Path(path)
        self.cause = cause


def _plain(tensors: dict) -> dict:
    """safetensors refuses tensors sharing memory (tied weights) and non-contiguous views: copy those."""
    out, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach()
        ptr = (v.device, v.untyped_storage().data_ptr()) if v.numel() else None
        if ptr is not None and ptr in seen or not v.is_contiguous():
            v = v.clone(memory_format=torch.contiguous_format)
        elif ptr is not None:
            seen.add(ptr)
        out[k] = v.cpu() if v.device.type != "cpu" else v
    return out


def _optimizer_parts(opt_state: dict) -> tuple[dict, dict]:
    tensors, meta_state = {}, {}
    for idx, entries in opt_state["state"].items():
        for key, val in entries.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = val
            else:
                meta_state.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": opt_state["param_groups"], "state": meta_state}


def _rng_parts(rng: dict) -> tuple[dict, dict]:
    tensors = {"rng.torch": rng["torch"]}
    if "cuda" in rng:
        tensors["rng.cuda"] = rng["cuda"]
    version, internal, gauss = rng["python"]
    name, keys, pos, has_gauss, cached = rng["numpy"]
    tensors["rng.numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    meta = {"python": [version, list(internal), gauss], "numpy": [name, int(pos), int(has_gauss), float(cached)]}
    return tensors, meta


def save_checkpoint(path, *, model_state: dict, step: int, done: bool, final=None, optimizer: dict | None = None,
                    scheduler: dict | None = None, rng: dict | None = None) -> None:
    """Write a checkpoint atomically to ``path`` (see the module docstring for the layout)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    meta = {"format": FORMAT, "step": int(step), "done": bool(done), "final": final}
    if optimizer is not None:
        t, meta["optimizer"] = _optimizer_parts(optimizer)
        tensors.update(t)
    if scheduler is not None:
        meta["scheduler"] = scheduler
    if rng is not None:
        t, meta["rng"] = _rng_parts(rng)
        tensors.update(t)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    save_file(_plain(tensors), str(tmp), metadata={"mixerzoo": json.dumps(meta, allow_nan=True)})
    os.replace(tmp, path)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def metrics_problem(final) -> str | None:
    """Why ``final`` is not a stage's final metrics ``{split: {metric: number}}``, or None. A metric is a
    finite number or NaN (a task records an undefined metric, such as the correlation of a constant
    prediction, as NaN); ``not_extendable`` is the one flag, true or false."""
    if not isinstance(final, dict) or not final:
        return f"final must be a non-empty mapping split -> mapping metric -> number, got {_short(final)}"
    for split, metrics in final.items():
        if not isinstance(metrics, dict):
            return f"final[{split!r}] must be a mapping metric -> number, got {_short(metrics)}"
        for name, v in metrics.items():
            if name == "not_extendable" and isinstance(v, bool):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isinf(v):
                return f"final[{split!r}][{name!r}] must be a finite number (or NaN), got {_short(v)}"
    return None


def _meta_problem(meta) -> str | None:
    """Why the header metadata is not a checkpoint of this format, or None (the stage-specific checks,
    the step against the stage's length, are the trainer's)."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        return f"unknown checkpoint format {_short(found)} (this code reads format {FORMAT})"
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"step must be a non-negative integer, got {_short(step)}"
    if not isinstance(meta.get("done"), bool):
        return f"done must be true or false, got {_short(meta.get('done'))}"
    if meta["done"]:
        problem = metrics_problem(meta.get("final"))
        if problem:
            return f"a finished stage's {problem}"
    for key in ("optimizer", "scheduler", "rng"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            return f"{key} must be a mapping, got {_short(meta[key])}"
    return None


def load_checkpoint(path, device: torch.device | str = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` without unpickling anything.

    Returns ``{"step", "done", "final", "model": state dict, "optimizer": state dict | None,
    "scheduler": state dict | None, "rng": RNG state dict | None}``. Raises :class:`CheckpointError`
    (naming the path and the cause) for anything that is not such a checkpoint, metadata included: the
    step a non-negative integer, ``done`` a boolean, a finished stage's ``final`` metrics a mapping split ->
    mapping metric -> number (:func:`metrics_problem`).
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            header = (f.metadata() or {}).get("mixerzoo")
            if header is None:
                raise CheckpointError(path, "no 'mixerzoo' metadata in the safetensors header")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(header)
        problem = _meta_problem(meta)
        if problem:
            raise CheckpointError(path, problem)
        out = {"step": meta["step"], "done": meta["done"], "final": meta.get("final"),
               "model": {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
               "optimizer": None, "scheduler": meta.get("scheduler"), "rng": None}
        if "optimizer" in meta:
            om = meta["optimizer"]
            state: dict = {}
            for k, v in tensors.items():
                if k.startswith("optim."):
                    _, idx, key = k.split(".", 2)
                    state.setdefault(int(idx), {})[key] = v
            for idx, entries in om["state"].items():
                state.setdefault(int(idx), {}).update(entries)
            groups = []
            for g in om["param_groups"]:
                g = dict(g)
                if isinstance(g.get("betas"), list):
                    g["betas"] = tuple(g["betas"])
                groups.append(g)
            out["optimizer"] = {"state": state, "param_groups": groups}
        if "rng" in meta:
            rm = meta["rng"]
            version, internal, gauss = rm["python"]
            name, pos, has_gauss, cached = rm["numpy"]
            rng = {"torch": tensors["rng.torch"].cpu(), "python": (version, tuple(internal), gauss),
                   "numpy": (name, tensors["rng.numpy_keys"].cpu().numpy().astype(np.uint32), pos, has_gauss,
                             cached)}
            if "rng.cuda" in tensors:
                rng["cuda"] = tensors["rng.cuda"].cpu()
            out["rng"] = rng
        return out
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way, with its cause
        raise CheckpointError(path, f"{type(e).__name__}: {e}") from None
