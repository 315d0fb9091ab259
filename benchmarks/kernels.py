"""GPU benchmarks of the Triton scans (kernels/ssd.py) against their peers; then the matrix-free ones.

    python -m benchmarks.kernels --device cuda --out results/bench     # or: mixerzoo bench kernels ...

Shapes follow issue 5 (Hydra's quasiseparable mixer): batch 8, heads 24, headdim P = 64, d_state N = 64,
ngroups = 1 (one B, C per batch element shared by all heads, passed as an expanded view), bfloat16 inputs,
float32 decays and diagonal, L = 1024 ... 16384 (``--quick``: 1024 and 4096). Methods, each timed forward
and forward+backward (gradients for x, B, C, log_a, delta) with ``triton.testing.do_bench`` (median;
warm-up and repetitions in ms as below) on random inputs, plus the peak memory of one forward+backward
(``torch.cuda.max_memory_allocated`` after a reset, minus the inputs already allocated):

* ``qs_fused``: :func:`kernels.ssd.quasiseparable_matmul` (shift=True, shared B, C) -- this project's kernel;
* ``qs_paper``: the Hydra paper's arrangement of the same product: one causal SSD on the batch
  concatenation ``[x; flip(x)]`` (B, C, log_a concatenated likewise), then roll by one, flip the second
  half back, add, plus ``delta * x``. The causal SSD is ``mamba_ssm``'s ``mamba_chunk_scan_combined``
  when importable, else this project's causal kernel (:func:`kernels.ssd.semiseparable_matmul`);
  the JSON records which. Mamba's SSD scales each input column by its step (``y = M diag(dt) x``), so
  the mamba path passes ``x / dt`` to compute ``M x`` exactly (one extra elementwise pass);
* ``qs_torch``: ``structured``'s torch algorithm (``Quasiseparable.matmul`` with ``MIXERZOO_KERNELS=off``);
* ``ss_causal``: one causal SSD call (:func:`kernels.ssd.semiseparable_matmul`), the yardstick for
  "a bidirectional product within 2x of a causal scan";
* ``fla_simple_gla``: one causal call of ``fla``'s (``fla-core``, pure Triton) ``chunk_simple_gla`` with
  q = C, k = B (expanded over heads: fla has no shared-group layout), v = x, g = log_a, scale = 1: the same
  product as ``ss_causal``. Run only when ``fla`` is importable. fla refuses its gated backward on Hopper
  with Triton >= 3.4, < 3.7.1 (fla issue #640: wrong results); the row then carries the forward time only
  and the refusal in ``bwd_error``;
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (non-causal) with q = k = v shapes
  (B, H, L, 64).

The device's copy bandwidth (a 1 GiB device-to-device copy, bytes read + written) and bf16 matmul rate
(8192^3) are measured once; each result carries ``bound_ms`` = max(min bytes / bandwidth, flops / rate)
and ``fraction_of_bound`` = bound_ms / time. Outputs in ``out``: ``kernels-<device>[-quick].json`` and
``kernels-<device>[-quick].png`` (log-log time vs L, forward and forward+backward); the JSON's ``peers``
records which peers were importable and their versions (or why not); install them outside the repository
(their Triton sources and einops on ``PYTHONPATH``, e.g. ``PYTHONPATH=.:/path/to/peers python -m benchmarks.kernels ...``). Then, if
``benchmarks.kernels_matfree`` is importable, its ``run(device, out, quick)``.

``--only shapes``: the shape grid instead: ``qs_fused`` and ``qs_paper`` forward+backward at d_state N in
{64, 128, 192, 256} x headdim P in {64, 128} x (batch, L) in {(64, 512), (2, 16384)}, heads = 1536 / P (the
Table 2 model's width). ``kernels-<device>-shapes.{json,png}``; the JSON's ``summary`` gives each cell's
tokens/s, its fraction of the best cell and its speed-up over the paper's arrangement, and the worst of each.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import torch

B, H, P, N = 8, 24, 64, 64
LENGTHS = (1024, 2048, 4096, 8192, 16384)
QUICK_LENGTHS = (1024, 4096)
TORCH_PATH_MAX_L = 8192  # the torch algorithm is ~20x slower; longer L adds minutes and nothing new
WARMUP_MS, REP_MS = 25, 100


# -------------------------------------------------------------------------------------------- device
def measure_bounds(device) -> dict:
    """Copy bandwidth (bytes read + written per second) and bf16 matmul rate of this device."""
    from triton.testing import do_bench
    src = torch.empty(2 ** 28, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    t = do_bench(lambda: dst.copy_(src), warmup=WARMUP_MS, rep=REP_MS, return_mode="median")
    bw = 2 * src.numel() * 4 / (t * 1e-3)
    del src, dst
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    bm = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    t = do_bench(lambda: a @ bm, warmup=WARMUP_MS, rep=REP_MS, return_mode="median")
    rate = 2 * 8192 ** 3 / (t * 1e-3)
    del a, bm
    torch.cuda.empty_cache()
    return {"copy_bytes_per_s": bw, "bf16_matmul_flops_per_s": rate}


def _mamba_chunk_scan():
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        return mamba_chunk_scan_combined
    except Exception:
        return None


def _fla_simple_gla():
    try:
        from fla.ops.simple_gla import chunk_simple_gla
        return chunk_simple_gla
    except Exception:
        return None


# peer name -> (distribution, importable module whose failure is reported)
PEERS = {"mamba_ssm": ("mamba-ssm", "mamba_ssm.ops.triton.ssd_combined"),
         "fla": ("fla-core", "fla.ops.simple_gla")}


def peer_versions() -> dict:
    """For each peer: ``{"importable": True, "version": ...}`` or ``{"importable": False, "error": ...}``."""
    import importlib
    import importlib.metadata
    out = {}
    for name, (dist, module) in PEERS.items():
        try:
            importlib.import_module(module)
        except Exception as e:  # missing, or its own imports fail (compiled extensions, triton API)
            out[name] = dict(importable=False, error=f"{type(e).__name__}: {e}"[:300])
            continue
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = getattr(importlib.import_module(name), "__version__", "unknown")
        out[name] = dict(importable=True, version=version, path=os.path.dirname(
            importlib.import_module(name).__file__))
    return out


# -------------------------------------------------------------------------------------------- methods
def make_inputs(L, device, dtype=torch.bfloat16, seed=0, batch=B, heads=H, headdim=P, d_state=N):
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s, dt=dtype: torch.randn(*s, generator=g, device=device, dtype=torch.float32).to(dt)  # noqa
    x = r(batch, heads, L, headdim)
    b = r(batch, 1, L, d_state) / d_state ** 0.5
    c = r(batch, 1, L, d_state) / d_state ** 0.5
    log_a = -torch.rand(batch, heads, L, generator=g, device=device) * 0.1
    delta = r(batch, heads, L, dt=torch.float32)
    return dict(x=x, b=b, c=c, log_a=log_a, delta=delta)


def qs_fused(t):
    from kernels.ssd import quasiseparable_matmul
    b, c = t["b"], t["c"]  # (B, 1, L, N): broadcast over heads inside the kernel (ngroups = 1)
    return quasiseparable_matmul(t["x"], b, c, t["log_a"], t["delta"], b, c, t["log_a"], shift=True)


def ss_causal(t):
    from kernels.ssd import semiseparable_matmul
    return semiseparable_matmul(t["x"], t["b"], t["c"], t["log_a"])


def fla_simple_gla(t, chunk_simple_gla):
    """One causal product ``y = M x`` through fla's ``chunk_simple_gla`` (fla's layout: (batch, L, heads, dim);
    o_t = scale sum_{s<=t} (q_t . k_s) exp(G_t - G_s) v_s with G the cumulative sum of g: q = C, k = B,
    g = log_a, scale = 1 give ``m_ts = c_t . b_s exp(sum_{r=s+1..t} log_a_r)``, as ``ss_causal``)."""
    x, b, c, log_a = t["x"], t["b"], t["c"], t["log_a"]
    heads = x.shape[1]
    q = c.expand(-1, heads, -1, -1).transpose(1, 2)
    k = b.expand(-1, heads, -1, -1).transpose(1, 2)
    y, _ = chunk_simple_gla(q, k, x.transpose(1, 2), g=log_a.transpose(1, 2), scale=1.0)
    return y.transpose(1, 2)


def qs_paper(t, mamba=None):
    """Hydra's arrangement: causal SSD on [x; flip(x)], roll by one (row 0 zeroed), flip back, add, + delta x."""
    x, b, c, log_a, delta = t["x"], t["b"], t["c"], t["log_a"], t["delta"]
    x2 = torch.cat([x, x.flip(-2)], 0)
    b2 = torch.cat([b, b.flip(-2)], 0)
    c2 = torch.cat([c, c.flip(-2)], 0)
    la2 = torch.cat([log_a, log_a.flip(-1)], 0)
    if mamba is not None:
        # mamba's layout: x (batch, L, heads, P), dt (batch, L, heads), A (heads,), B/C (batch, L, groups, N).
        # Its product is y_t = sum_s C_t.B_s exp(A sum_{r=s+1..t} dt_r) dt_s x_s: A is per head only, so the
        # per-step decay goes into dt = -log_a with A = -1, and the dt_s x_s column scaling is undone by
        # passing x / dt. dt is floored at 1e-20 (log_a = 0 would divide by zero): the decays it changes
        # move by < 1e-20, below float32 resolution, and x / dt stays far inside bf16/fp32 range.
        # D, z, dt_bias, seq_idx: none; dt_softplus off; dt_limit (0, inf) leaves dt > 0 as is.
        dt2 = (-la2).clamp_min(1e-20)
        x2 = x2 / dt2[..., None].to(x2.dtype)
        y2 = mamba(x2.transpose(1, 2), dt2.transpose(1, 2), -torch.ones(x.shape[1], device=x.device),
                   b2.transpose(1, 2), c2.transpose(1, 2), chunk_size=256)
        y2 = y2.transpose(1, 2)
    else:
        from kernels.ssd import semiseparable_matmul
        y2 = semiseparable_matmul(x2, b2, c2, la2)
    y2 = torch.roll(y2, shifts=1, dims=-2)
    y2[..., 0, :] = 0
    yf, yb = y2[:x.shape[0]], y2[x.shape[0]:]
    return yf + yb.flip(-2) + delta[..., None].to(x.dtype) * x


