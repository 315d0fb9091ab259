"""Tidy long-format export and the TensorBoard sink (a recording stand-in for SummaryWriter: tensorboard
itself is optional and not needed by the tests)."""
import csv
import json
import sys
import types

import pytest

import standin_plugin
from ablations import runner, sinks
from ablations.cli import main as cli_main
from ablations.config import run_config_from_dict
from ablations.grid import run_id


@pytest.fixture
def out(tmp_path):
    cfgs = [run_config_from_dict(standin_plugin.config(seed=s)) for s in (0, 1)]
    for c in cfgs:
        assert runner.execute_run(c, tmp_path)["status"] == "completed"
    return tmp_path, [run_id(c) for c in cfgs]


def test_long_format_matches_the_summaries(out):
    out_dir, ids = out
    path = sinks.write_long(out_dir)
    rows = list(csv.DictReader(path.open()))
    assert tuple(rows[0]) == sinks.LONG_COLUMNS
    expected = 0
    for rid in ids:
        summary = json.loads((out_dir / rid / "summary.json").read_text())
        for stage, info in summary["stages"].items():
            for split, values in info["metrics"].items():
                for metric, value in values.items():
                    expected += 1
                    match = [r for r in rows if (r["run"], r["stage"], r["split"], r["metric"]) == (rid, stage, split, metric)]
                    assert len(match) == 1 and float(match[0]["value"]) == pytest.approx(value)
                    assert match[0]["parameterization"] == "fixed" and match[0]["seed"] == str(summary["seed"])
    assert len(rows) == expected


class _Writer:
    logs = {}

    def __init__(self, log_dir):
        self.scalars = _Writer.logs.setdefault(log_dir, [])

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        pass


def test_tensorboard_sink(out, tmp_path, monkeypatch):
    out_dir, ids = out
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=_Writer))
    written = sinks.write_tensorboard(out_dir, tmp_path / "tb")
    assert sorted(p.name for p in written) == sorted(ids)
    scalars = _Writer.logs[str(tmp_path / "tb" / ids[0])]
    recs = [json.loads(line) for line in (out_dir / ids[0] / "metrics.jsonl").read_text().splitlines()]
    train = [(f"{r['stage']}/train/train_loss", r["train_loss"], r["step"]) for r in recs if "train_loss" in r]
    assert train and all(t in scalars for t in train)
    evals = [(f"{r['stage']}/{r['split']}/accuracy", r["accuracy"], r["step"]) for r in recs if "split" in r]
    assert evals and all(t in scalars for t in evals)


def test_tensorboard_missing_is_one_line_and_fails_before_running(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    rc = cli_main(["ablate", "smoke", "--out", str(tmp_path / "r"), "--tensorboard", str(tmp_path / "tb")])
    err = capsys.readouterr().err
    assert rc == 3 and err.count("\n") == 1 and "pip install tensorboard" in err
    assert not (tmp_path / "r").exists()
