"""Grid specs: a base run config plus axes, scale overlays and seeds, expanded and validated up front.

A grid is a YAML mapping (shipped ones live in ``ablations/grids/``)::

    name: table2                      # defaults to the file stem
    description: ...
    reference: table2                 # optional: which paper table ``mixerzoo report`` compares with
    seeds: [0]
    base: {model: {...}, pretrain: {...}, tasks: [...], ...}   # a RunConfig mapping
    axes:                             # cartesian product over dotted paths, in this order
      model.mixer: [toeplitz, cauchy]
      model.sequence_aligned: [false, true]
    include:                          # extra points (after the product), each a mapping path -> value
      - {model.mixer: dense, model.sequence_aligned: false}
    scales:                           # overlays deep-merged into base; may also set seeds
      smoke: {pretrain: {steps: 40}}
      lab: {...}
    default_scale: smoke

Dotted paths address mappings by key and lists by index (``tasks.0.steps``). Every point x seed is
resolved into a :class:`~ablations.config.RunConfig` and checked -- fields and values
(:mod:`ablations.config`), mixer names and supported parameterizations (``mixers.names()``), task names
and task options (the task class's constructor signature) -- before anything runs. Errors are
``ValueError`` / ``KeyError`` naming the grid, the point, the field and the allowed values.

A run's id is ``<mixer>-<fx|sa>-s<seed>-<hash>``, the hash being the first 10 hex digits of SHA-256
over the canonical JSON of the resolved config (labels and ``compile`` excluded): it does not depend on the
grid's order, its name or the machine.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import itertools
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import RunConfig, canonical_json, config_to_dict, run_config_from_dict

GRID_DIR = Path(__file__).with_name("grids")
SCALES = ("smoke", "lab", "paper")
TOP_LEVEL = ("name", "description", "reference", "seeds", "base", "axes", "include", "scales", "default_scale")


class MissingComponent(RuntimeError):
    """A package the requested work needs (mixers, tasks, ray, a benchmark module) is not importable."""


@dataclass
class RunSpec:
    """One resolved run of a grid: its id, config and the axis values that made it."""

    run_id: str
    config: RunConfig
    point: dict

    @property
    def label(self) -> str:
        return ", ".join([f"{k}={v}" for k, v in self.point.items()] + [f"seed={self.config.seed}"])


@dataclass
class Grid:
    name: str
    description: str
    reference: str | None
    seeds: list
    base: dict
    axes: dict
    include: list
    scales: dict
    default_scale: str
    path: str | None = None

    def points(self) -> list[dict]:
        """Axis assignments in run order: the cartesian product of ``axes`` then ``include``."""
        keys = list(self.axes)
        pts = [dict(zip(keys, vals)) for vals in itertools.product(*(self.axes[k] for k in keys))] if keys else []
        pts += [dict(p) for p in self.include]
        return pts or [{}]


# ----------------------------------------------------------------------------------------- loading
def grid_names() -> list[str]:
    """Names of the grids shipped in ``ablations/grids/``."""
    return sorted(p.stem for p in GRID_DIR.glob("*.yaml"))


def grid_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if p.is_dir():
            raise ValueError(f"grid file {name_or_path!r} is a directory; allowed: a .yaml grid file, or a shipped "
                             f"grid ({', '.join(grid_names())})")
        if not p.is_file():
            raise ValueError(f"grid file {name_or_path!r} does not exist")
        return p
    shipped = GRID_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise KeyError(f"unknown grid {name_or_path!r}; shipped grids: {', '.join(grid_names())} "
                       f"(or pass a path to a .yaml file)")
    return shipped


def load_grid(name_or_path: str) -> Grid:
    """Read a grid spec by shipped name or path and check its shape (not yet its runs)."""
    path = grid_path(name_or_path)
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"grid file {str(path)!r}: invalid YAML{at}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"grid file {str(path)!r} cannot be read ({e})") from None
    return parse_grid(data, default_name=path.stem, path=str(path))


def parse_grid(data, default_name: str = "grid", path: str | None = None) -> Grid:
    """Check the top-level shape of a grid mapping and return a :class:`Grid`."""
    where = f"grid {default_name!r}"
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping with keys {', '.join(TOP_LEVEL)}, got {type(data).__name__}")
    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}; allowed fields: {', '.join(TOP_LEVEL)}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: name must be a non-empty string, got {name!r}")
    where = f"grid {name!r}"
    base = data.get("base", {})
    if not isinstance(base, dict):
        raise ValueError(f"{where}: base must be a mapping of run-config fields, got {base!r}")
    seeds = _check_seeds(data.get("seeds", [0]), f"{where}: seeds")
    axes = data.get("axes") or {}
    if not isinstance(axes, dict):
        raise ValueError(f"{where}: axes must be a mapping of dotted path -> list of values, got {axes!r}")
    for k, v in axes.items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"{where}: axes keys must be dotted paths such as 'model.mixer', got {k!r}")
        if not isinstance(v, list) or not v:
            raise ValueError(f"{where}: axes.{k} must be a non-empty list of values, got {v!r}")
    include = data.get("include") or []
    if not isinstance(include, list) or not all(isinstance(p, dict) and p for p in include):
        raise ValueError(f"{where}: include must be a list of non-empty mappings (dotted path -> value), "
                         f"got {include!r}")
    scales = data.get("scales") or {}
    if not isinstance(scales, dict):
        raise ValueError(f"{where}: scales must be a mapping of scale name -> overlay, got {scales!r}")
    for s, overlay in scales.items():
        if s not in SCALES:
            raise ValueError(f"{where}: unknown scale {s!r} in scales; allowed scales: {', '.join(SCALES)}")
        if not isinstance(overlay, dict):
            raise ValueError(f"{where}: scales.{s} must be a mapping (an overlay of base), got {overlay!r}")
        if "seeds" in overlay:
            _check_seeds(overlay["seeds"], f"{where}: scales.{s}.seeds")
    default_scale = data.get("default_scale", next(iter(scales), "smoke"))
    if not isinstance(default_scale, str):
        raise ValueError(f"{where}: default_scale must be a scale name ({', '.join(scales or SCALES)}), "
                         f"got {default_scale!r}")
    if scales and default_scale not in scales:
        raise ValueError(f"{where}: default_scale must be one of {', '.join(scales)}, got {default_scale!r}")
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        raise ValueError(f"{where}: description must be a string, got {description!r}")
    reference = data.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise ValueError(f"{where}: reference must be a string naming a paper table, got {reference!r}")
    return Grid(name=name, description=description or "", reference=reference, seeds=seeds,
                base=base, axes=axes, include=include, scales=scales, default_scale=default_scale, path=path)


def _check_seeds(seeds, where):
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"{where} must be a non-empty list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{where} must not repeat a seed, got {seeds!r}")
    return list(seeds)


MAX_SEEDS = 10000  # far above any grid's needs; a typo such as 0-1000000000 is refused instead of expanded


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-2"`` -> [0, 1, 2] (for ``--seeds``); at most :data:`MAX_SEEDS` seeds. Errors quote
    the value as typed."""
    allowed = f"allowed: a comma list of non-negative integers or ranges like 0-2, at most {MAX_SEEDS} seeds"
    out = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(v) for v in part.split("-"))
                if b < a:
                    raise ValueError(f"--seeds {text!r}: the range {part} ends below its start; {allowed}")
                if len(out) + b - a + 1 > MAX_SEEDS:
                    raise ValueError(f"--seeds {text!r} names more than {MAX_SEEDS} seeds; {allowed}")
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError as e:
            if str(e).startswith("--seeds"):
                raise
            raise ValueError(f"--seeds {text!r}: {part!r} is not an integer or a range; {allowed}") from None
    if len(out) > MAX_SEEDS:
        raise ValueError(f"--seeds {text!r} names more than {MAX_SEEDS} seeds; {allowed}")
    try:
        return _check_seeds(out, "--seeds")
    except ValueError:
        from collections import Counter
        dup = sorted(s for s, n in Counter(out).items() if n > 1)[:3]
        why = f"repeats the seed(s) {', '.join(map(str, dup))}" if dup else "is not a list of non-negative seeds"
        raise ValueError(f"--seeds {text!r} {why}; {allowed}") from None


