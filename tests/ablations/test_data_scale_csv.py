"""Unreachable data fails fast after the first attempt; GPU scales on a CPU warn; no inf in CSV tables."""
import pytest
import torch

import standin_plugin
from ablations import cli, report, runner, tasks
from ablations.config import run_config_from_dict
from ablations.grid import RunSpec, run_id
from ablations.tasks.base import DataUnavailableError


def test_unreachable_data_is_tried_once_per_invocation(tmp_path, monkeypatch, capsys):
    """Unreachable data is tried once per invocation, not once per run."""
    calls = []
    orig = tasks.build

    def offline(name, **options):
        if name == "standin_parity":
            calls.append(options)
            raise DataUnavailableError("cannot reach the hub")
        return orig(name, **options)

    monkeypatch.setattr(runner, "_TASK_CACHE", {})
    monkeypatch.setattr(runner, "_TASK_FAILURES", {})
    monkeypatch.setattr(tasks, "build", offline)
    specs = []
    for seed in range(3):
        c = run_config_from_dict(standin_plugin.config(seed=seed, tasks=[
            {"task": "standin_parity", "init": "pretrain", "steps": 2, "batch_size": 4, "optional": True,
             "options": {"seq_len": 8}}]))
        specs.append(RunSpec(run_id=run_id(c), config=c, point={}))
    res = runner.run_grid(specs, tmp_path, jobs=1, progress=False, echo=lambda *_: None)
    assert len(calls) == 1
    assert all(r["stages"]["standin_parity"]["status"] == "unavailable" for r in res)
    assert all("cannot reach the hub" in r["stages"]["standin_parity"]["reason"] for r in res)
    err = capsys.readouterr().err
    assert err.count("data unavailable") == 1 and "standin_parity" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is about running without a GPU")
def test_gpu_scale_on_cpu_warns(capsys):
    """`--scale lab` on a CPU warns that the scale is sized for a GPU."""
    assert cli.main(["ablate", "smoke", "--scale", "lab", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "--scale lab is sized for a GPU" in err and "CPU" in err
    assert cli.main(["ablate", "smoke", "--dry-run"]) == 0
    assert "sized for a GPU" not in capsys.readouterr().err


def test_csv_has_no_inf(tmp_path):
    """table.csv leaves empty the splits a fixed parameterization cannot be evaluated on (no `inf`)."""
    from test_report import _write_runs
    _write_runs(tmp_path)
    df = report.build_table(tmp_path)
    assert any(df[c].dtype.kind == "f" and (df[c] == float("inf")).any() for c in df.columns)
    text = report.format_table(df, "csv")
    assert "inf" not in text.lower() and report.NOT_EVALUABLE in text
