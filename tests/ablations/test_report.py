"""Reports: Table-2 layout, seed aggregation, deltas, the paper reference, Markdown/CSV/LaTeX, plots."""
import io
import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from ablations import report

# (mixer, sequence_aligned, seed) -> (fine-tune accuracy in [0, 1], MLM loss)
RUNS = {
    ("dense", False, 0): (0.70, 5.0),
    ("toeplitz", False, 0): (0.75, 4.8),
    ("toeplitz", True, 0): (0.80, 4.6),
    ("toeplitz", True, 1): (0.82, 4.4),
    ("cauchy", False, 0): (0.60, 5.2),
    ("cauchy", True, 0): (0.90, 4.1),
}


def _write_runs(out, failed=False, scale="lab"):
    for i, ((mixer, sa, seed), (acc, loss)) in enumerate(RUNS.items()):
        rid = f"{mixer}-{'sa' if sa else 'fx'}-s{seed}-0000"
        d = out / rid
        d.mkdir(parents=True)
        stages = {
            "mlm": {"status": "completed", "role": "pretrain", "kind": "token", "primary_metric": "accuracy",
                    "higher_is_better": True, "in_average": False,
                    "metrics": {"val": {"loss": loss, "accuracy": 0.3}}},
            "doc": {"status": "completed", "role": "finetune", "kind": "sequence", "primary_metric": "accuracy",
                    "higher_is_better": True, "in_average": True, "primary": acc,
                    "metrics": {"val": {"loss": 1.0, "accuracy": acc}}},
            "recall": {"status": "completed", "role": "scratch", "kind": "token", "primary_metric": "accuracy",
                       "higher_is_better": True, "in_average": False, "primary": 0.5,
                       "metrics": {"val": {"accuracy": 0.5}, "val_2x": {"not_extendable": True} if not sa
                                   else {"accuracy": 0.25}}},
        }
        summary = {"run_id": rid, "seed": seed, "mixer": mixer, "sequence_aligned": sa, "params": 1000 + i,
                   "status": "completed", "reason": None, "average": 100 * acc, "stages": stages,
                   "labels": {"grid": "t", "index": i, "reference": "table2", "scale": scale}}
        (d / "summary.json").write_text(json.dumps(summary))
        with open(d / "metrics.jsonl", "w") as f:
            for step in (10, 20):
                f.write(json.dumps({"stage": "mlm", "step": step, "split": "val", "loss": loss + 1 / step}) + "\n")
    if failed:
        d = out / "low_rank-sa-s0-0000"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({
            "run_id": d.name, "seed": 0, "mixer": "low_rank", "sequence_aligned": True, "status": "failed",
            "reason": "non-finite: loss nan at step 3", "stages": {}, "params": None, "average": None,
            "labels": {"grid": "t", "index": 9, "reference": "table2"}}))


def test_table_layout_values_and_reference(tmp_path):
    _write_runs(tmp_path, failed=True)
    df = report.build_table(tmp_path)
    # rows in the paper's order (dense, toeplitz fixed/SA, ..., cauchy, low-rank)
    assert list(zip(df.mixer, df["Seq.-aligned"])) == [("dense", False), ("toeplitz", False), ("toeplitz", True),
                                                         ("cauchy", False), ("cauchy", True), ("low_rank", True)]
    cols = list(df.columns)
    assert cols[:3] == ["Structure", "mixer", "Seq.-aligned"] and "#Params" in cols
    assert cols.index("mlm loss") < cols.index("doc acc") < cols.index("Avg") < cols.index("Δ SA−fixed")
    row = df[(df.mixer == "toeplitz") & df["Seq.-aligned"]].iloc[0]
    assert row["Avg"] == pytest.approx(81.0) and row["Avg std"] == pytest.approx(np.std([80, 82], ddof=1))
    assert row["Seeds"] == 2
    assert row["Δ SA−fixed"] == pytest.approx(81.0 - 75.0)
    assert df[(df.mixer == "cauchy") & df["Seq.-aligned"]].iloc[0]["Δ SA−fixed"] == pytest.approx(30.0)
    assert np.isnan(df[df.mixer == "dense"].iloc[0]["Δ SA−fixed"])
    assert row["mlm loss"] == pytest.approx(4.5)
    # not-extendable split of fixed parameterizations
    assert np.isinf(df[df.mixer == "dense"].iloc[0]["recall acc [val_2x]"])
    assert row["recall acc [val_2x]"] == pytest.approx(25.0)
    failed = df[df.mixer == "low_rank"].iloc[0]
    assert failed["Status"].startswith("1 failed") and "non-finite" in failed["Status"]
    # the paper's averages beside ours, read from the shipped reference data
    ref = report.load_reference("table2")
    paper = {(m, sa): v for m, sa, v in zip(ref.mixer, ref.sequence_aligned, ref.glue_avg)}
    assert paper[("quasiseparable", True)] == 79.7 and paper[("dense", False)] == 74.7 and len(paper) == 14
    assert list(df["Paper Avg"]) == [paper[(m, sa)] for m, sa in zip(df.mixer, df["Seq.-aligned"])]
    ours = df["Avg"].to_numpy()
    keep = ~np.isnan(ours)
    expect = spearmanr(ours[keep], df["Paper Avg"].to_numpy()[keep]).statistic
    assert df.attrs["spearman"]["rho"] == pytest.approx(expect) and df.attrs["spearman"]["n"] == 5
    # per column too; "not evaluable" (inf) rows are left out, not ranked first; losses are not ranked
    by_col = df.attrs["spearman_by_column"]
    assert "mlm loss" not in by_col
    r2x = df["recall acc [val_2x]"].to_numpy()
    fin = np.isfinite(r2x)
    if fin.sum() >= 3:
        assert by_col["recall acc [val_2x]"]["n"] == fin.sum()
    else:
        assert "recall acc [val_2x]" not in by_col
    d = df["doc acc"].to_numpy()
    fin = np.isfinite(d)
    assert by_col["doc acc"]["rho"] == pytest.approx(spearmanr(d[fin], df["Paper Avg"].to_numpy()[fin]).statistic)


