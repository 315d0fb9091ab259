"""Speed and memory of explicit vs fast products for every registered structured class.

    python -m benchmarks.structured --device cpu --out results/bench [--threads 1]   # or: mixerzoo bench structured

For each class in ``structured.names()`` (instances from ``cls.random``, default orders) and each
L in 256, 512, ..., 16384, it times ``M.matmul(x)`` (fast) and ``M.matmul(x, method="explicit")``
(``to_dense() @ x``, materialization included) on x of shape (2, 4, L, 64), float32, under
``torch.no_grad()``: one warm-up call, then the median wall time and the median process CPU time (all
threads) of repeated calls (at least 3, more while the total stays under ~1 s, at most 10). CPU time is
the robust figure on a CPU shared with other processes (run with ``--threads 1`` there). The explicit
product runs only while one (2, 4, L, L) matrix fits the memory budget (2 GB, so up to L = 4096);
classes whose parameters are themselves an L x L tensor (``cls.materializes``, i.e. dense) are skipped
beyond it altogether. Once one call of a (class, method)
takes more than ``CALL_TIME_LIMIT_S`` (30 s), longer L are skipped for it. Skips are listed in the JSON.

Peak memory (``peak_bytes``) is the peak of the bytes *allocated by tensors during one call*, over and
above what existed before it (inputs and parameters excluded, output included):
* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the baseline;
* CPU: the allocation and free events of torch's CPU allocator recorded by ``torch.profiler``
  (``profile_memory=True``), replayed in time order; the maximum running sum is the peak.
  (tracemalloc does not see torch's allocator and ``ru_maxrss`` is a process-wide high-water mark.)
The memory call is separate from the timed calls (the profiler adds overhead). On a glibc CPU the run
first asks malloc to keep freed blocks (``mallopt``), so that timings measure the algorithms rather than
the page faults of fresh allocations; the setting is recorded in the JSON.

Outputs, in ``out``: ``structured-<device>[-quick].json`` (device, versions, command line, timestamp,
configuration, every timing, and per class the fitted scaling exponents of the fast path's time and
peak memory in L between 1024 and 16384 by least squares in log-log, and the speed-up at L = 4096)
and a log-log plot ``structured-<device>[-quick].png`` (time vs L, one line per class and method).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

import kernels
import structured
from benchmarks import parse_device

DEFAULT_LENGTHS = tuple(256 * 2 ** k for k in range(7))     # 256 ... 16384
QUICK_LENGTHS = (256, 512, 1024, 2048)
BATCH = (2, 4)
P_COLUMNS = 64
EXPLICIT_BUDGET_BYTES = 2_000_000_000
FIT_RANGE = (1024, 16384)
#: Once one call of a (class, method) takes longer than this, longer L are skipped (and listed as such).
CALL_TIME_LIMIT_S = 30.0
SPEEDUP_AT = 4096


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_call(fn, device, quick: bool) -> tuple[list[float], list[float]]:
    """Wall times and process CPU times of repeated calls after one warm-up call (the first call pays for
    lazy initialization / JIT)."""
    fn()
    _sync(device)
    wall: list[float] = []
    cpu: list[float] = []
    min_reps, max_reps, budget = (2, 3, 0.3) if quick else (3, 10, 1.0)
    while len(wall) < min_reps or (len(wall) < max_reps and sum(wall) < budget):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        _sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def _peak_bytes(fn, device) -> int:
    """Peak tensor bytes allocated during one call beyond the memory already in use (see module doc)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    return int(peak)


def fit_exponent(lengths, values, lo: int = FIT_RANGE[0], hi: int = FIT_RANGE[1]) -> float | None:
    """Least-squares slope of log(value) against log(L) over lo <= L <= hi (None with < 2 points)."""
    pts = [(math.log(L), math.log(v)) for L, v in zip(lengths, values) if lo <= L <= hi and v and v > 0]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def _versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    try:
        import triton
        out["triton"] = triton.__version__
    except Exception:  # triton is optional (no GPU build on some platforms)
        out["triton"] = None
    return out


