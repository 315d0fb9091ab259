"""Ranking evidence under a report's table: does our order of the rows carry the paper's conclusions?

Built from the DataFrame of :func:`ablations.report.build_table` (per row the mean over seeds and the seed
standard deviation, ``<column> std``), for every metric column that has values. A loss column ranks ascending,
every other column as its stage records (``higher_is_better``); ``df.attrs["metric_columns"]`` carries the
direction, so no metric or mixer is special-cased here.

- **Spearman** rho, p and the number of rows against the paper's averages (``Paper Avg``), where the runs
  name a reference table. Every column enters oriented so that larger is better (a loss negated): rho > 0
  means our order agrees with the paper's.
- **SA − fixed** per structured class: the sequence-aligned mean minus the fixed mean, in the column's unit.
  SA *helps* where the difference points the better way (up for a score, down for a loss). A class counts
  only where both of its rows have a finite value (a fixed row that cannot be evaluated at another length
  does not count). The *combined seed spread* is sqrt(s_fixed² + s_SA²), the standard deviation of the
  difference of one seed of each row; a delta larger than it is *beyond the spread*.
- **Top rows**: the four best rows by mean, their seed std and the gaps between consecutive ones. Verdict
  *separated* iff every gap is larger than the larger of the two adjacent rows' stds, *not separated*
  otherwise, *undetermined* where one of those rows has fewer than two seeds (no spread to compare with) or
  fewer than two rows have values.
- **Ordering**: every row, best first. A row is *tied-best* iff its distance to the best mean is at most the
  larger of the two rows' stds (within one seed std; a row of one seed has no spread, so only an equal mean
  ties it). The focus rows (by default the paper's Hydra: mixer ``hydra``, and the sequence-aligned
  ``quasiseparable`` row, which is Hydra in the paper's Table 2) get their rank and whether they are best or
  tied-best.

Cells that are +inf in the table (not evaluable) or NaN (missing) take part in none of these.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .report import DISPLAY, _caveats, ranked_columns, spearman
from .trainer import atomic_write_text

TOP = 4
DEFAULT_FOCUS = "hydra,quasiseparable:sa"
FOCUS_FORMS = "comma-separated MIXER, MIXER:sa or MIXER:fixed"
SEPARATED, NOT_SEPARATED, UNDETERMINED = "separated", "not separated", "undetermined"


# ----------------------------------------------------------------------------------------- helpers
def _label(df: pd.DataFrame, i) -> str:
    # The parameterization is named only where the rows differ in it (Table 3's rows are all aligned).
    if df["Seq.-aligned"].nunique() < 2:
        return str(df.loc[i, "Structure"])
    return f"{df.loc[i, 'Structure']} ({'SA' if df.loc[i, 'Seq.-aligned'] else 'fixed'})"


def _num(v) -> float | None:
    """A JSON-safe number: NaN and inf (missing, not evaluable) become null."""
    return float(v) if v is not None and math.isfinite(v) else None


def _fmt(v, col: str, signed: bool = False) -> str:
    # Losses differ in the third decimal between close rows; scores (percent) in the second.
    if v is None or not math.isfinite(v):
        return "–"
    digits = 3 if "loss" in col else 2
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def parse_focus(spec: str, df: pd.DataFrame, strict: bool = True) -> list:
    """The table rows named by ``spec`` (:data:`FOCUS_FORMS`). ``strict``: an entry that names no row of
    ``df`` is an error (a user's choice); otherwise it is skipped (the default names rows a grid may lack)."""
    rows = []
    for item in (s.strip() for s in str(spec).split(",")):
        mixer, _, which = item.partition(":")
        if not mixer or which not in ("", "sa", "fixed"):
            raise ValueError(f"focus {item!r} is not a row name; allowed: {FOCUS_FORMS}")
        hit = [i for i in df.index if df.loc[i, "mixer"] == mixer
               and (not which or bool(df.loc[i, "Seq.-aligned"]) == (which == "sa"))]
        if not hit and strict:
            have = ", ".join(f"{m}:{'sa' if sa else 'fixed'}" for m, sa in zip(df.mixer, df["Seq.-aligned"]))
            raise ValueError(f"focus {item!r} names no row of these runs; allowed: {have}")
        rows += [i for i in hit if i not in rows]
    return rows


# ----------------------------------------------------------------------------------------- evidence
def _order(df, col: str, higher: bool) -> list:
    """Rows with a finite mean, best first; equal means keep the table's order."""
    vals = df[col].to_numpy(dtype=float)
    pos = {i: k for k, i in enumerate(df.index)}
    keep = [i for i, v in zip(df.index, vals) if math.isfinite(v)]
    return sorted(keep, key=lambda i: (-df.loc[i, col] if higher else df.loc[i, col], pos[i]))


def _std(df, col: str, i) -> float:
    s = df.loc[i, f"{col} std"] if f"{col} std" in df.columns else np.nan
    return float(s) if pd.notna(s) else np.nan


def _sa_vs_fixed(df, col: str, higher: bool) -> dict:
    classes = []
    for mixer in dict.fromkeys(df.mixer):
        fx = df.index[(df.mixer == mixer) & ~df["Seq.-aligned"].astype(bool)]
        sa = df.index[(df.mixer == mixer) & df["Seq.-aligned"].astype(bool)]
        if not len(fx) or not len(sa):
            continue
        f, s = fx[0], sa[0]
        mf, ms = float(df.loc[f, col]), float(df.loc[s, col])
        entry = {"mixer": mixer, "structure": df.loc[s, "Structure"], "fixed": _num(mf), "sa": _num(ms),
                 "fixed_std": _num(_std(df, col, f)), "sa_std": _num(_std(df, col, s)),
                 "counted": math.isfinite(mf) and math.isfinite(ms)}
        if entry["counted"]:
            delta = ms - mf
            spread = math.hypot(_std(df, col, f), _std(df, col, s))
            entry.update(delta=delta, sa_helps=bool(delta > 0 if higher else delta < 0),
                         spread=_num(spread), beyond_spread=bool(abs(delta) > spread) if math.isfinite(spread)
                         else None)
        else:
            entry["why_not_counted"] = "not evaluable" if np.isinf([mf, ms]).any() else "missing"
        classes.append(entry)
    counted = [c for c in classes if c["counted"]]
    return {"classes": classes, "n": len(counted), "sa_helps": sum(c["sa_helps"] for c in counted),
            "helps_beyond_spread": sum(bool(c["sa_helps"] and c["beyond_spread"]) for c in counted),
            "spread_known": all(c["beyond_spread"] is not None for c in counted)}


def _top_rows(df, col: str, order: list) -> dict:
    top = order[:TOP]
    means = [float(df.loc[i, col]) for i in top]
    stds = [_std(df, col, i) for i in top]
    gaps = [abs(a - b) for a, b in zip(means, means[1:])]
    rows = [{"row": _label(df, i), "mean": _num(m), "std": _num(s)} for i, m, s in zip(top, means, stds)]
    if len(top) < 2:
        verdict, why = UNDETERMINED, f"{len(top)} row(s) with values"
    elif not all(math.isfinite(s) for s in stds):
        one = [r["row"] for r in rows if r["std"] is None]
        verdict, why = UNDETERMINED, f"fewer than 2 seeds: {', '.join(one)}"
    else:
        bad = [(k, g, max(stds[k], stds[k + 1])) for k, g in enumerate(gaps) if not g > max(stds[k], stds[k + 1])]
        if bad:
            k, g, s = bad[0]
            verdict = NOT_SEPARATED
            why = f"gap {k + 1}→{k + 2} is {_fmt(g, col)} ≤ std {_fmt(s, col)}" + (
                f"; {len(bad) - 1} more such gap(s)" if len(bad) > 1 else "")
        else:
            verdict, why = SEPARATED, "every gap exceeds the larger adjacent std"
    return {"rows": rows, "gaps": [_num(g) for g in gaps], "verdict": verdict, "reason": why}


def _ordering(df, col: str, order: list, focus: list) -> dict:
    if not order:
        return {"rows": [], "tied_best": [], "spread_known": False, "focus": {}}
    best = order[0]
    b_std = _std(df, col, best)

    def tied(i) -> bool:
        # within one seed std of the best: the larger of the two rows' stds (a missing std counts as 0)
        d = abs(float(df.loc[best, col]) - float(df.loc[i, col]))
        return bool(d <= np.nanmax([_std(df, col, i), b_std, 0.0]))

    ties = [i for i in order if tied(i)]
    focus_out = {}
    for i in focus:
        if i in order:
            focus_out[_label(df, i)] = {"rank": order.index(i) + 1, "of": len(order), "best": i == best,
                                        "tied_best": i in ties}
        else:
            focus_out[_label(df, i)] = {"rank": None, "of": len(order), "best": False, "tied_best": False}
    return {"rows": [{"row": _label(df, i), "mean": _num(df.loc[i, col]), "std": _num(_std(df, col, i))}
                     for i in order],
            "tied_best": [_label(df, i) for i in ties],
            "spread_known": all(math.isfinite(_std(df, col, i)) for i in order),
            "not_evaluable": [_label(df, i) for i in df.index if np.isinf(float(df.loc[i, col]))],
            "focus": focus_out}


def build_ranking(df: pd.DataFrame, focus: str | None = None) -> dict:
    """The ranking evidence of a report table (see the module docstring), as plain JSON-able data.

    ``focus``: the rows whose rank the ordering reports (:data:`FOCUS_FORMS`); default
    :data:`DEFAULT_FOCUS`, whose entries absent from ``df`` are skipped."""
    focus_rows = parse_focus(DEFAULT_FOCUS if focus is None else focus, df, strict=focus is not None)
    has_values = ranked_columns(df)
    empty = [m["column"] for m in df.attrs.get("metric_columns", []) if m["column"] != "Avg" and m not in has_values]
    paper = "Paper Avg" in df.columns
    out = {"reference": df.attrs.get("reference"), "paper_numbers": paper, "scales": df.attrs.get("scales", []),
           "caveats": _caveats(df), "top": TOP, "focus": [_label(df, i) for i in focus_rows],
           "columns": [{"column": m["column"], "higher_is_better": m["higher_is_better"]} for m in has_values],
           "empty_columns": empty,
           "spearman": {}, "sa_vs_fixed": {}, "top_rows": {}, "ordering": {}}
    for m in has_values:
        col, higher = m["column"], m["higher_is_better"]
        order = _order(df, col, higher)
        if paper:
            vals = df[col].to_numpy(dtype=float)
            out["spearman"][col] = spearman(vals if higher else -vals, df["Paper Avg"])
        out["sa_vs_fixed"][col] = _sa_vs_fixed(df, col, higher)
        out["top_rows"][col] = _top_rows(df, col, order)
        out["ordering"][col] = _ordering(df, col, order, focus_rows)
    if paper:
        ref = df.set_index(["mixer", "Seq.-aligned"])["Paper Avg"]
        classes = [m for m in dict.fromkeys(df.mixer)
                   if math.isfinite(ref.get((m, True), np.nan)) and math.isfinite(ref.get((m, False), np.nan))]
        deltas = {DISPLAY.get(m, m): float(ref[(m, True)] - ref[(m, False)]) for m in classes}
        out["paper_sa_vs_fixed"] = {"deltas": deltas, "n": len(deltas), "sa_helps": sum(d > 0 for d in deltas.values())}
    return out


# ----------------------------------------------------------------------------------------- output
def _table(header: list[str], rows: list[list[str]], numeric: int = 1) -> str:
    """A Markdown table whose columns from index ``numeric`` on are right-aligned (numbers)."""
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "|".join(
        "---" if k < numeric else "---:" for k in range(len(header))) + "|"]
        + ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows])


