"""Reports: results directory -> pandas DataFrame in the layout of the Hydra paper's Table 2 ->
Markdown / CSV / LaTeX, plus PNG plots.

Rows are (structure, parameterization) pairs, aggregated over seeds (mean, with the sample standard
deviation in ``<column> std`` columns, shown as ``mean ± std`` when there are several seeds). Columns:
``Structure | Seq.-aligned | #Params | <pretraining MLM loss/acc> | <one per downstream stage> | Avg |
Δ SA−fixed``, then the paper's reference average and Δ when the grid names a reference table. The
Spearman rank correlation between our averages and the paper's (over rows present in both) is kept in
``df.attrs["spearman"]`` and printed under the table.

Rows are ordered as in the reference table (the paper's order), then by first appearance in the grid.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .runner import summary_problem
from .trainer import atomic_write_text, read_jsonl

REFERENCE_DIR = Path(__file__).with_name("reference")
REFERENCES = {"table2": "hydra_table2.csv"}

# How the paper names the structures (anything else is shown by its registry name).
DISPLAY = {"dense": "Dense", "toeplitz": "Toeplitz", "dft": "DFT", "vandermonde": "Vandermonde",
           "cauchy": "Cauchy", "low_rank": "Low-rank", "attention": "Attention",
           "quasiseparable": "Quasiseparable", "hydra": "Hydra", "semiseparable": "Semiseparable (causal)",
           "bidir_add": "Add", "bidir_mult": "Mult", "bidir_concat": "Concat"}
NOT_EVALUABLE = "n/e"  # table text for a split a fixed parameterization has no matrix for
METRIC_SHORT = {"accuracy": "acc", "loss": "loss", "matthews": "MCC", "matthews_correlation": "MCC",
                "pearson": "Pearson", "spearman": "Spearman", "f1": "F1"}


# ----------------------------------------------------------------------------------------- loading
def load_reference(name: str) -> pd.DataFrame:
    """The paper's numbers for ``name`` (e.g. ``table2``): columns mixer, sequence_aligned, glue_avg."""
    if name not in REFERENCES:
        raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got {name!r}")
    with open(REFERENCE_DIR / REFERENCES[name]) as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    df = pd.DataFrame(rows)
    df["sequence_aligned"] = df["sequence_aligned"].str.lower() == "true"
    df["glue_avg"] = df["glue_avg"].astype(float)
    return df




def _unreadable(path: Path, cause: str) -> dict:
    """A failed-run record standing for a summary that cannot be read, grouped by its ``config.json``
    when that is readable (so its table row says so), and listed under the table by path."""
    run = {"run_id": path.parent.name, "status": "failed", "stages": {}, "params": None, "average": None,
           "reason": f"unreadable {path.name}: {cause}", "unreadable": str(path)}
    try:
        conf = json.loads((path.parent / "config.json").read_text())
        model = conf["config"]["model"]
        run.update(mixer=model["mixer"], sequence_aligned=bool(model["sequence_aligned"]),
                   labels=conf["config"].get("labels", {}), seed=conf.get("seed"))
    except (OSError, ValueError, KeyError, TypeError):
        run.update(mixer="(unknown)", sequence_aligned=False)
    return run