def qs_torch(t):
    import kernels
    import structured
    with kernels.using("off"):
        M = structured.get("quasiseparable")(t["b"], t["c"], t["log_a"], t["delta"], shift=True,
                                             validate=False)
        return M.matmul(t["x"])


def sdpa(t):
    q = t["x"]
    return torch.nn.functional.scaled_dot_product_attention(q, t["k"], t["v"])


def _sdpa_inputs(t):
    t = dict(t)
    t["k"] = torch.randn_like(t["x"])
    t["v"] = torch.randn_like(t["x"])
    return t


# -------------------------------------------------------------------------------------------- costs
CAUSAL_METHODS = ("ss_causal", "fla_simple_gla")  # one direction; the rest compute the bidirectional product


def cost(method, L) -> tuple[float, float, float, float]:
    """(fwd bytes, fwd flops, fwd+bwd bytes, fwd+bwd flops): the fewest bytes (each input read once, each
    output written once) and the flops of the chunked algorithm (Q = 64) for the bidirectional product."""
    e = 2  # bf16
    xs = B * H * L * P * e
    bcs = 2 * B * L * N * e
    small = 2 * B * H * L * 4
    Q = 64
    chunks = B * H * L / Q
    if method == "sdpa":
        f = 4 * B * H * L * L * P
        return 4 * xs, f, 8 * xs, 3.5 * f
    per_dir = 2 * Q * Q * N + 4 * Q * N * P  # Gram + state in/out per chunk
    dirs = 1 if method in CAUSAL_METHODS else 2
    fwd_f = chunks * (dirs * per_dir + 2 * Q * Q * P)
    fwd_b = 2 * xs + bcs + small
    # backward: dx (same as fwd) + one pass per generator gradient and direction (same cost each)
    bwd_f = fwd_f + 2 * dirs * chunks * (per_dir + 2 * Q * Q * N)
    bwd_b = 3 * xs + 2 * bcs + 2 * small
    return fwd_b, fwd_f, fwd_b + bwd_b, fwd_f + bwd_f


