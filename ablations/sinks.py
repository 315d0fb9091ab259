"""Where results go besides the wide table: a tidy long-format CSV of every final metric
(``results_long.csv``) and, optionally, TensorBoard event files of every logged training and evaluation
row (``--tensorboard DIR``; needs the ``tensorboard`` package, imported only then)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

LONG_COLUMNS = ("run", "mixer", "parameterization", "seed", "stage", "split", "metric", "value")
LONG_NAME = "results_long.csv"


def long_rows(summaries: list[dict]) -> list[dict]:
    """One row per (run, stage, split, metric) with a numeric final value, in run and stage order.
    ``parameterization``: ``sequence_aligned`` or ``fixed``; ``split``: the evaluation split (``val``, ``test``,
    ``val_2x``, ...)."""
    rows = []
    for s in sorted(summaries, key=lambda s: s.get("run_id", "")):
        base = {"run": s.get("run_id"), "mixer": s.get("mixer"),
                "parameterization": "sequence_aligned" if s.get("sequence_aligned") else "fixed",
                "seed": s.get("seed")}
        for stage, info in (s.get("stages") or {}).items():
            metrics = info.get("metrics") or {}
            for split, values in metrics.items():
                if not isinstance(values, dict):
                    continue
                for metric, value in values.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        rows.append({**base, "stage": stage, "split": split, "metric": metric, "value": value})
    return rows


def write_long(out_dir, run_ids=None) -> Path:
    """Write ``<out_dir>/results_long.csv`` (columns ``LONG_COLUMNS``) from the runs' summaries."""
    from .report import load_runs
    from .trainer import atomic_write_text
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LONG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(long_rows(load_runs(out_dir, run_ids)))
    path = Path(out_dir) / LONG_NAME
    atomic_write_text(path, buf.getvalue())
    return path


class TensorBoardMissing(RuntimeError):
    pass


def summary_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``, or TensorBoardMissing with a one-line reason."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise TensorBoardMissing(f"--tensorboard needs the 'tensorboard' package (pip install tensorboard): {e}") \
            from None
    return SummaryWriter


def write_tensorboard(out_dir, logdir, run_ids=None) -> list[Path]:
    """Event files ``<logdir>/<run id>/`` with every numeric field of each run's ``metrics.jsonl`` as a scalar:
    training rows as ``<stage>/train/<field>``, evaluation rows as ``<stage>/<split>/<metric>``, at their
    step. Rewritten from scratch each time (a rerun's directory is replaced), so they match the logs."""
    import shutil
    SummaryWriter = summary_writer_class()
    written = []
    for metrics in sorted(Path(out_dir).glob("*/metrics.jsonl")):
        rid = metrics.parent.name
        if run_ids is not None and rid not in run_ids:
            continue
        target = Path(logdir) / rid
        if target.exists():
            shutil.rmtree(target)
        writer = SummaryWriter(log_dir=str(target))
        try:
            for line in metrics.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line of an interrupted run
                stage, step = rec.get("stage"), rec.get("step")
                if stage is None or not isinstance(step, int):
                    continue
                group = rec.get("split", "train")
                for key, value in rec.items():
                    if key in ("stage", "step", "split") or isinstance(value, bool):
                        continue
                    if isinstance(value, (int, float)):
                        writer.add_scalar(f"{stage}/{group}/{key}", value, step)
        finally:
            writer.close()
        written.append(target)
    return written