def _keep_freed_memory() -> str:
    """On glibc, keep freed blocks in the heap (no mmap/munmap per large tensor) so repeated calls reuse
    memory like PyTorch's CUDA caching allocator does; otherwise every large temporary pays fresh page
    faults, a cost of the OS rather than of the algorithm. Returns what was set (recorded in the JSON)."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 2 ** 30) == 1 and libc.mallopt(m_trim_threshold, 2 ** 31 - 1) == 1
    except (OSError, AttributeError):
        ok = False
    return "glibc mallopt(M_MMAP_THRESHOLD=1 GiB, M_TRIM_THRESHOLD=2 GiB)" if ok else "system default"


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def run(device: str = "cpu", out: str = "results/bench", lengths=None, dtype: str = "float32",
        quick: bool = False, threads: int | None = None) -> str:
    """Run the benchmark and write ``structured-<device>[-quick].json`` and ``.png`` into ``out``.

    device: "cpu" or "cuda[:k]"; lengths: iterable of ints (default 256..16384, or 256..2048 with
    quick); dtype: "float32" | "float64" | "bfloat16" | "float16"; quick: fewer lengths and repeats
    (smoke test); threads: torch intra-op threads (default: torch's choice; 1 gives stable timings on
    a CPU shared with other processes). Returns the path of the JSON file.
    """
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        torch.set_num_threads(threads)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu' or 'cuda[:k]', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device must be available: got {device!r} but torch.cuda.is_available() is False")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:k]', got {device!r}")
    dtypes = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    tdtype = dtypes[dtype]
    lengths = tuple(QUICK_LENGTHS if quick else DEFAULT_LENGTHS) if lengths is None else tuple(lengths)
    if not lengths or any(isinstance(L, bool) or not isinstance(L, int) or L < 1 for L in lengths):
        raise ValueError(f"lengths must be positive ints, got {lengths!r}")
    itemsize = torch.empty((), dtype=tdtype).element_size()
    batch_size = math.prod(BATCH)

    cpu_malloc = _keep_freed_memory() if dev.type == "cpu" else None
    load_before = _loadavg()
    records, skipped = [], []
    gen = torch.Generator().manual_seed(0)
    for name in structured.names():
        cls = structured.get(name)
        too_slow: set[str] = set()
        for L in sorted(lengths):
            explicit_fits = batch_size * L * L * itemsize <= EXPLICIT_BUDGET_BYTES
            if cls.materializes and not explicit_fits:
                skipped.append({"class": name, "method": "both", "L": L, "reason": "parameters exceed memory budget"})
                continue
            todo = []
            for method in ("fast", "explicit"):
                if method == "explicit" and not explicit_fits:
                    skipped.append({"class": name, "method": method, "L": L, "reason": "L x L exceeds memory budget"})
                elif method in too_slow:
                    skipped.append({"class": name, "method": method, "L": L,
                                    "reason": f"a shorter L already took > {CALL_TIME_LIMIT_S} s per call"})
                else:
                    todo.append(method)
            if not todo:
                continue
            M = cls.random(L, batch_shape=BATCH, dtype=tdtype, device=dev, generator=gen)
            x = torch.randn(*BATCH, L, P_COLUMNS, generator=gen, dtype=torch.float64).to(dev, tdtype)
            for method in todo:

                def call(method=method):
                    with torch.no_grad():
                        return M.matmul(x, method=method)

                times, cpu_times = _time_call(call, dev, quick)
                peak = _peak_bytes(call, dev)
                rec = {"class": name, "method": method, "L": L, "median_s": statistics.median(times),
                       "median_cpu_s": statistics.median(cpu_times), "times_s": times, "cpu_times_s": cpu_times,
                       "peak_bytes": peak, "order": M.order}
                records.append(rec)
                if rec["median_s"] > CALL_TIME_LIMIT_S:
                    too_slow.add(method)
                print(f"{name:15s} {method:8s} L={L:6d} wall {rec['median_s'] * 1e3:10.3f} ms  "
                      f"cpu {rec['median_cpu_s'] * 1e3:10.3f} ms  peak {peak / 2 ** 20:9.1f} MiB", flush=True)
            del M, x
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    summary = {}
    for name in structured.names():
        fast = sorted((r for r in records if r["class"] == name and r["method"] == "fast"), key=lambda r: r["L"])
        expl = {r["L"]: r["median_s"] for r in records if r["class"] == name and r["method"] == "explicit"}
        fast_at = {r["L"]: r["median_s"] for r in fast}
        expl_cpu = {r["L"]: r["median_cpu_s"] for r in records if r["class"] == name and r["method"] == "explicit"}
        fast_cpu = {r["L"]: r["median_cpu_s"] for r in fast}
        summary[name] = {
            "time_exponent_fast": fit_exponent([r["L"] for r in fast], [r["median_s"] for r in fast]),
            "cpu_time_exponent_fast": fit_exponent([r["L"] for r in fast], [r["median_cpu_s"] for r in fast]),
            "memory_exponent_fast": fit_exponent([r["L"] for r in fast], [r["peak_bytes"] for r in fast]),
            f"speedup_at_{SPEEDUP_AT}": (expl[SPEEDUP_AT] / fast_at[SPEEDUP_AT]
                                          if SPEEDUP_AT in expl and SPEEDUP_AT in fast_at else None),
            f"cpu_time_speedup_at_{SPEEDUP_AT}": (expl_cpu[SPEEDUP_AT] / fast_cpu[SPEEDUP_AT]
                                                   if SPEEDUP_AT in expl_cpu and SPEEDUP_AT in fast_cpu else None),
            "approximate": bool(structured.get(name).approximate),
        }

    suffix = "-quick" if quick else ""
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"structured-{dev.type}{suffix}")
    result = {
        "benchmark": "structured",
        "device": _device_description(dev),
        "device_type": dev.type,
        "versions": _versions(),
        "command": " ".join(getattr(sys, "orig_argv", sys.argv)),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {"batch": list(BATCH), "P": P_COLUMNS, "dtype": dtype, "lengths": list(lengths),
                   "explicit_budget_bytes": EXPLICIT_BUDGET_BYTES, "fit_range": list(FIT_RANGE),
                   "call_time_limit_s": CALL_TIME_LIMIT_S, "cpu_malloc": cpu_malloc,
                   "quick": quick, "torch_threads": torch.get_num_threads(),
                   "kernels_mode": kernels.mode(), "triton_kernels_used": dev.type == "cuda" and kernels.mode() != "off"
                                                                         and kernels.triton_available(),
                   "peak_bytes": "tensor bytes allocated during one call beyond those before it "
                                 "(CUDA: max_memory_allocated; CPU: torch.profiler allocator events)",
                   "timing": "median wall time (median_s) and process CPU time, all threads (median_cpu_s), of "
                             "repeated calls after one warm-up, under no_grad"},
        # Other processes share a CPU: the load averages before and after the run say how much.
        "load_average": {"before": load_before, "after": _loadavg()},
        "summary": summary,
        "records": records,
        "skipped": skipped,
    }
    tmp = stem + ".json.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, stem + ".json")
    _plot(records, stem + ".png", title=f"structured products, {result['device']}, {dtype}, "
                                         f"batch {BATCH}, P={P_COLUMNS}")
    return stem + ".json"


def _plot(records, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["class"] for r in records})
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(8, 6))
    for k, name in enumerate(names):
        for method, style in (("fast", "-"), ("explicit", "--")):
            pts = sorted((r["L"], r["median_s"]) for r in records if r["class"] == name and r["method"] == method)
            if pts:
                ax.loglog(*zip(*pts), style, marker="o", ms=3, color=colors(k % 10), label=f"{name} ({method})")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("median time per product (s)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _lengths_arg(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lengths must be comma-separated positive ints, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"--lengths must be comma-separated positive ints, got {text!r}")
    return vals


def main(argv=None) -> str:
    """Command line: ``--device cpu|cuda``, ``--out DIR``, ``--lengths 256,512,...``, ``--dtype``, ``--quick``."""
    parser = argparse.ArgumentParser(prog="mixerzoo bench structured", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:k] (default cpu)")
    parser.add_argument("--out", default="results/bench", help="output folder (default results/bench)")
    parser.add_argument("--lengths", type=_lengths_arg, default=None,
                        help="comma-separated sequence lengths (default 256,512,...,16384)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    parser.add_argument("--quick", action="store_true", help="fewer lengths and repeats (smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    # argument errors are usage errors: `mixerzoo bench` prints them as one line and exits 2
    from ablations.cli import UsageError

    def usage(message):
        raise UsageError(message)

    parse_device(args.device, usage)
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be a positive integer, got {args.threads}")
    path = run(device=args.device, out=args.out, lengths=args.lengths, dtype=args.dtype, quick=args.quick,
               threads=args.threads)
    print(path)
    return path


if __name__ == "__main__":
    from ablations.cli import main as cli_main
    sys.exit(cli_main(["bench", "structured", *sys.argv[1:]]))