# -------------------------------------------------------------------------------------------- runner
class BackwardRefused(Exception):
    """The method's backward raised (a peer refusing it on this device); carries the forward time."""

    def __init__(self, t_fwd, error):
        super().__init__(error)
        self.t_fwd, self.error = t_fwd, error


def bench_one(fn, t, grad_keys, do_bench):
    leaves = {k: v.detach().clone().requires_grad_(k in grad_keys) for k, v in t.items()}
    with torch.no_grad():
        t_fwd = do_bench(lambda: fn(leaves), warmup=WARMUP_MS, rep=REP_MS, return_mode="median")
    y = fn(leaves)
    dy = torch.randn_like(y)
    grads = [leaves[k] for k in grad_keys]
    try:  # one backward outside the timer: a peer that refuses it (fla on Hopper) still gets its forward row
        y.backward(dy)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:
        del y
        raise BackwardRefused(t_fwd, f"{type(e).__name__}: {e}"[:300]) from e
    del y

    def fwd_bwd():
        fn(leaves).backward(dy)

    t_fb = do_bench(fwd_bwd, warmup=WARMUP_MS, rep=REP_MS, grad_to_none=grads, return_mode="median")
    for gtensor in grads:
        gtensor.grad = None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fwd_bwd()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    for gtensor in grads:
        gtensor.grad = None
    return t_fwd, t_fb, peak