# ----------------------------------------------------------------------------------------- dotted paths
def deep_merge(base: dict, overlay: dict) -> dict:
    """Recursive merge: mappings merge key by key, anything else (lists included) replaces."""
    out = copy.deepcopy(base)
    for k, v in overlay.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def set_path(data: dict, path: str, value, where: str = "") -> None:
    """Set ``data[a][b][0]...`` for ``path = "a.b.0"``; creates missing mappings, never list items."""
    keys = path.split(".")
    node = data
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise ValueError(f"{where}{path}: {k!r} is not a valid index of a list of {len(node)} items")
            k = int(k)
        elif not isinstance(node, dict):
            raise ValueError(f"{where}{path}: {'.'.join(keys[:i])} is not a mapping or list")
        if last:
            node[k] = copy.deepcopy(value)
        else:
            if isinstance(node, dict) and node.get(k) is None:
                node[k] = {}
            node = node[k]


# ----------------------------------------------------------------------------------------- ids
def run_id(cfg: RunConfig) -> str:
    """Stable id: ``<mixer>-<fx|sa>-s<seed>-<10 hex of SHA-256 of the config without labels and compile>``."""
    d = config_to_dict(cfg)
    d.pop("labels", None)
    d.pop("compile", None)
    digest = hashlib.sha256(canonical_json(d).encode()).hexdigest()[:10]
    kind = "sa" if cfg.model.sequence_aligned else "fx"
    return f"{cfg.model.mixer}-{kind}-s{cfg.seed}-{digest}"


