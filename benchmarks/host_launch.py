"""Benchmark: the host time of the kernels' launches at short L, where it bounds their eager speed.

At L = 512 a Chebyshev (Vandermonde) or exp-sum (Cauchy) forward+backward is ~0.4 ms of GPU work in six Triton
launches, and about as much host work (session 7, ``results/bench/host-breakdown-*-cuda.log``), most of it
``JITFunction.run``'s per-launch Python; the bidirectional (quasiseparable) scan's launches take ~60 arguments
each, mostly strides. This benchmark measures, in host microseconds per call issued back to back without
synchronizing (best of 15 repetitions of N calls):

* each launch of a forward+backward of the two matrix-free products and of the quasiseparable scan (Hydra's
  layer: shared generators, shift, delta), through ``kernel[grid](...)`` (``JITFunction.run``) and through the
  cached path of :func:`kernels._launch.launch`;
* each product's forward and forward+backward (``y.backward``; the autograd engine included), cached path off
  and on (``kernels._launch.DIRECT``), and the pieces of the latter: the forward in grad mode, the backward
  through the engine on a retained graph, our ``backward()`` called directly (session 7's H100 breakdown left
  ~0.36 ms of a Cauchy fwd+bwd outside the sum of its pieces: these rows, from the real driver, locate it);
* a do-nothing ``autograd.Function`` forward+backward on three such leaves: the floor any custom op pays;
* on the GPU only, the issue's L = 512 target as the matrix-free benchmark measures it: ``do_bench`` medians of
  eager fwd+bwd calls of its ``expsum_triton`` and ``chebyshev`` rows, five times each with the cache on and off,
  once replayed from a CUDA graph, and the speed-up over the paper's code (its committed median).

``--device cuda``: the real driver, the matrix-free benchmark's shape (``benchmarks.kernels_matfree.SHAPES``)
and ``SCAN_SHAPES``, bf16, L = 512. Where the host outruns the GPU the launch queue fills and the numbers become
GPU time.

``--device cpu`` (no GPU): Triton compiles the kernels for sm_90 as on an H100 and ``benchmarks.fake_cuda``
stands in for the driver, so everything up to the compiled launcher is measured, exactly the part that the cached
path changes; not measured: the launcher itself (C, ``cuLaunchKernelEx``), the CUDA caching allocator, the
engine's hand-over to its device thread. Inputs are small (batch 1, 2 heads; host work does not depend on sizes,
and large CPU allocations would add page faults). The scan's forward+backward row is left out there: its backward
also runs torch reductions and fills (the shared generators' gradients summed over heads, zeroed atomic
targets), which on the CPU compute for real (~0.6 ms in bf16). The products' device check is bypassed (CPU
tensors stand in for CUDA ones). TRITON_INTERPRET must not be set.

Writes ``host_launch-<device>.json`` (device, versions, command, numbers) and ``host_launch-<device>.png`` into
``--out``. Usage: ``python -m benchmarks.host_launch --device cpu --out results/bench`` (also ``mixerzoo bench
host_launch ...``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

REPS = 15
SMALL_SHAPES = {"batch": 1, "heads": 2, "headdim": 128, "qk_dim": 16}


def _timed(fn, n):
    """Host microseconds per call: best over REPS repetitions of n calls (warm-up first)."""
    for _ in range(5):
        fn()
    best = float("inf")
    for _ in range(REPS):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return 1e6 * best


class _Nothing(torch.autograd.Function):
    """The floor: an autograd.Function with three inputs that launches nothing."""

    @staticmethod
    def forward(ctx, a, b, c):
        return torch.empty_like(a)

    @staticmethod
    def backward(ctx, g):
        return torch.empty_like(g), None, None


SCAN_SHAPES = {"batch": 8, "heads": 12, "headdim": 64, "d_state": 64}
SMALL_SCAN_SHAPES = {"batch": 1, "heads": 2, "headdim": 64, "d_state": 64}


def _products(device, on_gpu):
    """name -> (module whose launch function to record, attribute, the product on the leaves, the leaves, whether
    its backward is kernels only: the scan's also sums the shared generators' gradients over heads and zeroes its
    atomic targets with torch ops, which on the CPU compute for real)."""
    from benchmarks.kernels_matfree import SHAPES, VANDERMONDE_SCALE, _inputs
    from kernels import cauchy as kcc, chebyshev as kc, ssd
    shapes = SHAPES if on_gpu else SMALL_SHAPES
    sc = SCAN_SHAPES if on_gpu else SMALL_SCAN_SHAPES
    g = torch.Generator(device=device).manual_seed(0)
    B, H, P, N = sc["batch"], sc["heads"], sc["headdim"], sc["d_state"]
    # the Hydra layer's product: x, shared B / C generators (one per batch element, broadcast over heads), the
    # log-decays for both directions (here one), the diagonal delta
    scan_leaves = [torch.randn(B, H, 512, P, device=device, generator=g).to(torch.bfloat16),
                   torch.randn(B, 1, 512, N, device=device, generator=g).to(torch.bfloat16),
                   torch.randn(B, 1, 512, N, device=device, generator=g).to(torch.bfloat16),
                   -torch.rand(B, H, 512, device=device, generator=g),
                   torch.randn(B, H, 512, device=device, generator=g)]

    def scan(x, b, c, log_a, delta):
        b, c = b.expand(B, H, 512, N), c.expand(B, H, 512, N)
        return ssd.quasiseparable_matmul(x, b, c, log_a, delta, b, c, log_a, shift=True)
    return {
        "vandermonde": (kc, "launch",
                        lambda x, q, k: kc.vandermonde_chebyshev_product(x, q, k, VANDERMONDE_SCALE, 1e-6),
                        list(_inputs("vandermonde", 512, device, torch.bfloat16, 0, shapes)), True),
        "cauchy": (kcc, "launch", lambda x, q, k: kcc.cauchy_expsum_product(x, q, k, 1e-3),
                   list(_inputs("cauchy", 512, device, torch.bfloat16, 0, shapes)), True),
        "quasiseparable scan": (ssd, "_launch", scan, scan_leaves, False),
    }


def run(device: str, out: str, n: int = 200):
    import triton

    import kernels._launch as kl
    from benchmarks.kernels_matfree import SHAPES
    on_gpu = device.startswith("cuda")
    if on_gpu:
        if not torch.cuda.is_available():
            raise SystemExit("host_launch: --device cuda but CUDA is not available")
        sync = torch.cuda.synchronize
    else:
        from benchmarks import fake_cuda
        fake_cuda.install()
        sync = lambda: None  # noqa: E731
    rows = []
    for kind, (mod, attr, product, inputs, kernels_only) in _products(device, on_gpu).items():
        if not on_gpu and hasattr(mod, "check_device"):
            mod.check_device = lambda *a: None           # CPU tensors stand in for CUDA ones (fake driver)
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        gy = torch.randn_like(inputs[0])

        def fwd_bwd():
            for t in leaves:
                t.grad = None
            product(*leaves).backward(gy)

        # the launches of one fwd+bwd, recorded as the product issues them
        recorded, plain = [], getattr(mod, attr)

        def recording(fn, grid, *args, **kwargs):
            recorded.append((fn, grid, args, kwargs))
            return plain(fn, grid, *args, **kwargs)
        setattr(mod, attr, recording)
        t0 = time.perf_counter()
        fwd_bwd()                                        # compiles (first call)
        sync()
        setattr(mod, attr, plain)
        print(f"{kind}: {len(recorded)} launches per fwd+bwd (first call {time.perf_counter() - t0:.1f} s)",
              flush=True)
        seen = {}
        for fn, grid, args, kwargs in recorded:
            name = fn.__name__.strip("_")
            seen[name] = seen.get(name, 0) + 1
            label = f"{kind}: {name}" + (f" #{seen[name]}" if seen[name] > 1 else "")
            row = {"name": label, "what": "one launch"}
            for mode in (False, True):
                kl.DIRECT = mode
                row["cached_us" if mode else "jit_us"] = _timed(lambda: kl.launch(fn, grid, *args, **kwargs), n)
                sync()
            rows.append(row)
        del recorded[:]
        # the whole product, and its pieces (how far the fwd+bwd exceeds their sum is the engine's graph handling)
        y = product(*leaves)
        function = getattr(y.grad_fn, "_forward_cls", None)       # our autograd.Function, for the direct call

        def backward_retained():
            for t in leaves:
                t.grad = None
            y.backward(gy, retain_graph=True)
        whole = [("forward", lambda: product(*inputs), False),
                 ("forward in grad mode (graph built, then dropped)", lambda: product(*leaves), True)]
        if on_gpu or kernels_only:        # (on the CPU the scan's backward torch ops would be CPU compute)
            whole += [("backward through the engine (graph retained)", backward_retained, True),
                      ("forward+backward", fwd_bwd, True)]
            if function is not None:
                whole.insert(2, ("backward() called directly (no engine)",
                                 lambda: function.backward(y.grad_fn, gy), False))
        for what, fn, grad in whole:
            row = {"name": f"{kind}: {what}", "what": "product"}
            for mode in (False, True):
                kl.DIRECT = mode
                with torch.set_grad_enabled(grad):
                    row["cached_us" if mode else "jit_us"] = _timed(fn, n)
                sync()
            rows.append(row)
        del y

        def nothing():
            for t in leaves:
                t.grad = None
            _Nothing.apply(*leaves[:3]).backward(gy)
        if kind == "cauchy":
            us = _timed(nothing, n)
            sync()
            rows.append({"name": "do-nothing autograd.Function: forward+backward", "what": "floor", "jit_us": us,
                         "cached_us": us})
    eager = _eager_medians(kl) if on_gpu else None
    kl.DIRECT = True
    for r in rows:
        r["saved_us"] = r["jit_us"] - r["cached_us"]
    props = torch.cuda.get_device_properties(0) if on_gpu else None
    tag = "cuda" if on_gpu else "cpu"
    payload = {
        "benchmark": "host time of the matrix-free products' launches, JITFunction.run vs kernels._launch's cache",
        "command": " ".join([os.path.basename(sys.executable), "-m", "benchmarks.host_launch"] + sys.argv[1:]),
        "device": props.name if on_gpu else (f"cpu ({_cpu_name()}, {os.cpu_count()} "
                                             "cores), no GPU: benchmarks.fake_cuda in place of the driver, kernels "
                                             "compiled for sm_90"),
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version()},
        "timestamp": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "shapes": {"matrix-free": {**(SHAPES if on_gpu else SMALL_SHAPES), "L": 512, "dtype": "bfloat16"},
                   "scan": {**(SCAN_SHAPES if on_gpu else SMALL_SCAN_SHAPES), "L": 512, "dtype": "bfloat16",
                            "generators": "shared (one per batch element, broadcast over heads)"}},
        "timing": f"host us per call, issued back to back without a sync; best of {REPS} repetitions of {n} calls",
        "results": rows,
        "eager_L512": eager,
    }
    os.makedirs(out, exist_ok=True)
    json_path = os.path.join(out, f"host_launch-{tag}.json")
    png_path = os.path.join(out, f"host_launch-{tag}.png")
    with open(json_path + ".tmp", "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(json_path + ".tmp", json_path)
    _plot(rows, png_path, payload["device"])
    for r in rows:
        print(f"{r['name']:72s} {r['jit_us']:8.1f} {r['cached_us']:8.1f} us  (saved {r['saved_us']:6.1f})")
    return [json_path, png_path]


PAPER_JSON = os.path.join(os.path.dirname(__file__), "..", "results", "bench", "kernels_matfree.json")
EAGER_REPEATS = 5


def _eager_medians(kl):
    """The issue's L = 512 target, measured as the matrix-free benchmark measures it (its own method callables,
    shapes and ``do_bench`` medians of eager fwd+bwd calls), EAGER_REPEATS times each with the launch cache on and
    off (the eager medians are host-bound and vary from run to run), once as CUDA-graph replays, and the speed-up
    over the paper's code: its committed fwd+bwd median at L = 512 (``results/bench/kernels_matfree.json``,
    method ``materialize``) over each median."""
    from triton.testing import do_bench

    from benchmarks.kernels_matfree import SHAPES, _graph_time, _inputs, _methods, _warm_up_clocks
    paper = {}
    if os.path.exists(PAPER_JSON):
        with open(PAPER_JSON) as f:
            for r in json.load(f)["results"]:
                if r["method"] == "materialize" and r["L"] == 512 and "fwd_bwd_ms" in r:
                    paper[r["kind"]] = r["fwd_bwd_ms"]
    _warm_up_clocks()
    out = {}
    for kind, method in (("cauchy", "expsum_triton"), ("vandermonde", "chebyshev")):
        fn = _methods(kind)[method]
        x, q, k = _inputs(kind, 512, "cuda", torch.bfloat16, 0, SHAPES)
        leaves = [t.detach().clone().requires_grad_() for t in (x, q, k)]
        gy = torch.randn_like(x)

        def fwd_bwd():
            for t in leaves:
                t.grad = None
            fn(*leaves).backward(gy)
        rec = {"method": method, "paper_fwd_bwd_ms": paper.get(kind)}
        for mode in (True, False):
            kl.DIRECT = mode
            fwd_bwd()
            rec["cache_on_ms" if mode else "cache_off_ms"] = [
                do_bench(fwd_bwd, warmup=25, rep=100, return_mode="median") for _ in range(EAGER_REPEATS)]
        kl.DIRECT = True
        rec["graph_ms"] = _graph_time(lambda: fn(*leaves).backward(gy), do_bench)
        for t in leaves:
            t.grad = None
        if rec["paper_fwd_bwd_ms"]:
            for key in ("cache_on_ms", "cache_off_ms"):
                rec[key.replace("_ms", "_speedup")] = [rec["paper_fwd_bwd_ms"] / v for v in rec[key]]
            rec["graph_speedup"] = rec["paper_fwd_bwd_ms"] / rec["graph_ms"]
        out[kind] = rec
        print(f"{kind} {method} eager fwd+bwd at L = 512, cache on: "
              f"{', '.join(f'{v:.3f}' for v in rec['cache_on_ms'])} ms; off: "
              f"{', '.join(f'{v:.3f}' for v in rec['cache_off_ms'])} ms; replayed {rec['graph_ms']:.3f} ms; "
              f"paper's code {rec['paper_fwd_bwd_ms']} ms", flush=True)
    return out


def _cpu_name():
    """The CPU's model name (Linux: /proc/cpuinfo), else the platform's processor field."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _plot(rows, path, device):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["name"] for r in rows][::-1]
    jit = [r["jit_us"] for r in rows][::-1]
    cached = [r["cached_us"] for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.5))
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], jit, height=0.4, label="kernel[grid](...) (JITFunction.run)")
    ax.barh([y - 0.2 for y in ys], cached, height=0.4, label="kernels._launch.launch (cached)")
    ax.set_yticks(list(ys), names, fontsize=7)
    ax.set_xlabel("host microseconds per call")
    ax.set_title(f"Host time at L = 512 ({device.split(':')[0]})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--out", default="results/bench")
    p.add_argument("-n", type=int, default=200, help="calls per repetition (default 200)")
    a = p.parse_args(argv)
    if a.n < 1:
        p.error(f"-n must be >= 1, got {a.n}")
    if a.device == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1":
        p.error("--device cpu measures compiled-kernel launches with a stand-in driver: unset TRITON_INTERPRET")
    for path in run(a.device, a.out, a.n):
        print(path)


if __name__ == "__main__":
    main()