def run_scans(device, out, quick) -> dict:
    from triton.testing import do_bench
    import triton
    lengths = QUICK_LENGTHS if quick else LENGTHS
    bounds = measure_bounds(device)
    mamba = _mamba_chunk_scan()
    fla = _fla_simple_gla()
    peers = peer_versions()
    print(f"peers: {json.dumps(peers)}", flush=True)
    methods = {"qs_fused": qs_fused, "qs_paper": lambda t: qs_paper(t, mamba), "ss_causal": ss_causal,
               "qs_torch": qs_torch, "sdpa": sdpa}
    if fla is not None:
        methods["fla_simple_gla"] = lambda t: fla_simple_gla(t, fla)
    results = []
    for L in lengths:
        t = make_inputs(L, device)
        for name, fn in methods.items():
            if name == "qs_torch" and L > TORCH_PATH_MAX_L:
                continue
            tt = _sdpa_inputs(t) if name == "sdpa" else t
            keys = ("x", "k", "v") if name == "sdpa" else ("x", "b", "c", "log_a", "delta")
            try:
                t_fwd, t_fb, peak = bench_one(fn, tt, keys, do_bench)
            except torch.cuda.OutOfMemoryError as e:
                results.append(dict(method=name, L=L, error=f"out of memory: {e}"[:200]))
                torch.cuda.empty_cache()
                continue
            except BackwardRefused as e:
                fb, ff, _, _ = cost(name, L)
                bound_f = max(fb / bounds["copy_bytes_per_s"], ff / bounds["bf16_matmul_flops_per_s"]) * 1e3
                results.append(dict(method=name, L=L, fwd_ms=e.t_fwd, bound_fwd_ms=bound_f,
                                    fraction_of_bound_fwd=bound_f / e.t_fwd, bwd_error=e.error))
                print(f"L={L:6d} {name:10s} fwd {e.t_fwd:8.3f} ms  backward refused: {e.error}"[:300], flush=True)
                torch.cuda.empty_cache()
                continue
            fb, ff, fbb, fbf = cost(name, L)
            bound_f = max(fb / bounds["copy_bytes_per_s"], ff / bounds["bf16_matmul_flops_per_s"]) * 1e3
            bound_fb = max(fbb / bounds["copy_bytes_per_s"], fbf / bounds["bf16_matmul_flops_per_s"]) * 1e3
            row = dict(method=name, L=L, fwd_ms=t_fwd, fwd_bwd_ms=t_fb, peak_bytes_fwd_bwd=peak,
                       bound_fwd_ms=bound_f, bound_fwd_bwd_ms=bound_fb,
                       fraction_of_bound_fwd=bound_f / t_fwd, fraction_of_bound_fwd_bwd=bound_fb / t_fb)
            results.append(row)
            print(f"L={L:6d} {name:10s} fwd {t_fwd:8.3f} ms  fwd+bwd {t_fb:8.3f} ms  peak {peak / 2**30:6.2f} GiB"
                  f"  bound-frac {row['fraction_of_bound_fwd']:.2f}/{row['fraction_of_bound_fwd_bwd']:.2f}",
                  flush=True)
        del t
        torch.cuda.empty_cache()
    summary = {}
    for L in lengths:
        get = {r["method"]: r for r in results if r["L"] == L and "error" not in r}
        if "qs_fused" in get and "qs_paper" in get:
            f, p = get["qs_fused"], get["qs_paper"]
            summary[str(L)] = dict(speedup_fwd=p["fwd_ms"] / f["fwd_ms"],
                                   speedup_fwd_bwd=p["fwd_bwd_ms"] / f["fwd_bwd_ms"],
                                   peak_ratio=f["peak_bytes_fwd_bwd"] / p["peak_bytes_fwd_bwd"])
    tag = f"kernels-{device}{'-quick' if quick else ''}"
    doc = dict(benchmark="kernels (scans)", device=torch.cuda.get_device_name(device),
               torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
               command=" ".join(["python -m benchmarks.kernels"] + sys.argv[1:]),
               timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(),
               config=dict(batch=B, heads=H, headdim=P, d_state=N, ngroups=1, dtype="bfloat16",
                           shift=True, shared_bc=True, chunk=64, warmup_ms=WARMUP_MS, rep_ms=REP_MS,
                           timer="triton.testing.do_bench median"),
               paper_arrangement_scan="mamba_ssm.mamba_chunk_scan_combined" if mamba else
               "kernels.ssd.semiseparable_matmul (mamba_ssm not importable)",
               peers=peers,
               kernel_launch=dict(__import__("kernels.ssd").ssd.TUNING),
               bounds=bounds, results=results, summary_fused_vs_paper=summary)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, tag + ".json"), "w") as f:
        json.dump(doc, f, indent=1)
    _plot(results, os.path.join(out, tag + ".png"), doc["device"])
    print(json.dumps(summary, indent=1))
    return doc


