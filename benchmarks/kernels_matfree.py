"""Benchmark: matrix-free Cauchy / Vandermonde products (Triton) against their peers.

Shapes are the Hydra paper's sequence-aligned Cauchy/Vandermonde mixers in BERT-base
(d_model 768, expand 2 -> 1536 channels, headdim 128 -> 12 heads, qk_dim 16; Hwang et al. 2024,
arXiv 2407.09941, ``hydra/bert/yamls/pretrain/matrix_mixer/cauchy_dd.yaml``) at batch 8 in bfloat16,
for L = 512 ... 16384. For each product it measures forward and forward+backward time
(``triton.testing.do_bench`` median after warm-up, fresh random inputs per L) and the peak extra device
memory of one forward+backward, for

* ``triton``: :func:`kernels.cauchy_matmul` / :func:`kernels.vandermonde_matmul` (exact, tiled);
* ``expsum_triton`` / ``expsum_triton_eps1e-6`` (Cauchy): ``structured.cauchy.cauchy_matmul_expsum``
  dispatched to the fused exponential-sum kernel (``kernels.cauchy.cauchy_expsum_product``), at the
  default eps for bf16 x, 1e-3 (below bf16's own rounding, 2^-8), and at float32's default, eps = 1e-6;
* ``torch_tiled`` / ``torch_expsum`` / ``torch_nufft``: the torch algorithms of ``structured/`` (exact
  tiled; Cauchy's exponential-sum expansion as torch GEMMs, kernels forced off; Vandermonde's NUFFT,
  in float32);
* ``chebyshev`` / ``chebyshev_torch`` (Vandermonde): ``structured.vandermonde.vandermonde_matmul_chebyshev``,
  Chebyshev interpolation in the index (rank n, approximate with a stated bound; for the paper's small angles,
  scale 1e-3), in float32 at its default eps = 1e-6: the fused kernels (``kernels.chebyshev``: bf16 inputs read
  as they are, the point count chosen per batch element on the device, no host sync; the row records
  ``chebyshev_points_per_element``) or torch (kernels off, float32 copies; ``chebyshev_points``, one n for the
  batch);
* ``materialize``: the paper code's way, the (B, H, L, L, d) tensor of terms in bf16 summed over d,
  then a batched matmul (out-of-memory is caught and recorded);
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` at the same shapes
  (q, k head dim 16, v head dim 128), a familiar yardstick.

Expansion rows also record ``features_per_term`` (F, the largest node count over batch elements and terms,
rounded up to a multiple of the kernels' chunk) and
``tensor_tflops_fwd`` (4 B H L d F P flops of the two forward GEMM launches over the forward time), to set
against the device's bf16 matmul rate. A method that raises is recorded with its error; the others run on.

Accuracy: at the first L every method's output and gradients (x, q, k; random cotangent) are compared
with the exact product in float64 on the same (bf16-rounded) inputs; ``accuracy_vs_float64`` records
the relative Frobenius errors, the max error over max |reference|, and for Cauchy (M > 0) the max
entrywise ratio ``|y_hat - y| / (M |x|)``, the quantity the stated bounds control.

Timing: ``do_bench`` medians of eager calls (host launch work included: at L = 512 a product is a few tenths
of a millisecond of GPU work, so Python and launch overhead show), and, for the methods in ``GRAPHED`` (no host
synchronization inside), also of CUDA-graph replays of the same calls (``fwd_ms_graph``, ``fwd_bwd_ms_graph``:
the GPU's own time, as a captured training step or ``torch.compile(mode="reduce-overhead")`` would see it);
the targets are given for both. The GPU is kept busy for two seconds first, so that no row meets idle clocks.

Writes ``kernels_matfree.json`` (device, versions, command, all numbers) and ``kernels_matfree.png``
(time vs L, log-log) into ``out``. Usage: ``python -m benchmarks.kernels_matfree --out results/bench``;
``--kinds cauchy,sdpa`` and ``--methods expsum_triton,triton`` restrict a run (the file's other rows are kept:
re-measure ours without re-running the slow baselines).
``--smoke`` runs tiny shapes (also on ``--device cpu``, kernels in Triton's interpreter, wall-clock
medians) to check the script itself; its numbers are not performance data.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

import torch

SHAPES = {"batch": 8, "heads": 12, "headdim": 128, "qk_dim": 16}
SMOKE_SHAPES = {"batch": 1, "heads": 2, "headdim": 16, "qk_dim": 4}
LENGTHS = [512, 1024, 2048, 4096, 8192, 16384]
QUICK_LENGTHS = [512, 2048]
SMOKE_LENGTHS = [16, 37]
VANDERMONDE_SCALE = 1e-3          # Hydra's code (notes section 1.3)
SINGLE_SHOT_S = 0.5               # slower than this: one timed run instead of do_bench
GIVE_UP_S = 3.0                   # predicted slower than this at the next L (quadratic in L): not run
KINDS = ("cauchy", "vandermonde", "sdpa")
OURS = ("triton", "expsum_triton", "expsum_triton_eps1e-6")   # run at every L (no give-up)
# also timed as CUDA-graph replays (no host synchronization inside; the Chebyshev path reads Omega on the host)
GRAPHED = ("triton", "expsum_triton", "expsum_triton_eps1e-6", "chebyshev", "materialize", "sdpa")
H100_SXM_BOOST_HZ = 1.98e9        # for the special-function roofline (16 MUFU results / clock / SM)


def _materialized_cauchy(x, q, k, c):
    # the paper's code: a (B, H, L, L, d) tensor of denominators in the autocast dtype, kept for autograd
    m = (1.0 / (q[..., :, None, :] + k[..., None, :, :] + (c + 1e-8))).sum(-1)
    return m @ x


def _materialized_vandermonde(x, q, k, s):
    L = x.shape[-2]
    idx = torch.arange(L, device=x.device, dtype=x.dtype)
    m = (torch.cos((2 * math.pi * s) * q[..., :, None, :] * idx[None, :, None])
         - torch.cos((2 * math.pi * s) * k[..., None, :, :] * idx[:, None, None])).sum(-1)
    return m @ x


def _methods(kind):
    """name -> fn(x, q, k) for one product kind. The kernel rows force ``MIXERZOO_KERNELS=on`` (on the
    CPU that is Triton's interpreter), the torch rows ``off``."""
    import kernels

    def mode(m, f):
        def run(*a):
            # on CUDA with Triton, "on" is what the default "auto" does: no environment round trip (~3 us of
            # host time per call on a 2-core VM, more on the H100's host), which is the harness's, not the product's
            if m == "on" and a[0].is_cuda and kernels.mode() == "auto" and kernels.triton_available():
                return f(*a)
            with kernels.using(m):
                return f(*a)
        return run
    if kind == "cauchy":
        from structured.cauchy import cauchy_matmul_expsum, cauchy_matmul_tiled
        c = 0.0
        return {
            "triton": lambda x, q, k: kernels.cauchy_matmul(x, q, k, c),
            "expsum_triton": mode("on", lambda x, q, k: cauchy_matmul_expsum(x, q, k, c)),
            "expsum_triton_eps1e-6": mode("on", lambda x, q, k: cauchy_matmul_expsum(x, q, k, c, eps=1e-6)),
            "torch_tiled": mode("off", lambda x, q, k: cauchy_matmul_tiled(x, q, k, c)),
            "torch_expsum": mode("off", lambda x, q, k: cauchy_matmul_expsum(x, q, k, c)),
            "materialize": lambda x, q, k: _materialized_cauchy(x, q, k, c),
        }
    from structured.vandermonde import vandermonde_matmul_chebyshev, vandermonde_matmul_nufft, vandermonde_matmul_tiled
    s = VANDERMONDE_SCALE
    return {
        "triton": lambda x, q, k: kernels.vandermonde_matmul(x, q, k, s),
        "torch_tiled": mode("off", lambda x, q, k: vandermonde_matmul_tiled(x, q, k, s)),
        # torch.fft has no bf16: the NUFFT runs in float32 (its default eps 1e-6)
        "torch_nufft": lambda x, q, k: vandermonde_matmul_nufft(x.float(), q.float(), k.float(), s).to(x.dtype),
        # bf16 angles would cost ~|theta j| 2^-8 of phase: interpolated in float32 (eps 1e-6), like the NUFFT.
        # The fused kernels (kernels.chebyshev) read the bf16 tensors and compute in float32 themselves; the
        # torch path gets float32 copies
        "chebyshev": mode("on", lambda x, q, k: vandermonde_matmul_chebyshev(x, q, k, s)),
        "chebyshev_torch": mode("off", lambda x, q, k: vandermonde_matmul_chebyshev(x.float(), q.float(), k.float(),
                                                                                   s).to(x.dtype)),
        "materialize": lambda x, q, k: _materialized_vandermonde(x, q, k, s),
    }


def _inputs(kind, L, device, dtype, seed, shapes):
    g = torch.Generator(device=device).manual_seed(seed)
    B, H, P, D = shapes["batch"], shapes["heads"], shapes["headdim"], shapes["qk_dim"]
    x = torch.randn(B, H, L, P, device=device, dtype=dtype, generator=g)
    q = torch.randn(B, H, L, D, device=device, dtype=torch.float32, generator=g)
    k = torch.randn(B, H, L, D, device=device, dtype=torch.float32, generator=g)
    if kind == "cauchy":   # the paper's positive nodes exp(q) + b, b = 0.5
        q, k = torch.exp(0.5 * q) + 0.5, torch.exp(0.5 * k) + 0.5
    return x, q.to(dtype), k.to(dtype)


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, do_bench, device):
    """Median ms; a single synchronized run when one call is slower than SINGLE_SHOT_S; on the CPU
    (smoke runs) the median of three wall-clock runs."""
    fn()   # compile / autotune outside the timed region
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t0
    if do_bench is None:
        runs = [first]
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(runs), "wall-clock median of 3 (CPU smoke run)"
    if first > SINGLE_SHOT_S:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return 1e3 * (time.perf_counter() - t0), "single run"
    return do_bench(fn, warmup=25, rep=100, return_mode="median"), "do_bench median"


