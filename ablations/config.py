"""Run configuration: plain dataclasses, built strictly from nested dicts (YAML / JSON).

A run is one model (:class:`ModelConfig`) trained through a protocol of stages:

* an optional ``pretrain`` stage (masked language modelling in the paper's protocol), then
* ``tasks``: downstream stages, each either fine-tuned from the pretrained encoder of the same run
  (``init: pretrain``, the paper's GLUE protocol) or trained from scratch (``init: scratch``,
  e.g. the synthetic recall tasks).

:func:`run_config_from_dict` rejects unknown fields and bad values with a ``ValueError`` naming the
field (as a dotted path such as ``tasks[0].optim.lr``) and what is allowed; nothing is ignored.
:func:`config_to_dict` is its inverse, and the canonical JSON of that dict is what run ids hash.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional, get_args, get_origin, get_type_hints

SCHEDULES = ("linear", "cosine", "constant")
INITS = ("scratch", "pretrain")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class OptimConfig:
    """AdamW with linear warmup then ``schedule`` decay to ``min_lr_ratio * lr``; global-norm gradient
    clipping at ``grad_clip`` (0 disables clipping)."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "linear"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0


@dataclass
class ModelConfig:
    """The encoder (``mixers.MixerEncoder`` arguments) and the block options it forwards.

    ``max_seq_len`` None means "the training length of the stage's task" (for fine-tuning stages:
    the pretraining task's length, so that fixed-parameterization tables match). ``builder``
    (``"module:function"``, called as ``builder(model_config, task)``) replaces the default
    mixers-based model for third-party models; with a custom builder ``mixer`` is not checked
    against ``mixers.names()``.
    """

    mixer: str = "quasiseparable"
    sequence_aligned: bool = True
    d_model: int = 64
    n_layers: int = 2
    max_seq_len: Optional[int] = None
    position_embeddings: bool = False
    mlp_ratio: int = 4
    dropout: float = 0.0
    expand: int = 2
    headdim: int = 16
    qk_dim: int = 8
    d_conv: int = 7
    impl: str = "fast"
    mixer_kwargs: dict = field(default_factory=dict)
    builder: Optional[str] = None


@dataclass
class StageConfig:
    """One training stage on one task.

    ``options`` go to ``ablations.tasks.build(task, **options)``. ``eval_every`` 0 = evaluate only at
    the end. ``eval_splits`` None = all the task's splits. ``optional`` True: when the task's data
    cannot be found (missing files, no network, missing ``datasets``), the stage is recorded as
    ``unavailable`` instead of failing the run (GLUE "where available"). ``average``: include the
    stage's primary metric in the run's average (default: the fine-tuned stages, as the paper's GLUE
    average). ``name`` defaults to the task name (plus ``_<glue_task>`` for GLUE).
    """

    task: str = "mlm"
    options: dict = field(default_factory=dict)
    steps: int = 100
    batch_size: int = 32
    eval_every: int = 0
    eval_batch_size: int = 64
    eval_splits: Optional[list] = None
    init: str = "scratch"
    optional: bool = False
    average: Optional[bool] = None
    pooling: str = "mean"
    name: Optional[str] = None
    optim: OptimConfig = field(default_factory=OptimConfig)

    @property
    def stage_name(self) -> str:
        if self.name:
            return self.name
        sub = self.options.get("glue_task")
        return f"{self.task}_{sub}" if sub else self.task

    @property
    def in_average(self) -> bool:
        return self.init == "pretrain" if self.average is None else self.average


@dataclass
class RunConfig:
    """A whole run: model, protocol, seed and execution settings.

    ``checkpoint_every`` (steps, 0 = only at stage ends) sets how much work an interruption can lose.
    ``plugins``: modules imported before the run (to register third-party tasks or mixers).
    ``labels``: free-form strings recorded with the results (the grid fills ``grid`` and ``index``).
    ``compile``: train with ``torch.compile`` (forward and backward fused by inductor; on a GPU the SSD
    products then run their chunk-parallel torch algorithm, which fuses, instead of the opaque scan kernels:
    see :func:`kernels.enabled`). Evaluation stays eager. An execution setting like the job count, it is
    left out of the run id, so a run resumes whether compiled or not.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: Optional[StageConfig] = None
    tasks: list = field(default_factory=list)  # list[StageConfig]
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    checkpoint_every: int = 0
    log_every: int = 10
    plugins: list = field(default_factory=list)
    labels: dict = field(default_factory=dict)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, where: str):
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats (YAML writes 1e-3 as a
    string in some dumpers, so numeric strings are rejected rather than guessed)."""
    origin = get_origin(tp)
    if origin is Optional or (origin is not None and type(None) in get_args(tp)):
        if value is None:
            return None
        inner = [a for a in get_args(tp) if a is not type(None)][0]
        return _coerce(value, inner, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}")
        return list(value)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, where)
    raise TypeError(f"unsupported annotation {tp!r} at {where}")  # pragma: no cover - programming error