# -------------------------------------------------------------------------------------------- shape grid
#: (d_state N, headdim P, batch, L) cells of the shape grid; heads = SHAPE_D_INNER // P (the Table 2 model's width)
SHAPE_GRID = tuple((n, p, b, L) for n in (64, 128, 192, 256) for p in (64, 128) for b, L in ((64, 512), (2, 16384)))
SHAPE_D_INNER = 1536


def shape_summary(rows) -> dict:
    """Per cell: tokens/s of the fused scan's forward+backward, its fraction of the best cell (the "no shape cliff"
    target: >= 0.5 everywhere) and its speed-up over the paper's arrangement (target: >= 3); plus the worst of each."""
    ok = [r for r in rows if r["method"] == "qs_fused" and "fwd_bwd_ms" in r]
    if not ok:
        return {}
    best = max(r["tokens_per_s"] for r in ok)
    paper = {(r["d_state"], r["headdim"], r["batch"], r["L"]): r for r in rows
             if r["method"] == "qs_paper" and "fwd_bwd_ms" in r}
    cells = []
    for r in ok:
        key = (r["d_state"], r["headdim"], r["batch"], r["L"])
        cell = dict(d_state=key[0], headdim=key[1], batch=key[2], L=key[3], tokens_per_s=r["tokens_per_s"],
                    fraction_of_best=r["tokens_per_s"] / best)
        if key in paper:
            cell["speedup_over_paper"] = paper[key]["fwd_bwd_ms"] / r["fwd_bwd_ms"]
        cells.append(cell)
    speedups = [c["speedup_over_paper"] for c in cells if "speedup_over_paper" in c]
    return dict(cells=cells, best_tokens_per_s=best, worst_fraction_of_best=min(c["fraction_of_best"] for c in cells),
                worst_speedup_over_paper=min(speedups) if speedups else None)


