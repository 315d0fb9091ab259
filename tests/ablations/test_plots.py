"""Plots: chance levels come from the tasks the runs recorded; every stage gets a loss panel."""
import json

import standin_plugin
from ablations import report, runner
from ablations.config import run_config_from_dict
from ablations.grid import run_id


def test_chance_levels_and_panels(tmp_path, monkeypatch):
    cfg = run_config_from_dict(standin_plugin.config())
    runner.execute_run(cfg, tmp_path)
    summary = json.loads((tmp_path / run_id(cfg) / "summary.json").read_text())
    runs = report.load_runs(tmp_path)
    chance = report._chance_levels(runs)
    for name, st in summary["stages"].items():
        if st["kind"] == "sequence":
            k = st["task_info"]["num_labels"]
            assert chance[name] == (100.0 / k, f"chance 1/{k}")
        else:
            assert name not in chance  # token tasks: the axis from 0 is the baseline
    titles = []
    import matplotlib.axes
    real = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda self, label, *a, **k: titles.append(label) or real(self, label, *a, **k))
    paths = report.write_plots(tmp_path)
    assert {p.name for p in paths} >= {"val_loss.png", "scores.png"}
    for stage in summary["stages"]:
        assert any(t.startswith(f"{stage} (") and "loss" in t for t in titles)
