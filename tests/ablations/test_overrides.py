"""`mixerzoo ablate --set key.path=value`: parsing, named list items, validation like the YAML fields."""
import pytest

from ablations import grid
from ablations.cli import main as cli_main
from ablations.overrides import apply_overrides, parse_set


def test_parse_set_values():
    assert parse_set("pretrain.steps=12") == ("pretrain.steps", 12)
    assert parse_set("tasks.0.optim.lr=1e-4") == ("tasks.0.optim.lr", 1e-4)  # YAML 1.1 would give a string
    assert parse_set("model.sequence_aligned=true") == ("model.sequence_aligned", True)
    assert parse_set("pretrain.options.corpus=english") == ("pretrain.options.corpus", "english")
    assert parse_set("model.mixer_kwargs={order: 4}") == ("model.mixer_kwargs", {"order": 4})
    for bad in ("novalue", "=3", "a..b=1"):
        with pytest.raises(ValueError, match="KEY.PATH=VALUE"):
            parse_set(bad)


def test_apply_overrides_changes_every_run_and_its_id():
    specs = grid.expand("smoke")
    new = apply_overrides(specs, ["tasks.mqar_bidir.steps=7", "model.d_model=24"])
    assert [s.config.tasks[0].steps for s in new] == [7, 7] and all(s.config.model.d_model == 24 for s in new)
    assert {s.run_id for s in new}.isdisjoint({s.run_id for s in specs})
    assert [s.point for s in new] == [s.point for s in specs]
    assert apply_overrides(specs, ["tasks.0.steps=20"])[0].run_id == specs[0].run_id  # the same value: the same run
    with pytest.raises(ValueError, match="unknown field model.d_modl"):
        apply_overrides(specs, ["model.d_modl=3"])
    with pytest.raises(ValueError, match="steps must be an integer"):
        apply_overrides(specs, ["tasks.0.steps=many"])
    with pytest.raises(ValueError, match="names no item of tasks"):
        apply_overrides(specs, ["tasks.glue.steps=3"])
    with pytest.raises(ValueError, match="use --seeds"):
        apply_overrides(specs, ["seed=3"])


def test_cli_set(capsys):
    assert cli_main(["ablate", "smoke", "--dry-run", "--set", "tasks.0.steps=5"]) == 0
    assert "2 run(s)" in capsys.readouterr().out
    assert cli_main(["ablate", "smoke", "--dry-run", "--set", "model.mixer=nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown mixer 'nosuch'" in err


@pytest.mark.parametrize("text, expect", [
    ("pretrain.steps=200", "the runs have no pretrain stage, so there is no pretrain.steps to set; to add one, set "
                           "the whole stage, e.g. --set 'pretrain={task: mlm, steps: 200}'"),
    ("pretrain.optim.lr=1e-3", "the runs have no pretrain stage"),
    ("tasks.nosuch.steps=3", "'nosuch' names no item of tasks (items: mqar_bidir; or use an index); --set does not "
                             "add an item"),
    ("tasks.3.steps=3", "tasks has 1 item(s) (items: mqar_bidir), no index 3; --set does not add an item"),
    ("tasks.0.eval_splits.0=val", "tasks.0.eval_splits is null in the runs, so there is no tasks.0.eval_splits.0"),
])
def test_set_never_adds_a_stage(capsys, text, expect):
    """--set never adds a stage: setting a field of a missing stage is an error that says how to add one."""
    with pytest.raises(ValueError) as e:
        apply_overrides(grid.expand("smoke"), [text])
    assert expect in str(e.value)
    assert cli_main(["ablate", "smoke", "--dry-run", "--set", text]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err
    if "--set 'pretrain=" in expect:  # the way the message names adds the stage
        new = apply_overrides(grid.expand("smoke"), ["pretrain={task: mlm, steps: 200}"])
        assert all(s.config.pretrain.task == "mlm" and s.config.pretrain.steps == 200 for s in new)