def run_shapes(device, out, grid=SHAPE_GRID) -> dict:
    """The fused scan's forward+backward across state sizes, head dims and (batch, L) at one token budget per L,
    beside the paper's arrangement (mamba_ssm when importable): ``kernels-<device>-shapes.{json,png}``."""
    from triton.testing import do_bench
    import triton
    mamba = _mamba_chunk_scan()
    methods = {"qs_fused": qs_fused, "qs_paper": lambda t: qs_paper(t, mamba)}
    rows = []
    for n, p, b, L in grid:
        heads = SHAPE_D_INNER // p
        t = make_inputs(L, device, batch=b, heads=heads, headdim=p, d_state=n)
        for name, fn in methods.items():
            base = dict(method=name, d_state=n, headdim=p, batch=b, heads=heads, L=L)
            try:
                t_fwd, t_fb, peak = bench_one(fn, t, ("x", "b", "c", "log_a", "delta"), do_bench)
            except (torch.cuda.OutOfMemoryError, BackwardRefused, ValueError) as e:
                rows.append(dict(base, error=f"{type(e).__name__}: {e}"[:300]))
                torch.cuda.empty_cache()
                continue
            rows.append(dict(base, fwd_ms=t_fwd, fwd_bwd_ms=t_fb, peak_bytes_fwd_bwd=peak,
                             tokens_per_s=b * L / (t_fb * 1e-3)))
            print(f"N={n:3d} P={p:3d} B={b:3d} L={L:6d} {name:9s} fwd+bwd {t_fb:8.3f} ms", flush=True)
        del t
        torch.cuda.empty_cache()
    summary = shape_summary(rows)
    doc = dict(benchmark="kernels (shape grid)", device=torch.cuda.get_device_name(device),
               torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
               command=" ".join(["python -m benchmarks.kernels"] + sys.argv[1:]),
               timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(),
               config=dict(d_inner=SHAPE_D_INNER, ngroups=1, dtype="bfloat16", shift=True, shared_bc=True,
                           warmup_ms=WARMUP_MS, rep_ms=REP_MS, timer="triton.testing.do_bench median"),
               paper_arrangement_scan="mamba_ssm.mamba_chunk_scan_combined" if mamba else
               "kernels.ssd.semiseparable_matmul (mamba_ssm not importable)",
               peers=peer_versions(), rows=rows, summary=summary)
    os.makedirs(out, exist_ok=True)
    tag = f"kernels-{device}-shapes"
    with open(os.path.join(out, tag + ".json"), "w") as f:
        json.dump(doc, f, indent=1)
    _plot_shapes(rows, os.path.join(out, tag + ".png"), doc["device"])
    print(json.dumps({k: v for k, v in summary.items() if k != "cells"}, indent=1))
    return doc


