"""Grid specs and run configs: validation errors name the field and the allowed values; run ids are stable."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import standin_plugin  # noqa: F401  (registers the stand-in tasks)
from ablations import grid
from ablations.config import config_to_dict, run_config_from_dict

HERE = Path(__file__).parent


def _grid(**over):
    data = {"name": "g", "base": standin_plugin.config(), "axes": {"model.d_model": [4, 8]}}
    data.update(over)
    return grid.parse_grid(data)


@pytest.mark.parametrize("data, needle", [
    ({"model": {"mixr": "x"}}, ["model.mixr", "allowed fields", "mixer", "sequence_aligned"]),
    ({"bogus": 1}, ["bogus", "allowed fields", "pretrain"]),
    ({"tasks": [{"task": "mlm", "stepz": 3}]}, ["tasks[0].stepz", "steps"]),
    ({"tasks": [{"task": "mlm", "optim": {"lr": -1.0}}]}, ["tasks[0].optim.lr", "> 0"]),
    ({"tasks": [{"task": "mlm", "optim": {"schedule": "step"}}]}, ["tasks[0].optim.schedule", "linear", "cosine"]),
    ({"tasks": [{"task": "mlm", "steps": 2.5}]}, ["tasks[0].steps", "integer"]),
    ({"tasks": [{"task": "mlm", "init": "pretrain"}]}, ["tasks[0].init", "pretrain"]),
    ({"tasks": [{"task": "mlm", "steps": 5, "optim": {"warmup_steps": 9}}]}, ["warmup_steps", "<= tasks[0].steps"]),
    ({"device": "tpu", "tasks": [{"task": "mlm"}]}, ["device", "auto", "cpu", "cuda"]),
    ({"tasks": [{"task": "mlm"}, {"task": "mlm"}]}, ["stage name", "tasks[1].name"]),
    ({}, ["at least one stage"]),
])
def test_config_errors_name_field_and_allowed(data, needle):
    with pytest.raises(ValueError) as e:
        run_config_from_dict(data)
    for n in needle:
        assert n in str(e.value), (n, str(e.value))


def test_config_roundtrip():
    cfg = run_config_from_dict(standin_plugin.config())
    assert run_config_from_dict(config_to_dict(cfg)) == cfg


def test_grid_shape_errors():
    with pytest.raises(ValueError, match="unknown field 'axis'.*allowed fields"):
        grid.parse_grid({"base": {}, "axis": {}})
    with pytest.raises(ValueError, match="axes.model.mixer must be a non-empty list"):
        grid.parse_grid({"base": {}, "axes": {"model.mixer": "dense"}})
    with pytest.raises(ValueError, match="unknown scale 'huge'.*smoke, lab, paper"):
        grid.parse_grid({"base": {}, "scales": {"huge": {}}})
    with pytest.raises(ValueError, match="seeds must be a non-empty list"):
        grid.parse_grid({"base": {}, "seeds": [0, -1]})
    with pytest.raises(KeyError, match="unknown grid 'nope'.*table2"):
        grid.load_grid("nope")


def test_expand_validates_every_point_before_running():
    g = _grid(axes={"model.d_model": [4, 0]})
    with pytest.raises(ValueError, match=r"point 1 \(model.d_model=0\).*model.d_model must be > 0"):
        grid.expand(g)
    g = _grid(axes={"pretrain.task": ["standin_copy", "no_such_task"]})
    with pytest.raises(KeyError, match="pretrain.task: unknown task 'no_such_task'; registered tasks: .*standin_copy"):
        grid.expand(g)
    base = standin_plugin.config()
    base["tasks"][0]["options"] = {"colour": 3}
    with pytest.raises(ValueError, match=r"tasks\[0\].options.colour: unknown option.*seq_len, num_examples"):
        grid.expand(grid.parse_grid({"name": "g", "base": base}))
    with pytest.raises(ValueError, match="scale must be one of"):
        grid.expand(_grid(scales={"smoke": {}}), scale="paper")
    with pytest.raises(ValueError, match="same run as point 0"):
        grid.expand(_grid(axes={"model.d_model": [4, 4]}))


def test_unknown_mixer_and_unsupported_parameterization():
    mixers = pytest.importorskip("mixers")
    table = mixers.names()
    fixed_only = [m for m, p in table.items() if "sequence_aligned" not in p]
    assert fixed_only, "expected a fixed-only mixer (dense, dft) in the registry"
    base = standin_plugin.config()
    base["model"] = {"d_model": 8}
    g = grid.parse_grid({"name": "g", "base": base, "include": [{"model.mixer": "no_such_mixer"}]})
    with pytest.raises(KeyError, match="model.mixer: unknown mixer 'no_such_mixer'; registered mixers: .*"
                                       + fixed_only[0]):
        grid.expand(g)
    g = grid.parse_grid({"name": "g", "base": base,
                         "include": [{"model.mixer": fixed_only[0], "model.sequence_aligned": True}]})
    with pytest.raises(ValueError, match="does not support the sequence_aligned parameterization; supported: fixed"):
        grid.expand(g)


def test_scales_overlay_and_seeds():
    g = _grid(scales={"smoke": {"pretrain": {"steps": 3}}, "lab": {"seeds": [1, 2], "pretrain": {"steps": 7}}},
              default_scale="smoke")
    smoke = grid.expand(g)
    assert [s.config.pretrain.steps for s in smoke] == [3, 3]
    assert smoke[0].config.pretrain.batch_size == 8  # untouched fields of the base survive the overlay
    lab = grid.expand(g, scale="lab")
    assert [(s.config.model.d_model, s.config.seed) for s in lab] == [(4, 1), (4, 2), (8, 1), (8, 2)]
    assert len({s.run_id for s in lab}) == 4
    assert [s.config.seed for s in grid.expand(g, seeds=grid.parse_seeds("0-2"))] == [0, 1, 2, 0, 1, 2]
    with pytest.raises(ValueError, match="--seeds"):
        grid.parse_seeds("a,b")


def test_run_id_stable_across_processes_and_grid_order():
    cfg = run_config_from_dict(standin_plugin.config(seed=3))
    rid = grid.run_id(cfg)
    code = ("import json,sys; from ablations.config import run_config_from_dict; from ablations.grid import run_id;"
            "print(run_id(run_config_from_dict(json.loads(sys.argv[1]))))")
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(standin_plugin.config(seed=3))], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == rid
    assert rid.startswith("standin-fx-s3-")
    # labels (grid name, index, scale) do not enter the hash; every config field does
    labelled = run_config_from_dict(standin_plugin.config(seed=3, labels={"grid": "other", "index": 9}))
    assert grid.run_id(labelled) == rid
    changed = run_config_from_dict(standin_plugin.config(seed=3, pretrain={"optim": {"lr": 0.5}}))
    assert grid.run_id(changed) != rid
    a = grid.expand(_grid(axes={"model.d_model": [4, 8]}))
    b = grid.expand(_grid(axes={"model.d_model": [8, 4]}))
    assert {s.run_id for s in a} == {s.run_id for s in b}


@pytest.mark.parametrize("name", ["table2", "table3", "smoke"])
def test_shipped_grids_validate_at_every_scale(name):
    pytest.importorskip("mixers")
    g = grid.load_grid(name)
    for scale in g.scales:
        specs = grid.expand(g, scale=scale)
        assert len(specs) == len(g.points()) * len(g.seeds)


def test_table2_grid_has_the_papers_rows():
    g = grid.load_grid("table2")
    pts = {(p["model.mixer"], p.get("model.sequence_aligned")) for p in g.points()}
    ref = {("dense", False), ("dft", False)} | {(m, sa) for m in ("toeplitz", "vandermonde", "cauchy", "low_rank",
                                                                 "attention", "quasiseparable") for sa in (False, True)}
    assert pts == ref
    # the rows whose defaults changed to the released code's forms name them, so their run ids differ from
    # the older forms' runs in results/table2-lab
    kwargs = {(p["model.mixer"], p["model.sequence_aligned"]): p.get("model.mixer_kwargs") for p in g.points()}
    assert kwargs[("cauchy", False)] == {"fixed_offset": False}
    assert kwargs[("quasiseparable", True)] == {"diagonal": "values", "fixed_dt": "bias"}
    raw = yaml.safe_load((HERE.parents[1] / "ablations" / "grids" / "table2.yaml").read_text())
    assert raw["scales"]["paper"]["model"]["d_model"] == 768 and raw["scales"]["paper"]["model"]["n_layers"] == 12


def test_table3_grid_has_the_bidirectional_variants_and_the_causal_reference():
    g = grid.load_grid("table3")
    mixers_in_grid = [p["model.mixer"] for p in g.points()]
    assert sorted(mixers_in_grid) == sorted(["semiseparable", "bidir_add", "bidir_mult", "bidir_concat",
                                             "hydra"])
    for scale in g.scales:   # all of Table 3 is sequence-aligned (input-dependent SSMs)
        assert all(s.config.model.sequence_aligned for s in grid.expand(g, scale=scale))
