"""Property-based tests (hypothesis): whatever a user writes, the outcome is a valid result or a ValueError
(KeyError for unknown registry names) that names the field, never another exception.

* grid specs: the shipped ``smoke`` grid mutated (a key dropped, renamed, or its value replaced by a value of
  another type or out of range) goes through ``parse_grid``, ``expand`` and the ``--dry-run`` checks; and every
  scalar field (the grid's own and the run config's, set or left at its default) given each non-scalar value
  (a list or a mapping) is an error naming the field, at every scale: a sweep, not a sample, so that none is
  missed (``default_scale: []`` was a TypeError);
* structured matrices: random (often invalid) arguments to every class's ``random`` and ``matmul``.
"""
import copy
import math

import pytest
import torch
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import structured  # noqa: E402
from ablations import grid as grid_mod  # noqa: E402

SETTINGS = settings(max_examples=50, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

WEIRD = [None, True, False, 0, -1, -7, 2 ** 40, 1.5, -0.5, float("nan"), float("inf"), "", "abc", [], [1, "x"],
         {}, {"zz": 1}]

SMOKE = yaml.safe_load(open(grid_mod.grid_path("smoke")))


def _paths(node, prefix=()):
    """Every (path, value) of the nested spec, containers included."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((prefix + (k,), v))
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((prefix + (i,), v))
            out += _paths(v, prefix + (i,))
    return out


PATHS = [p for p, _ in _paths(SMOKE)]


def _parent(data, path):
    node = data
    for k in path[:-1]:
        node = node[k]
    return node


def _mentions(msg: str, path) -> bool:
    """The error names the mutated field: one of its keys (index steps aside) appears in the message."""
    keys = [str(k) for k in path if not isinstance(k, int)]
    return any(k in msg for k in keys)


def _outcome(data):
    g = grid_mod.parse_grid(copy.deepcopy(data), default_name="fuzz")
    specs = grid_mod.expand(g)
    grid_mod.check_runnable(specs)
    return specs


@SETTINGS
@given(path=st.sampled_from(PATHS), kind=st.sampled_from(["drop", "rename", "replace"]),
       value=st.sampled_from(WEIRD))
def test_mutated_grid_is_valid_or_a_value_error_naming_the_field(path, kind, value):
    data = copy.deepcopy(SMOKE)
    parent = _parent(data, path)
    key = path[-1]
    leaf = not isinstance(parent[key], (dict, list))
    if kind == "drop":
        del parent[key]
    elif kind == "rename":
        if isinstance(parent, list):
            return
        parent[f"{key}_typo"] = parent.pop(key)
    else:
        parent[key] = copy.deepcopy(value)
    try:
        specs = _outcome(data)
    except (ValueError, KeyError, grid_mod.MissingComponent) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        assert "\n" not in msg.strip() or len(msg) < 2000
        if kind == "rename":
            assert f"{key}_typo" in msg, msg
        elif kind == "replace" and leaf:  # a replaced container may be rejected for what it lacks
            assert _mentions(msg, path) or "unknown" in msg, (path, value, msg)
        return
    assert specs and all(s.run_id for s in specs)


@SETTINGS
@given(path=st.sampled_from([p for p in PATHS if p[-1] in ("steps", "batch_size", "lr", "seq_len", "num_kv_pairs",
                                                               "vocab_size", "d_model", "headdim", "warmup_steps")]),
       value=st.one_of(st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True)))
def test_numeric_fields_out_of_range(path, value):
    data = copy.deepcopy(SMOKE)
    _parent(data, path)[path[-1]] = value
    try:
        _outcome(data)
    except (ValueError, KeyError) as e:
        assert _mentions(str(e), path), (path, value, str(e))


NON_SCALAR = [[], {}, [1, "x"], {"zz": 1}]


def _scalar_fields(cls, prefix):
    """Paths of the fields of config dataclass ``cls`` whose type is a scalar (optional or not)."""
    import dataclasses
    import typing
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        args = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
        if args[0] in (bool, int, float, str):
            out.append(prefix + (f.name,))
    return out


def _scalar_paths():
    from ablations import config
    grid_scalars = [("name",), ("description",), ("reference",), ("default_scale",)]
    leaves = [p for p, v in _paths(SMOKE) if not isinstance(v, (dict, list))]
    fields = (_scalar_fields(config.RunConfig, ("base",)) + _scalar_fields(config.ModelConfig, ("base", "model"))
              + _scalar_fields(config.StageConfig, ("base", "tasks", 0))
              + _scalar_fields(config.OptimConfig, ("base", "tasks", 0, "optim")))
    return list(dict.fromkeys(grid_scalars + leaves + fields))


SCALAR_PATHS = _scalar_paths()
# fields that every point of the grid sets (its seeds, its include entries): a base value there is replaced
OVERRIDDEN = {("base", "seed")} | {("base", *k.split(".")) for p in SMOKE["include"] for k in p}


def test_non_scalar_values_in_scalar_fields_are_errors_naming_the_field():
    """Every non-scalar value in every scalar field is an error naming the field (e.g. default_scale: [],
    description: [])."""
    assert len(SCALAR_PATHS) > 50 and ("default_scale",) in SCALAR_PATHS
    problems = []
    for path in SCALAR_PATHS:
        for value in NON_SCALAR:
            data = copy.deepcopy(SMOKE)
            node = data
            for k in path[:-1]:
                node = node.setdefault(k, {}) if isinstance(node, dict) else node[k]
            node[path[-1]] = copy.deepcopy(value)
            where = f"{'.'.join(map(str, path))}={value!r}"
            try:
                g = grid_mod.parse_grid(data, default_name="fuzz")
                for scale in g.scales:
                    grid_mod.check_runnable(grid_mod.expand(g, scale=scale))
            except (ValueError, KeyError) as e:
                msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
                if not _mentions(msg, path) or len(msg.splitlines()) != 1:
                    problems.append(f"{where}: {msg}")
                continue
            except Exception as e:  # noqa: BLE001 - the finding: another exception than a named error
                problems.append(f"{where}: {type(e).__name__}: {e}")
                continue
            if path not in OVERRIDDEN:
                problems.append(f"{where}: accepted")
    assert not problems, "\n".join(problems)


CLASSES = structured.names()
DTYPES = [torch.float64, torch.float32, None, torch.int64, "float32"]


@SETTINGS
@given(name=st.sampled_from(CLASSES),
       length=st.one_of(st.integers(-2, 24), st.sampled_from([2.5, "8", None, True])),
       batch=st.one_of(st.lists(st.integers(-1, 3), max_size=3).map(tuple), st.sampled_from([None, 3, "ab"])),
       order=st.one_of(st.none(), st.integers(-1, 30), st.sampled_from([2.5, "3", True])),
       dtype=st.sampled_from(DTYPES),
       p=st.integers(0, 3), extra=st.integers(-1, 1))
def test_structured_random_and_matmul_give_a_result_or_a_value_error(name, length, batch, order, dtype, p, extra):
    cls = structured.get(name)
    g = torch.Generator().manual_seed(0)
    try:
        M = cls.random(length, batch_shape=batch, order=order, dtype=dtype, generator=g)
    except ValueError as e:
        assert str(e)
        return
    L = M.length
    D = M.to_dense()
    assert D.shape == (*M.batch_shape, L, L) and torch.isfinite(D).all()
    x = torch.randn(*M.batch_shape, L + extra, p, dtype=D.dtype, generator=g) if L + extra >= 0 else None
    try:
        y = M.matmul(x)
    except ValueError as e:
        assert extra != 0 or p == 0 or x is None, str(e)
        return
    assert extra == 0 and y.shape == (*M.batch_shape, L, p)
    if p:
        ref = D @ x
        scale = max(1.0, float(ref.abs().max()))
        tol = 1e-3 if D.dtype == torch.float32 else 1e-6
        assert float((y - ref).abs().max()) <= tol * scale * (10 if getattr(cls, "approximate", False) else 1)