def _plot_shapes(rows, path, device_name):
    """One bar group per (batch, L): fused and paper forward+backward tokens/s for each (N, P)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shapes = sorted({(r["batch"], r["L"]) for r in rows})
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4.2), squeeze=False)
    for ax, (b, L) in zip(axes[0], shapes):
        cells = sorted({(r["d_state"], r["headdim"]) for r in rows if (r["batch"], r["L"]) == (b, L)})
        for i, m in enumerate(("qs_fused", "qs_paper")):
            got = {(r["d_state"], r["headdim"]): r.get("tokens_per_s", 0.0) for r in rows
                   if r["method"] == m and (r["batch"], r["L"]) == (b, L)}
            ax.bar([j + 0.4 * i for j in range(len(cells))], [got.get(c, 0.0) / 1e6 for c in cells], 0.4, label=m)
        ax.set_xticks([j + 0.2 for j in range(len(cells))], [f"N{n}\nP{p}" for n, p in cells], fontsize=8)
        ax.set_ylabel("fwd+bwd tokens/s (millions)")
        ax.set_title(f"batch {b}, L {L}, bf16")
    axes[0][0].legend()
    fig.suptitle(device_name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plans_run(ssd) -> dict:
    """What the planner actually launched (it may shrink the requested configuration to fit shared memory)."""
    return {str(k): str(v) for k, v in ssd.LAST_PLANS.items()}


def tune(device, L=16384) -> list:
    """Sweep the scan kernels' launch configuration (kernels.ssd.TUNING) on the fused product at one L."""
    from triton.testing import do_bench
    from kernels import ssd
    t = make_inputs(L, device)
    keys = ("x", "b", "c", "log_a", "delta")
    rows = []
    saved = dict(ssd.TUNING)
    for bv in (32, 64):
        for nw in (4, 8):
            for ns in (2, 3):  # one stage is refused by the planner (kernels.ssd)
                ssd.TUNING.update(block_v=bv, num_warps=nw, num_stages=ns)
                try:
                    f, fb, peak = bench_one(qs_fused, t, keys, do_bench)
                except Exception as e:  # a configuration that does not compile (registers, shared memory)
                    rows.append(dict(block_v=bv, num_warps=nw, num_stages=ns, error=repr(e)[:200]))
                    print(f"tune block_v={bv} warps={nw} stages={ns}: failed: {e!r}"[:300], flush=True)
                    continue
                rows.append(dict(block_v=bv, num_warps=nw, num_stages=ns, fwd_ms=f, fwd_bwd_ms=fb,
                                 plans_run=_plans_run(ssd)))
                print(f"tune L={L} block_v={bv} warps={nw} stages={ns}: fwd {f:.3f} ms fwd+bwd {fb:.3f} ms",
                      flush=True)
    ssd.TUNING.clear()
    ssd.TUNING.update(saved)
    return rows


def tune_bwd(device, L=16384) -> list:
    """Sweep the backward kernels' launch knobs (kernels.ssd.TUNING bwd_num_warps, bwd_num_stages) on the fused
    product at one L."""
    from triton.testing import do_bench
    from kernels import ssd
    t = make_inputs(L, device)
    keys = ("x", "b", "c", "log_a", "delta")
    rows = []
    saved = dict(ssd.TUNING)
    for nw in (4, 8):
        for ns in (2, 3):
            knobs = dict(bwd_num_warps=nw, bwd_num_stages=ns)
            ssd.TUNING.update(saved)
            ssd.TUNING.update(knobs)
            try:
                f, fb, peak = bench_one(qs_fused, t, keys, do_bench)
            except Exception as e:  # a configuration that does not compile (registers, shared memory)
                rows.append(dict(knobs, error=repr(e)[:200]))
                print(f"tune-bwd {knobs}: failed: {e!r}"[:300], flush=True)
                continue
            row = dict(knobs, fwd_ms=f, fwd_bwd_ms=fb, peak_bytes_fwd_bwd=peak, plans_run=_plans_run(ssd))
            # The planner runs fewer stages where the asked ones run out of shared memory: such a row measured
            # another configuration, so it is marked and never "the best".
            ran = ssd.LAST_PLANS.get(ssd._BWD_KERNELS)
            if ran is not None and ran.num_stages != ns:
                row["not_as_asked"] = f"asked stages={ns}; ran {ran}"
            rows.append(row)
            print(f"tune-bwd L={L} {knobs}: fwd {f:.3f} ms fwd+bwd {fb:.3f} ms {row.get('not_as_asked', '')}",
                  flush=True)
    ssd.TUNING.clear()
    ssd.TUNING.update(saved)
    return rows