def _graph_time(fn, do_bench):
    """Median ms of replaying ``fn`` captured in a CUDA graph (its launches without the host's launch work).
    A method that synchronizes with the host cannot be captured: the error propagates to the caller."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):       # warm up (compile, autotune, allocate) outside the capture
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return do_bench(graph.replay, warmup=25, rep=100, return_mode="median")


def _warm_up_clocks(seconds=2.0):
    """Keep the GPU busy for a moment, so that the first timed method does not meet it at idle clocks (in one
    run the first row, the exact kernel at L = 512, measured 6x slower than its neighbours)."""
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


def _measure(fn, args, do_bench, device, graph=False):
    """fwd ms, fwd+bwd ms, peak extra MB of one fwd+bwd (CUDA only), or the error; with ``graph`` also both
    times as CUDA-graph replays (``*_ms_graph``; ``graph_error`` if the method cannot be captured)."""
    x, q, k = args
    leaves = [t.detach().clone().requires_grad_() for t in (x, q, k)]
    gy = torch.randn_like(x)
    rec = {}
    on_gpu = str(device).startswith("cuda")
    try:
        with torch.no_grad():
            rec["fwd_ms"], rec["fwd_timing"] = _time(lambda: fn(*args), do_bench, device)

        def fwd_bwd():
            for t in leaves:
                t.grad = None
            fn(*leaves).backward(gy)
        rec["fwd_bwd_ms"], rec["fwd_bwd_timing"] = _time(fwd_bwd, do_bench, device)
        if on_gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fwd_bwd()
            torch.cuda.synchronize()
            rec["peak_extra_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        if graph and on_gpu and rec.get("fwd_bwd_timing") == "do_bench median":
            try:
                with torch.no_grad():
                    rec["fwd_ms_graph"] = _graph_time(lambda: fn(*args), do_bench)
                rec["fwd_bwd_ms_graph"] = _graph_time(lambda: fn(*leaves).backward(gy), do_bench)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as e:     # e.g. a host synchronization inside the method
                rec["graph_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                torch.cuda.synchronize()
    except torch.cuda.OutOfMemoryError:
        rec["error"] = "out of memory"
    except Exception as e:   # one failing method is recorded, the rest still run
        traceback.print_exc()
        rec["error"] = f"{type(e).__name__}: {str(e)[:500]}"
    finally:
        for t in leaves:
            t.grad = None
        if on_gpu:
            torch.cuda.empty_cache()
    return rec


def method_names() -> list[str]:
    """Every Cauchy and Vandermonde method of the benchmark (``--methods`` takes a subset)."""
    return sorted(set(_methods("cauchy")) | set(_methods("vandermonde")))


def _accuracy(kind, methods, args, seed, only=None):
    """Every method's (or those in ``only``) errors against the exact float64 product on the same inputs,
    values and gradients."""
    exact = methods["torch_tiled"]
    gen = torch.Generator(device=args[0].device).manual_seed(seed)
    g = torch.randn(args[0].shape, device=args[0].device, dtype=args[0].dtype, generator=gen)

    def run(fn, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in args]
        y = fn(*leaves)
        grads = torch.autograd.grad(y, leaves, g.to(dtype))
        return [t.detach().double() for t in (y, *grads)]
    ref = run(exact, torch.float64)
    ref_abs = None
    if kind == "cauchy":   # M > 0: M |x| is the scale of the entrywise bounds
        with torch.no_grad():
            ref_abs = exact(args[0].double().abs(), args[1].double(), args[2].double())
    out = {}
    for name, fn in methods.items():
        if only is not None and name not in only:
            continue
        try:
            mine = run(fn, args[0].dtype)
        except torch.cuda.OutOfMemoryError:
            out[name] = {"error": "out of memory"}
            continue
        except Exception as e:
            traceback.print_exc()
            out[name] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
            continue
        rec = {}
        for label, a, b in zip(("y", "grad_x", "grad_q", "grad_k"), mine, ref):
            rec[f"rel_fro_{label}"] = ((a - b).norm() / b.norm()).item()
            rec[f"max_err_over_max_ref_{label}"] = ((a - b).abs().max() / b.abs().max()).item()
        if ref_abs is not None:
            rec["max_entrywise_over_M_absx_y"] = ((mine[0] - ref[0]).abs() / ref_abs).max().item()
        out[name] = rec
        del mine
    return out


def _sdpa(L, device, dtype, seed, shapes):
    import torch.nn.functional as F
    g = torch.Generator(device=device).manual_seed(seed)
    B, H, P, D = shapes["batch"], shapes["heads"], shapes["headdim"], shapes["qk_dim"]
    q = torch.randn(B, H, L, D, device=device, dtype=dtype, generator=g)
    k = torch.randn(B, H, L, D, device=device, dtype=dtype, generator=g)
    v = torch.randn(B, H, L, P, device=device, dtype=dtype, generator=g)
    return (lambda a, b, c: F.scaled_dot_product_attention(b, c, a)), (v, q, k)


def _targets(results, lengths):
    """The issue's targets, read off the results (ratios of medians; None where not measured), for
    every method of ours (Triton kernels and the torch paths of structured/ alike: on CUDA ``auto`` may pick
    either). L = 512 / 2048 are the issue's lengths (the smoke run uses its own two)."""
    get = {(r["kind"], r["method"], r["L"]): r for r in results}
    short, mid = (512, 2048) if 512 in lengths and 2048 in lengths else (lengths[0], lengths[-1])

    def ratio(a, b, key="fwd_bwd_ms"):
        ra, rb = get.get(a, {}), get.get(b, {})
        return ra[key] / rb[key] if key in ra and key in rb else None
    out = {}
    for kind in ("cauchy", "vandermonde"):
        out[kind] = {}
        for method in sorted({r["method"] for r in results if r["kind"] == kind and r["method"] not in ("materialize", "sdpa")}):
            big = get.get((kind, method, max(lengths)), {})
            out[kind][method] = {
                f"speedup_vs_materialize_L{short}_fwd_bwd (target >= 20)": ratio((kind, "materialize", short),
                                                                                  (kind, method, short)),
                f"speedup_vs_materialize_L{short}_fwd": ratio((kind, "materialize", short), (kind, method, short),
                                                              "fwd_ms"),
                f"slowdown_vs_sdpa_L{mid}_fwd_bwd (target <= 5)": ratio((kind, method, mid), ("sdpa", "sdpa", mid)),
                f"slowdown_vs_sdpa_L{mid}_fwd": ratio((kind, method, mid), ("sdpa", "sdpa", mid), "fwd_ms"),
                f"speedup_vs_materialize_L{short}_fwd_bwd_graph": ratio((kind, "materialize", short),
                                                                        (kind, method, short), "fwd_bwd_ms_graph"),
                f"slowdown_vs_sdpa_L{mid}_fwd_bwd_graph": ratio((kind, method, mid), ("sdpa", "sdpa", mid),
                                                                "fwd_bwd_ms_graph"),
                f"runs_at_L{max(lengths)}": "fwd_bwd_ms" in big,
                "peak_extra_mb_by_L": {r["L"]: r.get("peak_extra_mb") for r in results
                                       if r["kind"] == kind and r["method"] == method},
            }
    return out