# ----------------------------------------------------------------------------------------- validation
def _import_plugins(cfg: RunConfig, where: str):
    for mod in cfg.plugins:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise ValueError(f"{where}plugins: cannot import {mod!r} ({e})") from None


def mixer_table() -> dict:
    """``mixers.names()``; MissingComponent when the mixers package is not importable yet."""
    try:
        import mixers
        return dict(mixers.names())
    except (ImportError, AttributeError) as e:
        raise MissingComponent(f"the mixers package is not available ({e})") from None


def validate_run(cfg: RunConfig, where: str = "") -> None:
    """Registry checks for one resolved run: mixer, parameterization, tasks and task options."""
    _import_plugins(cfg, where)
    if cfg.model.builder is None:
        table = mixer_table()
        if cfg.model.mixer not in table:
            raise KeyError(f"{where}model.mixer: unknown mixer {cfg.model.mixer!r}; registered mixers: "
                           f"{', '.join(sorted(table))}")
        param = "sequence_aligned" if cfg.model.sequence_aligned else "fixed"
        supported = tuple(table[cfg.model.mixer])
        if param not in supported:
            raise ValueError(f"{where}model.sequence_aligned={cfg.model.sequence_aligned}: mixer "
                             f"{cfg.model.mixer!r} does not support the {param} parameterization; "
                             f"supported: {', '.join(supported)}")
        _check_block_shape(cfg.model, where)
        import mixers
        poolings = tuple(getattr(mixers.MixerForSequenceClassification, "POOLINGS", ("mean",)))
        for sw, stage in ([("pretrain", cfg.pretrain)] if cfg.pretrain is not None else []) + \
                [(f"tasks[{i}]", s) for i, s in enumerate(cfg.tasks)]:
            if stage.pooling not in poolings:
                raise ValueError(f"{where}{sw}.pooling must be one of {', '.join(poolings)}; got {stage.pooling!r}")
    else:
        mod, fn = cfg.model.builder.split(":")
        try:
            obj = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"{where}model.builder: cannot load {cfg.model.builder!r} ({e})") from None
        if not callable(obj):
            raise ValueError(f"{where}model.builder: {cfg.model.builder!r} is not callable")
    try:
        from . import tasks as task_registry
        known = task_registry.names()
    except ImportError as e:  # pragma: no cover - the package ships with ablations
        raise MissingComponent(f"ablations.tasks is not available ({e})") from None
    stages = ([("pretrain", cfg.pretrain)] if cfg.pretrain is not None else []) + \
        [(f"tasks[{i}]", s) for i, s in enumerate(cfg.tasks)]
    for sw, stage in stages:
        if stage.task not in known:
            raise KeyError(f"{where}{sw}.task: unknown task {stage.task!r}; registered tasks: {', '.join(known)}")
        _check_task_options(task_registry.get_task(stage.task), stage.options, f"{where}{sw}.options")