def _plot(results, path, device_name):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in zip(axes, ("fwd_ms", "fwd_bwd_ms"), ("forward", "forward + backward")):
        for m in sorted({r["method"] for r in results}):
            rows = sorted((r for r in results if r["method"] == m and key in r), key=lambda r: r["L"])
            if rows:
                ax.loglog([r["L"] for r in rows], [r[key] for r in rows], "o-", label=m, base=2)
        ax.set_xlabel("L")
        ax.set_ylabel("time (ms)")
        ax.set_title(f"{title}: B={B}, H={H}, P={P}, N={N}, bf16")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(device_name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="mixerzoo bench kernels", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="a CUDA device (the kernels need a GPU)")
    ap.add_argument("--out", default="results/bench", help="output folder")
    ap.add_argument("--quick", action="store_true", help="L in 1024, 4096 only")
    ap.add_argument("--only", choices=("scans", "shapes", "matfree"), default=None,
                    help="run one part only (default: scans, then matfree); 'shapes': the fused scan across N, P "
                    "and (batch, L) beside the paper's arrangement")
    ap.add_argument("--launch", default=None, metavar="BV,WARPS,STAGES",
                    help="launch configuration of the scan kernels (kernels.ssd.TUNING; 0 = Triton's default)")
    ap.add_argument("--bwd-launch", default=None, metavar="WARPS,STAGES",
                    help="backward kernels' launch configuration (kernels.ssd.TUNING bwd_num_warps, bwd_num_stages; "
                    "0 = Triton's default)")
    ap.add_argument("--tune-bwd", action="store_true", help="sweep the backward kernels' knobs first (at "
                    "L = 16384; 4096 with --quick), use the fastest forward+backward one, write the sweep to "
                    "kernels-<device>-tune-bwd.json")
    ap.add_argument("--tune", action="store_true", help="sweep the scan kernels' launch configuration first "
                    "(at L = 16384; 4096 with --quick) and use the fastest forward+backward one")
    args = ap.parse_args(argv)
    # argument errors are usage errors: `mixerzoo bench` prints them as one line and exits 2
    from ablations.cli import UsageError
    if not str(args.device).startswith("cuda"):
        raise UsageError(f"--device must be a CUDA device (cuda or cuda:k) for the kernel benchmarks, got "
                         f"{args.device!r}")
    launch = args.launch.split(",") if args.launch else None
    if launch is not None and (len(launch) != 3 or not all(f.strip().isdigit() for f in launch)):
        raise UsageError(f"--launch must be three integers BV,WARPS,STAGES, got {args.launch!r}")
    bwd = args.bwd_launch.split(",") if args.bwd_launch else None
    if bwd is not None and (len(bwd) != 2 or not all(f.strip().isdigit() for f in bwd)):
        raise UsageError(f"--bwd-launch must be two integers WARPS,STAGES, got {args.bwd_launch!r}")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: no CUDA device is available here; the kernel benchmarks need a GPU")
    t0 = time.time()
    if launch:
        from kernels import ssd
        bv, nw, ns = (int(v) for v in launch)
        ssd.TUNING.update(block_v=bv, num_warps=nw or None, num_stages=ns or None)
    if args.tune:
        from kernels import ssd
        rows = [r for r in tune(args.device, 4096 if args.quick else 16384) if "error" not in r]
        best = min(rows, key=lambda r: r["fwd_bwd_ms"])
        ssd.TUNING.update(block_v=best["block_v"], num_warps=best["num_warps"], num_stages=best["num_stages"])
        print(f"tuned: {ssd.TUNING}")
    if bwd:
        from kernels import ssd
        nw, ns = (int(v) for v in bwd)
        ssd.TUNING.update(bwd_num_warps=nw or None, bwd_num_stages=ns or None)
    if args.tune_bwd:
        from kernels import ssd
        rows = tune_bwd(args.device, 4096 if args.quick else 16384)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"kernels-{args.device}-tune-bwd.json"), "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(args.device), rows=rows), f, indent=1)
        ok = [r for r in rows if "error" not in r and "not_as_asked" not in r]
        if ok:
            best = min(ok, key=lambda r: r["fwd_bwd_ms"])
            ssd.TUNING.update({k: v for k, v in best.items() if k.startswith("bwd_")})
        print(f"tuned: {ssd.TUNING}")
    if args.only in (None, "scans"):
        run_scans(args.device, args.out, args.quick)
    if args.only == "shapes":
        run_shapes(args.device, args.out)
    if args.only in (None, "matfree"):
        try:
            from benchmarks import kernels_matfree
        except ImportError as e:
            print(f"benchmarks.kernels_matfree not importable ({e}); skipping the matrix-free benchmarks")
        else:
            kernels_matfree.run(args.device, args.out, args.quick)
    print(f"done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    from ablations.cli import main as cli_main
    sys.exit(cli_main(["bench", "kernels", *sys.argv[1:]]))