def _write(path, payload):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def _plot(results, path, shapes):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds = sorted({r["kind"] for r in results if r["kind"] != "sdpa"})
    if not kinds:
        return
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 4.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        rows = [r for r in results if r["kind"] in (kind, "sdpa")]
        for n, method in enumerate(sorted({r["method"] for r in rows})):
            pts = sorted(((r["L"], r) for r in rows if r["method"] == method), key=lambda t: t[0])
            for key, style in (("fwd_bwd_ms", "-o"), ("fwd_ms", "--x")):
                xs = [L for L, r in pts if key in r]
                ys = [r[key] for L, r in pts if key in r]
                if xs:
                    ax.loglog(xs, ys, style, color=f"C{n}",
                              label=f"{method} {'fwd+bwd' if key == 'fwd_bwd_ms' else 'fwd'}")
            ooms = [L for L, r in pts if "out of memory" in r.get("error", "")]
            if ooms:
                ax.scatter(ooms, [ax.get_ylim()[1]] * len(ooms), marker="v", color=f"C{n}")
        ax.set_title(f"{kind}: B={shapes['batch']}, H={shapes['heads']}, P={shapes['headdim']}, "
                     f"d={shapes['qk_dim']}, bf16 (v = out of memory)")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel("time [ms]")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _expsum_features(args, eps=None):
    """Features per term the expansion kernel uses on these inputs: the largest over batch elements and
    terms (each term's node count for eps and its own R, rounded up to a multiple of the chunk); eps None:
    the default for x's dtype."""
    from kernels.cauchy import expsum_features
    from structured.cauchy import DEFAULT_EPS, _node_scaling, quadrature_constants
    x, q, k = args
    _, R = _node_scaling(q.float(), k.float())
    return expsum_features(quadrature_constants(DEFAULT_EPS[x.dtype] if eps is None else eps), R)