def load_runs(out_dir, run_ids=None) -> list[dict]:
    """Summaries of the finished runs under ``out_dir`` (restricted to ``run_ids`` when given).

    A ``summary.json`` that is not valid JSON or not a run summary (:func:`ablations.runner.summary_problem`)
    is not dropped: it becomes a failed run whose ``unreadable`` names the file."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"DIR {str(out_dir)!r} is not a directory of runs")
    runs = []
    for p in sorted(out_dir.glob("*/summary.json")):
        if run_ids is not None and p.parent.name not in run_ids:
            continue
        try:
            run = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            runs.append(_unreadable(p, f"not valid JSON ({e})"))
            continue
        problem = summary_problem(run)
        if problem is not None:
            runs.append(_unreadable(p, problem))
            continue
        runs.append(run)
    if not runs:
        raise ValueError(f"no finished runs (*/summary.json) under {str(out_dir)!r}")
    return runs


def _code_hash(run: dict):
    code = run.get("code")
    return code.get("source_hash") if isinstance(code, dict) else None


# ----------------------------------------------------------------------------------------- table
def _stage_columns(runs: list[dict]) -> list[tuple[str, str | None, str, str]]:
    """(stage, split, metric key, column name) in first-appearance order. The pretraining stage gives
    its loss and accuracy (the paper's L_ce and Acc); every other stage its primary metric on its first
    split, plus one column per further split (e.g. ``val_2x``, the 2x-length extrapolation)."""
    cols, seen = [], set()
    for r in runs:
        for name, st in r.get("stages", {}).items():
            splits = list(st.get("metrics", {}))
            metric = st.get("primary_metric") or "accuracy"
            wanted = [(None, "loss", f"{name} loss"), (None, "accuracy", f"{name} acc")] \
                if st.get("role") == "pretrain" else [(None, metric, f"{name} {METRIC_SHORT.get(metric, metric)}")]
            if st.get("role") != "pretrain":
                wanted += [(sp, metric, f"{name} {METRIC_SHORT.get(metric, metric)} [{sp}]") for sp in splits[1:]]
            for split, key, col in wanted:
                if col not in seen:
                    seen.add(col)
                    cols.append((name, split, key, col))
    return cols


def _metric_value(stage: dict, key: str, split: str | None = None):
    """The metric in percent (scores in [0, 1]) or as is (losses); NaN when missing; +inf marks a
    split the parameterization cannot be evaluated on (not extendable)."""
    if stage is None or stage.get("status") != "completed":
        return np.nan
    metrics = stage.get("metrics", {})
    candidates = [metrics.get(split, {})] if split is not None else list(metrics.values())[:1]
    for split_metrics in candidates:
        if split_metrics.get("not_extendable"):
            return np.inf
        if key in split_metrics:
            v = float(split_metrics[key])
            return 100.0 * v if key != "loss" and stage.get("higher_is_better", True) and abs(v) <= 1.0 else v
    return np.nan


def build_table(out_dir, run_ids=None, reference: str | None = None) -> pd.DataFrame:
    """The Table-2-layout DataFrame of the runs in ``out_dir`` (see the module docstring)."""
    runs = load_runs(out_dir, run_ids)
    if reference is None:
        # Only when every run names the same table: a directory may hold runs shared with another grid
        # (table3's Hydra runs are table2's), and their reference is not this table's.
        refs = {r.get("labels", {}).get("reference") or None for r in runs}
        reference = refs.pop() if len(refs) == 1 else None
    cols = _stage_columns(runs)
    groups: dict[tuple, list[dict]] = {}
    order: dict[tuple, int] = {}
    for r in runs:
        key = (r["mixer"], bool(r["sequence_aligned"]))
        groups.setdefault(key, []).append(r)
        order.setdefault(key, r.get("labels", {}).get("index", len(order)))
    ref_df = load_reference(reference) if reference else None
    ref_order = {}
    if ref_df is not None:
        ref_order = {(m, sa): i for i, (m, sa) in enumerate(zip(ref_df.mixer, ref_df.sequence_aligned))}
    keys = sorted(groups, key=lambda k: (ref_order.get(k, len(ref_order)), order[k]))
    rows = []
    for key in keys:
        rs = groups[key]
        ok = ok_runs(rs)
        row = {"Structure": DISPLAY.get(key[0], key[0]), "mixer": key[0], "Seq.-aligned": key[1],
               "#Params": float(np.mean([r["params"] for r in ok if r.get("params")])) if any(
                   r.get("params") for r in ok) else np.nan}
        for stage, split, metric, col in cols:
            vals = [_metric_value(r.get("stages", {}).get(stage), metric, split) for r in ok]
            _put(row, col, vals)
        _put(row, "Avg", [r["average"] if r.get("average") is not None else np.nan for r in ok])
        row["Seeds"] = len(ok)
        failed = [r for r in rs if r.get("status") != "completed"]
        status = "ok" if not failed else f"{len(failed)} failed: {failed[0].get('reason', '')}"[:80]
        hashes = {_code_hash(r) for r in ok}
        if len(hashes) > 1:  # seeds made by different code are not one experiment
            status = f"mixed code ({len(hashes)} versions); " + status
        row["Status"] = status
        rows.append(row)
    df = pd.DataFrame(rows)
    # Δ between the two parameterizations of a class, shown on the sequence-aligned row (as in the paper).
    df["Δ SA−fixed"] = np.nan
    for i, row in df.iterrows():
        if row["Seq.-aligned"]:
            fixed = df[(df.mixer == row.mixer) & (~df["Seq.-aligned"])]
            if len(fixed):
                df.loc[i, "Δ SA−fixed"] = row["Avg"] - fixed["Avg"].iloc[0]
    df.attrs["reference"] = reference
    df.attrs["unreadable"] = [r["unreadable"] for r in runs if r.get("unreadable")]
    df.attrs["code_versions"] = sorted({str(_code_hash(r)) for r in ok_runs(runs)})
    df.attrs["spearman"] = None
    # What "Avg" averages (the stages a grid marks ``average``) and at which scales the runs were made,
    # so the printed table says both instead of leaving "Avg" to be read as the paper's GLUE average.
    in_avg = {name for r in ok_runs(runs) for name, st in r.get("stages", {}).items() if st.get("in_average")}
    df.attrs["average_of"] = [col for stage, split, _, col in cols if stage in in_avg and split is None]
    df.attrs["scales"] = sorted({str(r.get("labels", {}).get("scale")) for r in runs} - {"None"})
    df.attrs["metric_columns"] = _metric_directions(runs, cols)
    if ref_df is not None:
        ref = {(m, sa): v for m, sa, v in zip(ref_df.mixer, ref_df.sequence_aligned, ref_df.glue_avg)}
        df["Paper Avg"] = [ref.get((m, sa), np.nan) for m, sa in zip(df.mixer, df["Seq.-aligned"])]
        df["Paper Δ"] = np.nan
        for i, row in df.iterrows():
            if row["Seq.-aligned"] and (row.mixer, False) in ref and (row.mixer, True) in ref:
                df.loc[i, "Paper Δ"] = ref[(row.mixer, True)] - ref[(row.mixer, False)]
        df.attrs["spearman"] = spearman(df["Avg"], df["Paper Avg"])
        # The same for each higher-is-better column: at small scale the pretraining metric can rank the
        # classes where the fine-tuned average's seed spread is too wide to (results/README.md).
        df.attrs["spearman_by_column"] = {
            col: sp for _, _, metric, col in cols
            if metric != "loss" and (sp := spearman(df[col], df["Paper Avg"])) is not None}
    tail = ["Seeds", "Status"]
    df = df[[c for c in df.columns if c not in tail] + tail]
    return df


def _metric_directions(runs: list[dict], cols) -> list[dict]:
    """Every metric column with its direction: a loss ranks ascending, any other metric as its stage records
    (``higher_is_better``, true where unrecorded); then ``Avg`` (higher is better)."""
    higher = {}
    for r in runs:
        for name, st in r.get("stages", {}).items():
            if "higher_is_better" in st:
                higher.setdefault(name, bool(st["higher_is_better"]))
    out = [{"column": col, "stage": stage, "split": split, "metric": metric,
            "higher_is_better": metric != "loss" and higher.get(stage, True)} for stage, split, metric, col in cols]
    return out + [{"column": "Avg", "stage": None, "split": None, "metric": "average", "higher_is_better": True}]


def ranked_columns(df: pd.DataFrame) -> list[dict]:
    """The metric columns with values; ``Avg`` only where it averages two or more columns with values (the
    mean of one column would rank that column twice)."""
    def has_values(col):
        return col in df.columns and bool(np.isfinite(df[col].to_numpy(dtype=float)).any())

    averaged = [c for c in df.attrs.get("average_of", []) if has_values(c)]
    return [m for m in df.attrs.get("metric_columns", [])
            if has_values(m["column"]) and (m["column"] != "Avg" or len(averaged) > 1)]


def ok_runs(runs: list[dict]) -> list[dict]:
    return [r for r in runs if r.get("status") == "completed"]


def _put(row: dict, col: str, vals: list) -> None:
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if vals and all(np.isinf(v) for v in vals):
        row[col], row[f"{col} std"] = np.inf, np.nan
        return
    vals = [v for v in vals if not np.isinf(v)]
    row[col] = float(np.mean(vals)) if vals else np.nan
    row[f"{col} std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else np.nan


def spearman(ours, paper) -> dict | None:
    """Spearman rank correlation over the rows where both values exist (None with fewer than 3, or where
    either side is constant there: the coefficient is undefined, e.g. a smoke grid whose runs all tie)."""
    from scipy.stats import spearmanr
    a, b = np.asarray(ours, dtype=float), np.asarray(paper, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)  # inf marks "not evaluable" (a fixed mixer at another length)
    if keep.sum() < 3 or np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:
        return None
    res = spearmanr(a[keep], b[keep])
    return {"rho": float(res.statistic), "p": float(res.pvalue), "n": int(keep.sum())}


# ----------------------------------------------------------------------------------------- formatting
def _display_columns(df: pd.DataFrame) -> list[str]:
    hidden = {"mixer"} | {c for c in ("Δ SA−fixed", "Paper Δ") if c in df.columns and df[c].isna().all()}
    return [c for c in df.columns if c not in hidden and not c.endswith(" std")]


def _fmt_cell(df, i, col) -> str:
    v = df.loc[i, col]
    if col == "Seq.-aligned":
        return "✓" if v else "✗"
    if col == "#Params":  # one unit per column (chosen by its largest entry), so rows compare at a glance
        if pd.isna(v):
            return ""
        big = df[col].max() >= 1e6
        return f"{v / 1e6:.2f}M" if big else f"{v / 1e3:.1f}K"
    if isinstance(v, (float, np.floating)):
        if np.isnan(v):
            return "" if col.startswith(("Δ", "Paper Δ")) else "–"
        if np.isinf(v):
            return NOT_EVALUABLE  # not extendable: a fixed parameterization has no matrix at this length
        txt = f"{v:+.1f}" if "Δ" in col else f"{v:.2f}" if "loss" in col else f"{v:.1f}"
        std = df.loc[i, f"{col} std"] if f"{col} std" in df.columns else np.nan
        if not pd.isna(std):
            txt += " ± " + (f"{std:.2f}" if "loss" in col else f"{std:.1f}")
        return txt
    return str(v)


_LATEX = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "_": "\\_", "#": "\\#", "$": "\\$",
          "{": "\\{", "}": "\\}", "Δ": "$\\Delta$", "−": "-", "±": "$\\pm$", "–": "--",
          "✓": "\\checkmark", "✗": "\\texttimes"}


def _latex_escape(s: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in s)


# Scales whose numbers only show that the pipeline runs: said under the table and on the plots.
NOT_EVIDENCE = {"smoke": "at the smoke scale the models are tiny and trained for tens of steps: these numbers "
                         "show that the pipeline runs end to end; they are noise, not evidence for or against "
                         "the paper"}


def _caveats(df) -> list[str]:
    return [f"Caution: {NOT_EVIDENCE[s]}." for s in df.attrs.get("scales", []) if s in NOT_EVIDENCE]


def _footer(df) -> list[str]:
    """Lines printed under the table: what Avg is, caveats of the scale, the rank correlation."""
    lines = []
    avg_of = df.attrs.get("average_of")
    if avg_of:
        lines.append(f"Avg: mean of {', '.join(avg_of)} (the stages the grid marks `average`)"
                     + ("; Paper Avg: the paper's GLUE average." if "Paper Avg" in df.columns else "."))
    lines += _caveats(df)
    if len(df.attrs.get("code_versions", [])) > 1:
        lines.append(f"Warning: the runs were made by {len(df.attrs['code_versions'])} versions of the code "
                     f"(source hashes {', '.join(df.attrs['code_versions'])}; None: not recorded); "
                     f"`mixerzoo ablate ... --rerun-stale` reruns those made by other code.")
    for path in df.attrs.get("unreadable", []):
        lines.append(f"Unreadable summary, counted as a failed run: {path}")
    sp = df.attrs.get("spearman")
    if sp is not None:
        lines.append(f"Spearman rank correlation of Avg with the paper's {df.attrs.get('reference')} averages: "
                     f"rho = {sp['rho']:.3f} (p = {sp['p']:.3g}, n = {sp['n']})")
    by_col = df.attrs.get("spearman_by_column") or {}
    if by_col:
        lines.append("The same for each column: " + "; ".join(
            f"{col}: rho = {v['rho']:.3f} (p = {v['p']:.3g}, n = {v['n']})" for col, v in by_col.items()))
    return lines


def format_table(df: pd.DataFrame, fmt: str = "md") -> str:
    """The table as Markdown (``md``), CSV (``csv``: numbers unformatted, std columns included) or
    LaTeX (``latex``: a booktabs tabular)."""
    if fmt == "csv":
        # "not evaluable" (a fixed parameterization at another length) is +inf in the DataFrame; a CSV says
        # it in words, as the Markdown table does, instead of a number a spreadsheet would average.
        out = df.copy()
        for col in out.columns:
            if pd.api.types.is_float_dtype(out[col]) and np.isinf(out[col].to_numpy()).any():
                out[col] = [NOT_EVALUABLE if np.isinf(v) else v for v in out[col]]
        return out.to_csv(index=False)
    cols = _display_columns(df)
    if fmt == "md":
        lines = ["| " + " | ".join(cols) + " |",
                 "|" + "|".join("---" if c in ("Structure", "Status") else "---:" for c in cols) + "|"]
        for i in df.index:
            lines.append("| " + " | ".join(_fmt_cell(df, i, c).replace("|", "/") for c in cols) + " |")
        return "\n\n".join(["\n".join(lines)] + _footer(df))  # one paragraph per footer line
    if fmt == "latex":
        spec = "l" + "c" + "r" * (len(cols) - 2)
        lines = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
                 " & ".join(_latex_escape(c) for c in cols) + " \\\\", "\\midrule"]
        for i in df.index:
            cells = [_latex_escape(_fmt_cell(df, i, c)) for c in cols]
            lines.append(" & ".join(cells) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        lines += ["% " + ln for ln in _footer(df)]
        return "\n".join(lines)
    raise ValueError(f"format must be one of md, csv, latex; got {fmt!r}")


def write_tables(df: pd.DataFrame, out_dir) -> list[Path]:
    """Write ``table.md``, ``table.csv`` and ``table.tex`` into ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    paths = []
    for fmt, name in (("md", "table.md"), ("csv", "table.csv"), ("latex", "table.tex")):
        atomic_write_text(out_dir / name, format_table(df, fmt) + "\n")
        paths.append(out_dir / name)
    return paths


# ----------------------------------------------------------------------------------------- plots
def _chance_levels(runs: list[dict]) -> dict[str, tuple[float, str]]:
    """Per stage, the score a guess gets, in percent, and how it is defined: 100/K for a K-class sequence task
    (uniform guessing); the majority class share where the task records it (``majority_accuracy``) is shown
    beside it by the caller. Token tasks (MLM, recall: thousands of classes) get 0."""
    out = {}
    for r in runs:
        for name, st in r.get("stages", {}).items():
            info = st.get("task_info") or {}
            k = info.get("num_labels")
            if name not in out and st.get("kind") == "sequence" and isinstance(k, int) and k > 1:
                out[name] = (100.0 / k, f"chance 1/{k}")
    return out


def _majority_levels(runs: list[dict]) -> dict[tuple[str, str], float]:
    out = {}
    for r in runs:
        for name, st in r.get("stages", {}).items():
            for split, v in ((st.get("task_info") or {}).get("majority_accuracy") or {}).items():
                out.setdefault((name, split), 100.0 * float(v))
    return out


def write_plots(out_dir, run_ids=None) -> list[Path]:
    """``plots/val_loss.png``: loss vs step, one panel per stage (small multiples: the validation loss where a
    stage was evaluated at 3 or more steps, else its training loss), one line per
    row (mixer x parameterization; colour = mixer, solid = sequence-aligned, dashed = fixed; mean over seeds),
    the legend outside the panels. ``plots/scores.png``: every row's scored columns on axes that start at 0,
    with the chance level (dashed) and the majority-class share (dotted) where they are known, and
    error bars (seed standard deviation) only on rows with several seeds. ``plots/delta.png``, where some
    class has both parameterizations: per class, Avg of the sequence-aligned minus the fixed
    parameterization, ours beside the paper's; there also ``plots/sa_vs_fixed.png`` (:func:`_plot_sa_vs_fixed`)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(out_dir, run_ids)
    written = []
    df = build_table(out_dir, run_ids)
    flag = "".join(f"\n[{s} scale: a pipeline check, not evidence]" for s in df.attrs["scales"] if s in NOT_EVIDENCE)

    # loss curves: every stage, first evaluation split
    stages: list[str] = []
    for r in runs:
        stages += [n for n in r.get("stages", {}) if n not in stages]
    # per stage: the validation loss where it was evaluated at >= 3 steps, else the logged training loss
    # (a fine-tuning stage evaluated only at its end still gets a curve)
    val_curves: dict[str, dict[tuple, dict[int, list[float]]]] = {}
    train_curves: dict[str, dict[tuple, dict[int, list[float]]]] = {}
    for r in runs:
        recs = read_jsonl(out_dir / r["run_id"] / "metrics.jsonl")
        key = (r["mixer"], r["sequence_aligned"])
        for stage in stages:
            split0 = next((x["split"] for x in recs if x.get("stage") == stage and "split" in x), None)
            for x in recs:
                if x.get("stage") != stage:
                    continue
                if x.get("split") == split0 and split0 is not None and isinstance(x.get("loss"), (int, float)):
                    val_curves.setdefault(stage, {}).setdefault(key, {}).setdefault(x["step"], []).append(x["loss"])
                elif "split" not in x and isinstance(x.get("train_loss"), (int, float)):
                    train_curves.setdefault(stage, {}).setdefault(key, {}).setdefault(x["step"], []).append(
                        x["train_loss"])
    curves, what = {}, {}
    for stage in stages:
        enough = any(len(pts) >= 3 for pts in val_curves.get(stage, {}).values())
        source = val_curves if enough or stage not in train_curves else train_curves
        if stage in source:
            curves[stage] = source[stage]
            what[stage] = f"{'validation' if source is val_curves else 'training'} loss"
    panels = [s for s in stages if s in curves] or stages[:1]
    ncols = min(3, max(1, len(panels)))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols + 2.6, 3.3 * nrows + 0.8), squeeze=False)
    rows_seen = sorted({k for c in curves.values() for k in c})
    mixers_seen = sorted({m for m, _ in rows_seen})
    cmap = plt.get_cmap("tab20" if len(mixers_seen) > 10 else "tab10")
    handles = {}
    for ax, stage in zip(axes.flat, panels):
        for (mixer, sa), pts in sorted(curves.get(stage, {}).items()):
            steps = sorted(pts)
            (line,) = ax.plot(steps, [np.mean(pts[st]) for st in steps], linestyle="-" if sa else "--",
                              marker=".", markersize=3, linewidth=1.2,
                              color=cmap(mixers_seen.index(mixer) % cmap.N))
            handles.setdefault(f"{DISPLAY.get(mixer, mixer)} ({'SA' if sa else 'fixed'})", line)
        ax.set_title(f"{stage} ({what.get(stage, 'no loss logged')})", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel(what.get(stage, "loss"), fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if handles:  # outside the panels, so it covers no curve
        fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7,
                   title="solid: sequence-aligned\ndashed: fixed", title_fontsize=7)
    fig.suptitle("Loss per stage (mean over seeds)" + flag, fontsize=10)
    fig.tight_layout()
    p = plot_dir / "val_loss.png"
    fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    written.append(p)

    # Every row's scores: the plot for grids without fixed/SA pairs (table3) too.
    score_cols = [c for c in df.columns if f"{c} std" in df.columns and "loss" not in c
                  and np.isfinite(df[c].to_numpy(dtype=float)).any()]
    if score_cols:
        col_stage = {col: (stage, split) for stage, split, _, col in _stage_columns(ok_runs(runs) or runs)}
        chance, majority = _chance_levels(runs), _majority_levels(runs)
        seeds = df["Seeds"].to_numpy(dtype=float) if "Seeds" in df.columns else np.ones(len(df))
        any_spread = bool((seeds > 1).any())
        labels = [f"{s} ({'SA' if sa else 'fixed'})" for s, sa in zip(df["Structure"], df["Seq.-aligned"])]
        fig, axes = plt.subplots(1, len(score_cols), figsize=(2.8 * len(score_cols) + 2.2, 0.32 * len(df) + 1.9),
                                 sharey=True, squeeze=False)
        y = np.arange(len(df))[::-1]
        for ax, col in zip(axes[0], score_cols):
            vals = df[col].to_numpy(dtype=float)
            shown = np.where(np.isfinite(vals), vals, np.nan)  # "not evaluable" (inf) rows stay empty
            err = np.where(seeds > 1, df[f"{col} std"].to_numpy(dtype=float), np.nan) if any_spread else None
            ax.barh(y, shown, xerr=err, color="tab:blue", alpha=0.8, error_kw={"elinewidth": 1, "capsize": 2})
            stage, split = col_stage.get(col, (None, None))
            notes = ["axis from 0"]
            if stage in chance:
                level, what = chance[stage]
                ax.axvline(level, color="black", linestyle="--", linewidth=0.9)
                notes.append(f"dashed: {what}")
            maj = majority.get((stage, split or "val"))
            if maj is not None:
                ax.axvline(maj, color="tab:red", linestyle=":", linewidth=1.1)
                notes.append("dotted: majority class")
            lo = min(0.0, float(np.nanmin(shown))) if np.isfinite(shown).any() else 0.0  # MCC can be < 0
            ax.set_xlim(left=lo)
            ax.set_title(col, fontsize=9)
            ax.set_xlabel("percent\n" + "\n".join(notes), fontsize=7)
            ax.tick_params(axis="x", labelsize=8)
        axes[0][0].set_yticks(y, labels, fontsize=8)
        spread = "error bar: seed standard deviation (rows with several seeds)" if any_spread else "one seed per row"
        fig.suptitle(f"Mean over seeds; {spread}" + flag, fontsize=10)
        fig.tight_layout()
        p = plot_dir / "scores.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        written.append(p)

    sa_rows = df[df["Seq.-aligned"] & df["Δ SA−fixed"].notna()]
    if sa_rows.empty:  # no class with both parameterizations: nothing to compare
        return written
    written.append(_plot_sa_vs_fixed(df, plot_dir, flag))
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(sa_rows))
    has_paper = "Paper Δ" in df.columns
    w = 0.4 if has_paper else 0.6
    ours = f"ours (Avg of {', '.join(df.attrs['average_of'])})" if df.attrs["average_of"] else "ours"
    ax.bar(x - (w / 2 if has_paper else 0), sa_rows["Δ SA−fixed"], width=w, label=ours)
    if has_paper:
        ax.bar(x + w / 2, sa_rows["Paper Δ"], width=w, label=f"paper ({df.attrs['reference']}: GLUE avg)")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, sa_rows["Structure"], rotation=30, ha="right")
    ax.set_ylabel("Avg(sequence-aligned) − Avg(fixed), points")
    ax.set_title("Effect of sequence alignment per structured class" + flag, fontsize=10)
    ax.legend()
    fig.tight_layout()
    p = plot_dir / "delta.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    written.append(p)
    return written


def _plot_sa_vs_fixed(df: pd.DataFrame, plot_dir: Path, flag: str) -> Path:
    """``plots/sa_vs_fixed.png``: per class with both parameterizations, the fixed and the sequence-aligned
    mean side by side with seed-std error bars, one panel per ranked column (:func:`ranked_columns`), so a
    difference can be read against the spread of the two rows it comes from."""
    import matplotlib.pyplot as plt

    aligned = df["Seq.-aligned"].astype(bool)
    classes = [m for m in dict.fromkeys(df.mixer) if (aligned & (df.mixer == m)).any() and (~aligned & (df.mixer == m)).any()]
    cols = ranked_columns(df)
    ncols = min(3, len(cols))
    nrows = -(-len(cols) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(0.75 * len(classes) * ncols + 2.5, 3.2 * nrows + 0.9),
                             squeeze=False)
    x = np.arange(len(classes))
    for ax, meta in zip(axes.flat, cols):
        col = meta["column"]
        for k, (sa, name, colour) in enumerate(((False, "fixed", "tab:gray"), (True, "sequence-aligned", "tab:blue"))):
            rows = [df[(df.mixer == m) & (aligned == sa)].iloc[0] for m in classes]
            vals = np.array([float(r[col]) for r in rows])
            std = np.array([float(r.get(f"{col} std", np.nan)) for r in rows])
            # points on an axis fitted to the data, not bars from 0: the differences are often far smaller
            # than the values; a not-evaluable cell (inf: no matrix at another length) gets no point
            ax.errorbar(x + (k - 0.5) * 0.3, np.where(np.isfinite(vals), vals, np.nan),
                        yerr=np.where(np.isfinite(std), std, np.nan), fmt="o" if not sa else "s", color=colour,
                        markersize=5, capsize=3, elinewidth=1, linestyle="none", label=name)
        ax.set_xticks(x, [DISPLAY.get(m, m) for m in classes], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{col} ({'higher' if meta['higher_is_better'] else 'lower'} is better)", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)  # covers no point
    fig.suptitle("Fixed vs sequence-aligned per class (mean over seeds; error bar: seed standard deviation; "
                 "axes fitted to the data)" + flag, fontsize=10)
    fig.tight_layout()
    p = plot_dir / "sa_vs_fixed.png"
    fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return p