def test_reference_only_when_every_run_names_it(tmp_path):
    """A directory holding runs shared with another grid (table3's Hydra runs are table2's) gets no
    paper column from the runs that name one."""
    _write_runs(tmp_path)
    d = next(p for p in tmp_path.iterdir() if p.name.startswith("cauchy-sa"))
    summary = json.loads((d / "summary.json").read_text())
    summary["labels"]["reference"] = ""
    (d / "summary.json").write_text(json.dumps(summary))
    df = report.build_table(tmp_path)
    assert df.attrs["reference"] is None and "Paper Avg" not in df.columns
    assert report.build_table(tmp_path, reference="table2").attrs["reference"] == "table2"


def test_formats(tmp_path):
    _write_runs(tmp_path)
    df = report.build_table(tmp_path)
    md = report.format_table(df, "md")
    lines = md.splitlines()
    assert lines[0].startswith("| Structure | Seq.-aligned | #Params |")
    body = [ln for ln in lines[2:] if ln.startswith("|")]
    assert len(body) == 5 and all(ln.count("|") == lines[0].count("|") for ln in body)
    assert "| Toeplitz | ✓ |" in md and "81.0 ± 1.4" in md and "+6.0" in md and "n/e" in md
    assert "Spearman" in md
    back = pd.read_csv(io.StringIO(report.format_table(df, "csv")))
    assert list(back.columns) == list(df.columns) and len(back) == 5
    assert back.loc[back.mixer == "cauchy", "Avg"].tolist() == pytest.approx([60.0, 90.0])
    tex = report.format_table(df, "latex")
    assert tex.startswith("\\begin{tabular}") and "\\end{tabular}" in tex
    assert "\\#Params" in tex and "81.0 $\\pm$ 1.4" in tex and "\\checkmark" in tex and "$\\Delta$" in tex
    header = [ln for ln in tex.splitlines() if "Structure" in ln][0]
    n_cols = header.count("&") + 1
    assert all(ln.count("&") + 1 == n_cols for ln in tex.splitlines() if ln.endswith("\\\\"))
    with pytest.raises(ValueError, match="format must be one of md, csv, latex"):
        report.format_table(df, "html")
    paths = report.write_tables(df, tmp_path)
    assert sorted(p.name for p in paths) == ["table.csv", "table.md", "table.tex"]
    assert (tmp_path / "table.md").read_text().strip() == md.strip()


def test_footer_says_what_avg_is_and_flags_smoke_numbers(tmp_path):
    _write_runs(tmp_path / "lab")
    md = report.format_table(report.build_table(tmp_path / "lab"), "md")
    # only "doc" is marked in_average (mlm is pretraining, recall is not averaged)
    assert "Avg: mean of doc acc (the stages the grid marks `average`); Paper Avg: the paper's GLUE average." in md
    assert "Caution" not in md
    _write_runs(tmp_path / "smoke", scale="smoke")
    df = report.build_table(tmp_path / "smoke")
    md = report.format_table(df, "md")
    assert "Caution: at the smoke scale" in md and "not evidence" in md
    tex = report.format_table(df, "latex")
    assert "% Avg: mean of doc acc" in tex and "% Caution: at the smoke scale" in tex


def test_plots_written(tmp_path):
    _write_runs(tmp_path)
    paths = report.write_plots(tmp_path)
    assert sorted(p.name for p in paths) == ["delta.png", "sa_vs_fixed.png", "scores.png", "val_loss.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_no_delta_plot_without_fixed_and_aligned_pairs(tmp_path):
    """A grid of sequence-aligned rows only (table3) gets no empty delta plot."""
    _write_runs(tmp_path)
    for d in tmp_path.iterdir():
        if "-fx-" in d.name or d.name.startswith("dense"):
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
    (tmp_path / "plots").mkdir(exist_ok=True)
    paths = report.write_plots(tmp_path)
    assert sorted(p.name for p in paths) == ["scores.png", "val_loss.png"]
    assert not (tmp_path / "plots" / "delta.png").exists()


def test_missing_dir_and_empty_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        report.build_table(tmp_path / "nope")
    with pytest.raises(ValueError, match="no finished runs"):
        report.build_table(tmp_path)
    with pytest.raises(ValueError, match="reference must be one of table2"):
        report.load_reference("table9")


def test_spearman_is_none_where_undefined():
    assert report.spearman([1.0, 2.0], [1.0, 2.0]) is None                      # fewer than 3 rows
    assert report.spearman([0.5, 0.5, 0.5, 0.5], [1.0, 2.0, 3.0, 4.0]) is None  # ties everywhere: undefined
    assert report.spearman([1.0, 2.0, float("inf"), 3.0], [2.0, 4.0, 5.0, 6.0])["n"] == 3
    assert report.spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])["rho"] == -1.0