def _chebyshev_points(args):
    """Chebyshev points n the interpolation uses on these inputs (float32 default eps)."""
    from structured.vandermonde import NUFFT_DEFAULT_EPS, chebyshev_omega, chebyshev_plan
    x, q, k = args
    return chebyshev_plan(x.shape[-2], chebyshev_omega(q.float(), k.float(), VANDERMONDE_SCALE),
                          NUFFT_DEFAULT_EPS[torch.float32]).n


def _chebyshev_points_device(args):
    """The fused kernels' point count per batch element (their prep kernel's choice), as the largest and the
    smallest over the batch."""
    from kernels import chebyshev as kc
    from structured.vandermonde import chebyshev_omega_limits
    x, q, k = args
    L = x.shape[-2]
    n_cap = kc.points_cap(L)
    q3, k3 = (t.reshape(-1, L, t.shape[-1]).contiguous() for t in (q, k))
    limits = chebyshev_omega_limits(n_cap, 1e-6)
    tab, _, _ = kc._prep(q3, k3, kc._params(limits, VANDERMONDE_SCALE, L, x.device), n_cap, torch.float32,
                         x.shape[-1])
    npts = kc.unpack_table(tab, n_cap)[0]
    return {"max": int(npts.max()), "min": int(npts.min())}


#: Per-method facts about the inputs recorded in each row: (kind, method) -> (key, fn(args)).
ROW_INFO = {("vandermonde", "chebyshev"): ("chebyshev_points_per_element", _chebyshev_points_device),
            ("vandermonde", "chebyshev_torch"): ("chebyshev_points", _chebyshev_points)}