def _check_block_shape(m, where: str) -> None:
    """The shape rules of ``mixers.MatrixMixerBlock``, stated in the config's field names: heads of
    ``headdim`` channels tile ``expand * d_model``, and the non-causal conv keeps the length only when odd."""
    d_inner = m.expand * m.d_model
    if d_inner % m.headdim:
        divisors = [k for k in range(1, d_inner + 1) if d_inner % k == 0]
        raise ValueError(f"{where}model.headdim={m.headdim} must divide model.expand * model.d_model = "
                         f"{m.expand} * {m.d_model} = {d_inner}; allowed: {', '.join(map(str, divisors))}")
    if m.d_conv % 2 == 0:
        raise ValueError(f"{where}model.d_conv={m.d_conv} must be odd (the conv pads d_conv // 2 on each side to "
                         f"keep the length); allowed: 3, 5, 7, ...")


def _check_task_options(cls, options: dict, where: str):
    sig = inspect.signature(cls.__init__)
    params = [p for p in sig.parameters.values() if p.name != "self"]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    allowed = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for k in options:
        if k not in allowed:
            raise ValueError(f"{where}.{k}: unknown option of task {cls.name!r}; allowed options: "
                             f"{', '.join(allowed) or '(none)'}")


def expand(grid: Grid | str, scale: str | None = None, seeds: list[int] | None = None,
           validate: bool = True) -> list[RunSpec]:
    """Resolve every point x seed of ``grid`` at ``scale`` into :class:`RunSpec` objects, validating all of
    them before returning (so a bad point stops the grid before any run)."""
    if isinstance(grid, str):
        grid = load_grid(grid)
    scale = grid.default_scale if scale is None else scale
    if grid.scales and scale not in grid.scales:
        raise ValueError(f"scale must be one of {', '.join(grid.scales)} for grid {grid.name!r}, got {scale!r}")
    if not grid.scales and scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    overlay = dict(grid.scales.get(scale, {}))
    scale_seeds = overlay.pop("seeds", None)
    seeds = seeds if seeds is not None else (scale_seeds if scale_seeds is not None else grid.seeds)
    base = deep_merge(grid.base, overlay)
    specs, seen = [], {}
    for index, point in enumerate(grid.points()):
        data = copy.deepcopy(base)
        ptxt = ", ".join(f"{k}={v}" for k, v in point.items())
        where = f"grid {grid.name!r}, scale {scale!r}, point {index} ({ptxt}): "
        for path, value in point.items():
            if path in ("seed", "labels"):
                raise ValueError(f"{where}axis {path!r} is not allowed; use the grid's seeds list")
            set_path(data, path, value, where)
        for seed in seeds:
            data["seed"] = seed
            data["labels"] = {"grid": grid.name, "scale": scale, "index": index,
                              "reference": grid.reference or ""}
            try:
                cfg = run_config_from_dict(copy.deepcopy(data))
            except ValueError as e:
                raise ValueError(f"{where}{e}") from None
            if validate:
                validate_run(cfg, where)
            rid = run_id(cfg)
            if rid in seen:
                raise ValueError(f"{where}resolves to the same run as point {seen[rid]} (id {rid}); "
                                 f"remove the duplicate")
            seen[rid] = index
            specs.append(RunSpec(run_id=rid, config=cfg, point=dict(point)))
    return specs


