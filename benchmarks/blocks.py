"""Speed and memory of the full mixer block (forward + backward) for every mixer and parameterization.

    python -m benchmarks.blocks --device cuda --out results/bench [--quick]   # or: mixerzoo bench blocks

For each mixer in ``mixers.names()`` and each parameterization it supports, a
``mixers.MatrixMixerBlock(d_model, mixer, sequence_aligned, max_seq_len=L, headdim, qk_dim)`` is built
(float32 parameters; on CUDA the step runs under bf16 autocast, as in training) and, for every L, the
median wall time of ``block(u).float().square().mean().backward()`` on ``u`` of shape ``(B, L, d_model)``
is measured after one warm-up call (at least 3 repeats, more while the total stays under ~1 s, at most
10). CUDA: peak bytes allocated during one step over the baseline (``torch.cuda.max_memory_allocated``);
CPU: peak memory is not measured (``null``). Once one step of a (mixer, parameterization) takes longer
than ``STEP_TIME_LIMIT_S``, longer L are skipped for it (listed under ``skipped``). Fitted log-log
slopes of time in L (over the measured L >= 512) summarize the scaling.

Outputs in ``--out``: ``blocks-<device>[-quick].json`` (device, versions, argv, configuration, results)
and ``blocks-<device>[-quick].png`` (time vs L, one line per mixer, solid = sequence-aligned).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from ablations.trainer import atomic_write_text
from benchmarks import parse_device

DEFAULT_LENGTHS = (128, 256, 512, 1024, 2048, 4096)
QUICK_LENGTHS = (64, 128, 256)
STEP_TIME_LIMIT_S = 10.0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(block, u, ctx):
    with ctx():
        y = block(u)
    y.float().square().mean().backward()


def measure(mixer: str, sequence_aligned: bool, length: int, device: torch.device, batch: int, d_model: int,
            headdim: int, qk_dim: int) -> dict:
    """Median time (s) of one forward + backward step and its CUDA peak bytes (None on the CPU)."""
    import mixers
    torch.manual_seed(0)
    block = mixers.MatrixMixerBlock(d_model=d_model, mixer=mixer, sequence_aligned=sequence_aligned,
                                    max_seq_len=length, headdim=headdim, qk_dim=qk_dim).to(device)
    u = torch.randn(batch, length, d_model, device=device, requires_grad=True)
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    _step(block, u, ctx)  # warm-up (Triton compilation, allocator)
    _sync(device)
    times = []
    while len(times) < 3 or (sum(times) < 1.0 and len(times) < 10):
        t0 = time.perf_counter()
        _step(block, u, ctx)
        _sync(device)
        times.append(time.perf_counter() - t0)
        if times[-1] > STEP_TIME_LIMIT_S:
            break
    peak = None
    if device.type == "cuda":
        block.zero_grad(set_to_none=True)
        u.grad = None
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        _step(block, u, ctx)
        _sync(device)
        peak = int(torch.cuda.max_memory_allocated(device) - base)
    return {"mixer": mixer, "sequence_aligned": sequence_aligned, "L": length, "time_s": statistics.median(times),
            "repeats": len(times), "peak_bytes": peak}


def _slope(rows):
    pts = [(r["L"], r["time_s"]) for r in rows if r["L"] >= 512]
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def run(device: torch.device, lengths, batch: int, d_model: int, headdim: int, qk_dim: int, only=None,
        progress=True) -> dict:
    import mixers
    table = mixers.names()
    combos = [(m, p == "sequence_aligned") for m in sorted(table) for p in table[m]
              if only is None or m in only]
    results, skipped = [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(combos) * len(lengths), desc="blocks", unit="case")
    for mixer, sa in combos:
        too_slow = False
        for L in lengths:
            if too_slow:
                skipped.append({"mixer": mixer, "sequence_aligned": sa, "L": L, "reason": "previous L too slow"})
            else:
                try:
                    r = measure(mixer, sa, L, device, batch, d_model, headdim, qk_dim)
                    results.append(r)
                    too_slow = r["time_s"] > STEP_TIME_LIMIT_S
                except torch.OutOfMemoryError:
                    skipped.append({"mixer": mixer, "sequence_aligned": sa, "L": L, "reason": "out of memory"})
                    too_slow = True
                    torch.cuda.empty_cache()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    summary = {}
    for mixer, sa in combos:
        rows = [r for r in results if r["mixer"] == mixer and r["sequence_aligned"] == sa]
        summary[f"{mixer}/{'sa' if sa else 'fixed'}"] = {"time_slope_in_L": _slope(rows)}
    return {"results": results, "skipped": skipped, "scaling": summary}


def _plot(data, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    keys = sorted({(r["mixer"], r["sequence_aligned"]) for r in data["results"]})
    names = sorted({k[0] for k in keys})
    cmap = plt.get_cmap("tab20")
    for mixer, sa in keys:
        rows = sorted((r for r in data["results"] if r["mixer"] == mixer and r["sequence_aligned"] == sa),
                      key=lambda r: r["L"])
        ax.loglog([r["L"] for r in rows], [r["time_s"] for r in rows], "-" if sa else "--", marker=".",
                  color=cmap(names.index(mixer) % 20), label=f"{mixer} ({'SA' if sa else 'fixed'})")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("forward + backward time (s)")
    ax.set_title(f"Mixer block step time ({data['device']})")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="mixerzoo bench blocks", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:k] (default cpu)")
    ap.add_argument("--out", default="results/bench", help="output folder (default results/bench)")
    ap.add_argument("--quick", action="store_true", help=f"L in {QUICK_LENGTHS}, small blocks (smoke test)")
    ap.add_argument("--lengths", default=None, help="comma-separated L (overrides the defaults)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 8; quick 2)")
    ap.add_argument("--d-model", type=int, default=None, help="d_model (default 256; quick 32)")
    ap.add_argument("--mixers", default=None, help="comma-separated subset of mixers.names()")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    device = parse_device(args.device, ap.error)
    try:
        lengths = tuple(int(x) for x in args.lengths.split(",")) if args.lengths else \
            (QUICK_LENGTHS if args.quick else DEFAULT_LENGTHS)
    except ValueError:
        ap.error(f"--lengths must be comma-separated positive ints, got {args.lengths!r}")
    if any(L < 1 for L in lengths):
        ap.error(f"--lengths must be positive, got {lengths}")
    import mixers
    only = None
    if args.mixers:
        only = args.mixers.split(",")
        unknown = [m for m in only if m not in mixers.names()]
        if unknown:
            ap.error(f"--mixers: unknown mixer(s) {unknown}; registered: {', '.join(sorted(mixers.names()))}")
    for flag, value in (("--batch", args.batch), ("--d-model", args.d_model)):
        if value is not None and value < 1:
            ap.error(f"{flag} must be a positive integer, got {value}")
    batch = args.batch if args.batch is not None else (2 if args.quick else 8)
    d_model = args.d_model if args.d_model is not None else (32 if args.quick else 256)
    headdim, qk_dim = (16, 8) if args.quick else (64, 16)
    data = run(device, lengths, batch, d_model, headdim, qk_dim, only=only, progress=not args.no_progress)
    data.update({
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "argv": sys.argv, "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "config": {"lengths": list(lengths), "batch": batch, "d_model": d_model, "headdim": headdim,
                   "qk_dim": qk_dim, "autocast": "bf16" if device.type == "cuda" else None,
                   "step_time_limit_s": STEP_TIME_LIMIT_S}})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"blocks-{device.type}{'-quick' if args.quick else ''}"
    atomic_write_text(out / f"{stem}.json", json.dumps(data, indent=2) + "\n")
    _plot(data, out / f"{stem}.png")
    for key, s in data["scaling"].items():
        rows = [r for r in data["results"] if f"{r['mixer']}/{'sa' if r['sequence_aligned'] else 'fixed'}" == key]
        last = max(rows, key=lambda r: r["L"]) if rows else None
        slope = f"{s['time_slope_in_L']:.2f}" if s["time_slope_in_L"] is not None else "-"
        print(f"{key:28s} slope {slope:>5s}" + (f"  L={last['L']}: {last['time_s'] * 1e3:.1f} ms" if last else ""))
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