def _kernel_configs(kind, method, L):
    """The autotuner's choices for our kernels at this L (None below the autotuning length)."""
    from kernels import _matfree_tiled as _matfree
    if method == "triton" and L >= _matfree.AUTOTUNE_MIN_LENGTH:
        return {role: str(getattr(_matfree._tuned(f"{kind}_matmul", role), "best_config", None))
                for role in ("fwd", "cols", "rows")}
    if method.startswith("expsum_triton"):
        from kernels import cauchy as kc
        if L >= kc.EXPSUM_AUTOTUNE_MIN_LENGTH:
            return {role: str(getattr(kc._expsum_tuned(role), "best_config", None)) for role in ("reduce", "rows")}
    return None


def run(device="cuda", out="results/bench", quick=False, kinds=KINDS, smoke=False,
        methods=None) -> list[str]:
    """Run the benchmark on ``device`` and write JSON + PNG into ``out``; return their paths.

    ``kinds``: a subset of ``KINDS``. If ``out`` already holds a ``kernels_matfree.json``, its results for
    the kinds not run now are kept (so a benchmark can be completed in several device calls).
    ``smoke``: tiny shapes and lengths (``SMOKE_SHAPES``, ``SMOKE_LENGTHS``), the only mode allowed on
    the CPU (kernels in Triton's interpreter, which must be enabled before triton is imported:
    :func:`main` does it).
    ``methods``: None (all) or a subset of the Cauchy / Vandermonde method names (``method_names()``): only
    those rows are measured, and the file's rows of the other methods are kept (re-measure ours without
    re-running the slow baselines).
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"kinds must be a subset of {KINDS}, got {tuple(kinds)}")
    if methods is not None:
        allowed = method_names()
        unknown = sorted(set(methods) - set(allowed))
        if unknown or not methods:
            raise ValueError(f"methods must be a non-empty subset of {allowed}, got {tuple(methods)}")
        methods = frozenset(methods)
    on_gpu = str(device).startswith("cuda")
    if not on_gpu and not (smoke and str(device) == "cpu"):
        raise ValueError(f"device must be a CUDA device, or 'cpu' with smoke=True (a check of the script), "
                         f"got {device!r} with smoke={smoke}")
    if on_gpu and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch.cuda.is_available() is False")
    if not on_gpu and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("a CPU smoke run needs TRITON_INTERPRET=1 set before triton is imported "
                         "(python -m benchmarks.kernels_matfree --device cpu --smoke sets it)")
    import triton
    do_bench = None
    if on_gpu:
        from triton.testing import do_bench
        _warm_up_clocks()

    os.makedirs(out, exist_ok=True)
    json_path = os.path.join(out, "kernels_matfree.json")
    png_path = os.path.join(out, "kernels_matfree.png")
    dtype = torch.bfloat16
    shapes = SMOKE_SHAPES if smoke else SHAPES
    lengths = SMOKE_LENGTHS if smoke else (QUICK_LENGTHS if quick else LENGTHS)
    props = torch.cuda.get_device_properties(device) if on_gpu else None
    payload = {
        "benchmark": "matrix-free Cauchy / Vandermonde products vs peers",
        "command": " ".join([os.path.basename(sys.executable), "-m", "benchmarks.kernels_matfree"] + sys.argv[1:]),
        "device": props.name if on_gpu else f"cpu ({platform.processor() or platform.machine()}), Triton interpreter",
        "multiprocessors": props.multi_processor_count if on_gpu else None,
        "smoke": smoke,
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
                     "python": platform.python_version()},
        "shapes": {**shapes, "dtype": "bfloat16", "vandermonde_scale": VANDERMONDE_SCALE, "cauchy_c": 0.0},
        "timing": "triton.testing.do_bench median (warmup 25 ms, rep 100 ms); one synchronized run when a "
                  f"call exceeds {SINGLE_SHOT_S} s; *_ms_graph: the same medians of CUDA-graph replays (methods "
                  f"{', '.join(GRAPHED)}); peak_extra_mb = max_memory_allocated during one fwd+bwd minus the inputs; "
                  "GPU kept busy 2 s before the first row" if on_gpu else "wall-clock median of 3 runs (CPU smoke run: not performance data)",
        "results": [],
    }
    if os.path.exists(json_path):
        with open(json_path) as f:
            old = json.load(f)
        if bool(old.get("smoke", False)) == smoke:
            rerun = lambda kind, method: kind in kinds and (methods is None or method in methods  # noqa: E731
                                                            or kind == "sdpa")
            payload["results"] = [r for r in old.get("results", []) if not rerun(r["kind"], r["method"])]
            payload["accuracy_vs_float64"] = {
                k: {m: v for m, v in acc.items() if m == "L" or not rerun(k, m)}
                for k, acc in old.get("accuracy_vs_float64", {}).items() if methods is not None or k not in kinds}
            payload["earlier_commands"] = old.get("earlier_commands", []) + [old.get("command")]
    results = payload["results"]
    for kind in [k for k in ("cauchy", "vandermonde") if k in kinds]:
        fns = _methods(kind)
        given_up = {}
        for L in lengths:
            args = _inputs(kind, L, device, dtype, seed=L, shapes=shapes)
            for name, fn in fns.items():
                if methods is not None and name not in methods:
                    continue
                rec = {"kind": kind, "method": name, "L": L}
                if name in given_up:
                    rec["error"] = given_up[name]
                else:
                    rec.update(_measure(fn, args, do_bench, device, graph=name in GRAPHED))
                    slowest = max(rec.get("fwd_ms", 0), rec.get("fwd_bwd_ms", 0))
                    if 4 * slowest > 1e3 * GIVE_UP_S and name not in OURS and on_gpu:
                        given_up[name] = f"not run: predicted > {GIVE_UP_S} s from {slowest:.0f} ms at L={L}"
                    if rec.get("error") == "out of memory":
                        given_up[name] = f"not run: out of memory at L={L}"
                configs = _kernel_configs(kind, name, L) if on_gpu else None
                if configs:
                    rec["configs"] = configs
                if name.startswith("expsum_triton"):
                    F = _expsum_features(args, 1e-6 if name.endswith("eps1e-6") else None)
                    rec["features_per_term"] = F
                    if "fwd_ms" in rec:   # two GEMM launches of 2 L d F P flops per batch element
                        flops = 4 * shapes["batch"] * shapes["heads"] * L * shapes["qk_dim"] * F * shapes["headdim"]
                        rec["tensor_tflops_fwd"] = flops / (rec["fwd_ms"] * 1e-3) / 1e12
                if (kind, name) in ROW_INFO:
                    key, info = ROW_INFO[kind, name]
                    rec[key] = info(args)
                if name == "triton" and "fwd_ms" in rec and on_gpu:
                    evals = (shapes["batch"] * shapes["heads"] * L * L * shapes["qk_dim"]
                             * (1 if kind == "cauchy" else 2))
                    rec["special_fn_evals_per_s_fwd"] = evals / (rec["fwd_ms"] * 1e-3)
                    rec["fraction_of_mufu_peak_fwd"] = rec["special_fn_evals_per_s_fwd"] / (
                        16 * props.multi_processor_count * H100_SXM_BOOST_HZ)
                results.append(rec)
                print(json.dumps(rec), flush=True)
                _write(json_path, payload)
            if L == lengths[0]:   # one accuracy check per kind, every method, against float64 (same inputs)
                acc = payload.setdefault("accuracy_vs_float64", {}).setdefault(kind, {})
                acc.update({"L": L, **_accuracy(kind, fns, args, L, only=methods)})
                print(json.dumps(payload["accuracy_vs_float64"][kind]), flush=True)
                _write(json_path, payload)
            del args
            if on_gpu:
                torch.cuda.empty_cache()
    for L in (lengths if "sdpa" in kinds else []):
        fn, args = _sdpa(L, device, dtype, seed=L, shapes=shapes)
        rec = {"kind": "sdpa", "method": "sdpa", "L": L, **_measure(fn, args, do_bench, device, graph=True)}
        results.append(rec)
        print(json.dumps(rec), flush=True)
    payload["targets"] = _targets(results, lengths)
    _write(json_path, payload)
    _plot(results, png_path, shapes)
    _print_table(results)
    return [json_path, png_path]


def _print_table(results):
    fmt = lambda r, key: (f"{r[key]:.3g}" if key in r else r.get("error", "-")[:12])
    print(f"{'kind':12s} {'method':22s} {'L':>6s} {'fwd ms':>12s} {'fwd+bwd ms':>12s} {'peak MB':>12s}")
    for r in results:
        print(f"{r['kind']:12s} {r['method']:22s} {r['L']:6d} {fmt(r, 'fwd_ms'):>12s} {fmt(r, 'fwd_bwd_ms'):>12s} "
              f"{fmt(r, 'peak_extra_mb'):>12s}")


def merge(paths, out):
    """Merge the JSON of runs made in separate calls (e.g. ``--kinds cauchy,sdpa`` and ``--kinds vandermonde``
    with different ``--out``, when one device call could not hold both; or a ``--methods`` re-run) into ``out``:
    each (kind, method)'s results and accuracy come from the last file that has them; the commands are all kept;
    targets and plot are redrawn. Only runs of the same device, shapes and mode (smoke or not) merge."""
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    for key in ("device", "shapes", "smoke"):
        values = {json.dumps(r.get(key), sort_keys=True) for r in runs}
        if len(values) > 1:
            raise ValueError(f"merge: the files differ in {key!r} ({sorted(values)}); only runs of one device, "
                             f"shapes and mode merge")
    payload = dict(runs[0])
    payload["results"], payload["accuracy_vs_float64"] = [], {}
    payload["command"] = " ; ".join(r["command"] for r in runs)
    payload["merged_from"] = [os.path.abspath(p) for p in paths]
    for r in runs:
        rows = {(x["kind"], x["method"]) for x in r["results"]}
        payload["results"] = [x for x in payload["results"] if (x["kind"], x["method"]) not in rows] + r["results"]
        for kind, acc in r.get("accuracy_vs_float64", {}).items():
            payload["accuracy_vs_float64"].setdefault(kind, {}).update(acc)
    lengths = sorted({x["L"] for x in payload["results"]})
    payload["targets"] = _targets(payload["results"], lengths)
    os.makedirs(out, exist_ok=True)
    json_path, png_path = os.path.join(out, "kernels_matfree.json"), os.path.join(out, "kernels_matfree.png")
    _write(json_path, payload)
    _plot(payload["results"], png_path, payload["shapes"])
    _print_table(payload["results"])
    return [json_path, png_path]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="results/bench")
    p.add_argument("--quick", action="store_true", help=f"only L in {QUICK_LENGTHS}")
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny shapes {SMOKE_SHAPES}, L in {SMOKE_LENGTHS}: checks the script (also on --device cpu)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {KINDS}")
    p.add_argument("--methods", default=None, help="comma-separated Cauchy/Vandermonde methods to measure (default "
                   "all); the other methods' rows already in --out are kept")
    p.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                   help="run nothing: merge these kernels_matfree.json files (separate calls) into --out, redraw")
    a = p.parse_args(argv)
    if a.merge:
        for path in merge(a.merge, a.out):
            print(path)
        return
    if a.device == "cpu" and a.smoke and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")   # before triton is imported
    methods = None if a.methods is None else tuple(m for m in a.methods.split(",") if m)
    for path in run(a.device, a.out, a.quick, tuple(k for k in a.kinds.split(",") if k), smoke=a.smoke,
                    methods=methods):
        print(path)


if __name__ == "__main__":
    main()