def _from_dict(cls, data, where: str):
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{where or cls.__name__} must be a mapping of {cls.__name__} fields, got {data!r}")
    hints = get_type_hints(cls)
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(f"unknown field {prefix}{unknown[0]!s} (in {cls.__name__}); allowed fields: "
                         f"{', '.join(allowed)}")
    kwargs = {}
    for name, value in data.items():
        sub = f"{where}.{name}" if where else name
        tp = hints[name]
        if name == "tasks" and cls is RunConfig:
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{sub} must be a list of stage mappings, got {value!r}")
            kwargs[name] = [_from_dict(StageConfig, v, f"{sub}[{i}]") for i, v in enumerate(value)]
        else:
            kwargs[name] = _coerce(value, tp, sub)
    return cls(**kwargs)


def _choice(value, allowed, where):
    if value not in allowed:
        raise ValueError(f"{where} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def _positive(value, where, allow_zero=False):
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{where} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def validate_values(cfg: RunConfig) -> None:
    """Range and choice checks that need no registry (mixers and tasks are checked by
    :func:`ablations.grid.validate_run`)."""
    m = cfg.model
    for name in ("d_model", "n_layers", "expand", "headdim", "qk_dim", "d_conv"):
        _positive(getattr(m, name), f"model.{name}")
    _positive(m.mlp_ratio, "model.mlp_ratio", allow_zero=True)  # 0: mixer-only layers (the paper's Table 2)
    if m.max_seq_len is not None:
        _positive(m.max_seq_len, "model.max_seq_len")
    if not 0.0 <= m.dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {m.dropout!r}")
    if m.builder is not None and (m.builder.count(":") != 1 or not all(m.builder.split(":"))):
        raise ValueError(f"model.builder must look like 'package.module:function', got {m.builder!r}")
    _choice(cfg.device, DEVICES, "device")
    _choice(cfg.precision, PRECISIONS, "precision")
    _positive(cfg.checkpoint_every, "checkpoint_every", allow_zero=True)
    _positive(cfg.log_every, "log_every")
    if isinstance(cfg.seed, bool) or cfg.seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {cfg.seed!r}")
    stages = ([("pretrain", cfg.pretrain)] if cfg.pretrain is not None else []) + \
        [(f"tasks[{i}]", s) for i, s in enumerate(cfg.tasks)]
    if not stages:
        raise ValueError("a run needs at least one stage: set pretrain and/or tasks")
    seen = {}
    for where, s in stages:
        for name in ("steps", "batch_size", "eval_batch_size"):
            _positive(getattr(s, name), f"{where}.{name}")
        _positive(s.eval_every, f"{where}.eval_every", allow_zero=True)
        _choice(s.init, INITS, f"{where}.init")
        o = s.optim
        _positive(o.lr, f"{where}.optim.lr")
        _positive(o.weight_decay, f"{where}.optim.weight_decay", allow_zero=True)
        for b in ("beta1", "beta2"):
            if not 0.0 <= getattr(o, b) < 1.0:
                raise ValueError(f"{where}.optim.{b} must be in [0, 1), got {getattr(o, b)!r}")
        _positive(o.eps, f"{where}.optim.eps")
        _positive(o.warmup_steps, f"{where}.optim.warmup_steps", allow_zero=True)
        if o.warmup_steps > s.steps:
            raise ValueError(f"{where}.optim.warmup_steps must be <= {where}.steps ({s.steps}), got {o.warmup_steps}")
        _choice(o.schedule, SCHEDULES, f"{where}.optim.schedule")
        if not 0.0 <= o.min_lr_ratio <= 1.0:
            raise ValueError(f"{where}.optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio!r}")
        _positive(o.grad_clip, f"{where}.optim.grad_clip", allow_zero=True)
        if s.init == "pretrain" and cfg.pretrain is None:
            raise ValueError(f"{where}.init is 'pretrain' but the run has no pretrain stage; "
                             f"allowed: 'scratch', or add a pretrain section")
        if where == "pretrain" and s.init != "scratch":
            raise ValueError(f"pretrain.init must be 'scratch', got {s.init!r}")
        if s.stage_name in seen:
            raise ValueError(f"{where}: stage name {s.stage_name!r} is already used by {seen[s.stage_name]}; "
                             f"set a distinct {where}.name")
        seen[s.stage_name] = where


def run_config_from_dict(data: dict) -> RunConfig:
    """Build and value-check a :class:`RunConfig` from a nested dict (ValueError naming the field)."""
    cfg = _from_dict(RunConfig, data, "")
    validate_values(cfg)
    return cfg


def config_to_dict(cfg) -> dict:
    """Nested plain dict (JSON-able) of a config dataclass."""
    return dataclasses.asdict(cfg)


def canonical_json(data: Any) -> str:
    """Key-sorted, whitespace-free JSON: the byte string run ids hash."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