def check_runnable(specs: list[RunSpec]) -> None:
    """What ``--dry-run`` adds to :func:`expand`'s checks, so that what it accepts runs: build every distinct
    task with its options (the constructor validates their values, exactly as a run will), then check that
    each stage's training length fits the model (a fixed parameterization or learned position embeddings
    are tables of ``max_seq_len`` rows). Missing data of an ``optional`` stage is allowed (the run records
    it as unavailable); of a required stage it is an error. Errors name the run, the stage and the field."""
    from . import runner
    for spec in specs:
        cfg = spec.config
        where = f"run {spec.run_id} ({spec.label}): "
        stages = ([("pretrain", cfg.pretrain)] if cfg.pretrain is not None else []) + \
            [(f"tasks[{i}]", st) for i, st in enumerate(cfg.tasks)]
        pre_len = None
        for sw, stage in stages:
            try:
                task = runner.build_task(stage)
            except runner.DataUnavailable:
                continue
            except runner._unavailable_errors() as e:
                raise MissingComponent(f"{where}{sw}.task {stage.task!r}: its data is unavailable ({e}); mark the "
                                       f"stage optional: true, or make the data reachable") from None
            except (TypeError, ValueError, KeyError) as e:
                msg = e.args[0] if isinstance(e, KeyError) and e.args else e
                raise ValueError(f"{where}{sw}.options: {msg}") from None
            if cfg.model.max_seq_len is not None:
                max_len, source = cfg.model.max_seq_len, "model.max_seq_len"
            elif stage.init == "pretrain":
                max_len, source = pre_len, "the pretrain task's seq_len"
            else:
                max_len, source = task.seq_len, f"{sw}.options seq_len"
            if sw == "pretrain":
                pre_len = max_len
            _check_model_builds(cfg, task, stage, max_len, f"{where}{sw}: ")
            tables = not cfg.model.sequence_aligned or cfg.model.position_embeddings
            if tables and max_len is not None and task.seq_len > max_len:
                kind = "fixed parameterization" if not cfg.model.sequence_aligned else "learned position embeddings"
                raise ValueError(f"{where}{sw}: task {stage.task!r} trains on length {task.seq_len}, longer than "
                                 f"the model's {max_len} ({source}); the {kind} is a table of that many rows; "
                                 f"allowed: seq_len <= {max_len}, or set model.max_seq_len >= {task.seq_len}")


_BUILT: set = set()  # model shapes already built by _check_model_builds in this process


def _check_model_builds(cfg: RunConfig, task, stage, max_len, where: str) -> None:
    """Build the stage's model as the run will, on the meta device (no memory, no initialization cost), so that
    what the block constructors refuse (an unknown ``mixer_kwargs`` option, a shape rule) stops ``--dry-run``
    too. One layer stands for all: the layers are alike, and the time to build grows with their number. A
    custom ``model.builder`` is left to the run: what it does on the meta device is its own affair."""
    if cfg.model.builder is not None or (max_len is None and not cfg.model.sequence_aligned):
        return
    import dataclasses

    import torch

    from . import runner
    model = dataclasses.replace(cfg.model, n_layers=1)
    key = canonical_json([config_to_dict(model), task.vocab_size, task.kind, getattr(task, "num_labels", None),
                          stage.pooling, max_len])
    if key in _BUILT:
        return
    try:
        with torch.device("meta"):
            runner.build_model(model, task, stage, max_len)
    except (TypeError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ValueError(f"{where}the model does not build ({msg}); see model.* and model.mixer_kwargs") from None
    _BUILT.add(key)