def _direction(rk: dict, col: str) -> str:
    higher = next(c["higher_is_better"] for c in rk["columns"] if c["column"] == col)
    return "higher is better" if higher else "lower is better"


def format_ranking(rk: dict) -> str:
    """The ranking evidence as Markdown: one subsection each for Spearman, SA − fixed, top rows, ordering."""
    cols = [c["column"] for c in rk["columns"]]
    out = ["## Ranking evidence", *rk["caveats"],
           "Loss columns rank ascending, every other column descending; ± is the seed standard deviation."]
    if rk["empty_columns"]:
        out.append(f"Columns without values (left out): {', '.join(rk['empty_columns'])}.")

    out.append(f"### Spearman against the paper's {rk['reference']} averages" if rk["paper_numbers"]
               else "### Spearman against the paper")
    if rk["paper_numbers"]:
        rows = [[c, *((f"{sp['rho']:+.3f}", f"{sp['p']:.3g}", str(sp["n"])) if (sp := rk["spearman"][c])
                      else ("–", "–", "undefined: < 3 rows or constant"))] for c in cols]
        out += [_table(["Column", "rho", "p", "n rows"], rows),
                "A loss column enters negated, so rho > 0 means the paper's order in every column."]
    else:
        out.append("The paper's numbers for these rows are not bundled (ablations/reference/ holds Table 2's "
                   "GLUE averages; these runs name no reference, or several), so only our own order is reported.")

    out.append("### Sequence alignment: SA − fixed per class")
    classes = list(dict.fromkeys(c["structure"] for col in cols for c in rk["sa_vs_fixed"][col]["classes"]))
    if not classes:
        out.append("No structured class has both a fixed and a sequence-aligned row.")
    else:
        paper = rk.get("paper_sa_vs_fixed")
        rows = []
        for name in classes:
            cells = [name]
            for col in cols:
                c = next((c for c in rk["sa_vs_fixed"][col]["classes"] if c["structure"] == name), None)
                if c is None or not c["counted"]:
                    cells.append("n/e" if c and c["why_not_counted"] == "not evaluable" else "–")
                    continue
                spread = f" (±{_fmt(c['spread'], col)})" if c["spread"] is not None else ""
                mark = ("✓" if c["sa_helps"] else "✗") + ("*" if c["beyond_spread"] else "")
                cells.append(f"{_fmt(c['delta'], col, signed=True)}{spread} {mark}")
            if paper:
                cells.append(f"{paper['deltas'][name]:+.1f}" if name in paper["deltas"] else "–")
            rows.append(cells)
        total = ["**SA helps**"]
        for col in cols:
            s = rk["sa_vs_fixed"][col]
            total.append("–" if not s["n"] else f"{s['sa_helps']}/{s['n']}" + (
                f", {s['helps_beyond_spread']} beyond spread" if s["spread_known"] else ""))
        if paper:
            total.append(f"{paper['sa_helps']}/{paper['n']}")
        out += [_table(["Class", *cols] + (["Paper GLUE Δ"] if paper else []), rows + [total]),
                "SA mean minus fixed mean, in the column's unit; (±x): combined seed spread sqrt(s_fixed² + s_SA²); "
                "✓ SA better (✗ worse) in the column's direction; * the delta exceeds the combined spread; "
                "n/e: a row not evaluable there (the class does not count)."]

    out.append(f"### Top {rk['top']} rows per column")
    rows = []
    for col in cols:
        t = rk["top_rows"][col]
        ranked = [f"{r['row']} {_fmt(r['mean'], col)}" + (f" ± {_fmt(r['std'], col)}" if r["std"] is not None
                                                              else "") for r in t["rows"]]
        rows.append([col, "; ".join(ranked), ", ".join(_fmt(g, col) for g in t["gaps"]),
                     f"{t['verdict']} ({t['reason']})"])
    out += [_table(["Column", "Best first", "Gaps", "Verdict"], rows, numeric=4),
            f"Separated: every gap between consecutive rows of the top {rk['top']} exceeds the larger of the two "
            f"rows' seed stds."]

    out.append("### Ordering of all rows")
    rows = []
    for col in cols:
        o = rk["ordering"][col]
        ranked = " > ".join(f"{r['row']} {_fmt(r['mean'], col)}" for r in o["rows"])
        cells = [f"{col} ({_direction(rk, col)})", ranked, ", ".join(o["tied_best"])
                 + ("" if o["spread_known"] else " (a row has one seed: no spread)")]
        for name in rk["focus"]:
            f = o["focus"].get(name)
            cells.append("no value" if not f or f["rank"] is None else
                         f"{f['rank']}/{f['of']}, " + ("best" if f["best"] else "tied-best" if f["tied_best"]
                                                      else "not best"))
        rows.append(cells)
    out += [_table(["Column", "Best first", "Best or tied-best", *rk["focus"]], rows, numeric=4),
            "Tied-best: within one seed std of the best (the larger of the two rows' stds)."
            + (f" Focus rows: {', '.join(rk['focus'])}." if rk["focus"] else " No focus row in these runs.")]
    return "\n\n".join(out)


def write_ranking(rk: dict, out_dir) -> list[Path]:
    """Write ``ranking.md`` and ``ranking.json`` into ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "ranking.md", format_ranking(rk) + "\n")
    atomic_write_text(out_dir / "ranking.json", json.dumps(rk, indent=1, allow_nan=False) + "\n")
    return [out_dir / "ranking.md", out_dir / "ranking.json"]
