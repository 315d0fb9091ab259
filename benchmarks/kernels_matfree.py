"""Benchmark: matrix-free Cauchy / Vandermonde products (Triton) against their peers.

Shapes are the Hydra paper's sequence-aligned Cauchy/Vandermonde mixers in BERT-base
(d_model 768, expand 2 -> 1536 channels, headdim 128 -> 12 heads, qk_dim 16; Hwang et al. 2024,
arXiv 2407.09941, ``hydra/bert/yamls/pretrain/matrix_mixer/cauchy_dd.yaml``) at batch 8 in bfloat16,
for L = 512 ... 16384. For each product it measures forward and forward+backward time
(``triton.testing.do_bench`` median after warm-up, fresh random inputs per L) and the peak extra device
memory of one forward+backward, for

* ``triton``: :func:`kernels.cauchy_matmul` / :func:`kernels.vandermonde_matmul` (exact, tiled);
* ``torch_tiled`` / ``torch_expsum``: the torch algorithms of ``structured/`` (exact tiled; Cauchy's
  approximate exponential-sum expansion);
* ``materialize``: the paper code's way, the (B, H, L, L, d) tensor of terms in bf16 summed over d,
  then a batched matmul (out-of-memory is caught and recorded);
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` at the same shapes
  (q, k head dim 16, v head dim 128), a familiar yardstick.

Writes ``kernels_matfree.json`` (device, versions, command, all numbers) and ``kernels_matfree.png``
(time vs L, log-log) into ``out``. Usage: ``python -m benchmarks.kernels_matfree --out results/bench``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import torch

BATCH, HEADS, HEADDIM, QK_DIM = 8, 12, 128, 16
LENGTHS = [512, 1024, 2048, 4096, 8192, 16384]
QUICK_LENGTHS = [512, 2048]
VANDERMONDE_SCALE = 1e-3          # Hydra's code (notes section 1.3)
SINGLE_SHOT_S = 0.5               # slower than this: one timed run instead of do_bench
GIVE_UP_S = 3.0                   # predicted slower than this at the next L (quadratic in L): not run
KINDS = ("cauchy", "vandermonde", "sdpa")
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
    """name -> fn(x, q, k) for one product kind."""
    import kernels
    if kind == "cauchy":
        from structured.cauchy import cauchy_matmul_expsum, cauchy_matmul_tiled
        c = 0.0
        return {
            "triton": lambda x, q, k: kernels.cauchy_matmul(x, q, k, c),
            "torch_tiled": lambda x, q, k: cauchy_matmul_tiled(x, q, k, c),
            "torch_expsum": lambda x, q, k: cauchy_matmul_expsum(x, q, k, c),
            "materialize": lambda x, q, k: _materialized_cauchy(x, q, k, c),
        }
    from structured.vandermonde import vandermonde_matmul_tiled
    s = VANDERMONDE_SCALE
    return {
        "triton": lambda x, q, k: kernels.vandermonde_matmul(x, q, k, s),
        "torch_tiled": lambda x, q, k: vandermonde_matmul_tiled(x, q, k, s),
        "materialize": lambda x, q, k: _materialized_vandermonde(x, q, k, s),
    }


def _inputs(kind, L, device, dtype, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(BATCH, HEADS, L, HEADDIM, device=device, dtype=dtype, generator=g)
    q = torch.randn(BATCH, HEADS, L, QK_DIM, device=device, dtype=torch.float32, generator=g)
    k = torch.randn(BATCH, HEADS, L, QK_DIM, device=device, dtype=torch.float32, generator=g)
    if kind == "cauchy":   # the paper's positive nodes exp(q) + b, b = 0.5
        q, k = torch.exp(0.5 * q) + 0.5, torch.exp(0.5 * k) + 0.5
    return x, q.to(dtype), k.to(dtype)


def _time(fn, do_bench):
    """Median ms; a single synchronized run when one call is slower than SINGLE_SHOT_S."""
    fn()   # compile / autotune outside the timed region
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    if first > SINGLE_SHOT_S:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return 1e3 * (time.perf_counter() - t0), "single run"
    return do_bench(fn, warmup=25, rep=100, return_mode="median"), "do_bench median"


def _measure(fn, args, do_bench):
    """fwd ms, fwd+bwd ms, peak extra MB of one fwd+bwd (or the error)."""
    x, q, k = args
    leaves = [t.detach().clone().requires_grad_() for t in (x, q, k)]
    gy = torch.randn_like(x)
    rec = {}
    try:
        with torch.no_grad():
            rec["fwd_ms"], rec["fwd_timing"] = _time(lambda: fn(*args), do_bench)

        def fwd_bwd():
            for t in leaves:
                t.grad = None
            fn(*leaves).backward(gy)
        rec["fwd_bwd_ms"], rec["fwd_bwd_timing"] = _time(fwd_bwd, do_bench)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fwd_bwd()
        torch.cuda.synchronize()
        rec["peak_extra_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    except torch.cuda.OutOfMemoryError:
        rec["error"] = "out of memory"
    finally:
        for t in leaves:
            t.grad = None
        torch.cuda.empty_cache()
    return rec


def _sdpa(L, device, dtype, seed):
    import torch.nn.functional as F
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(BATCH, HEADS, L, QK_DIM, device=device, dtype=dtype, generator=g)
    k = torch.randn(BATCH, HEADS, L, QK_DIM, device=device, dtype=dtype, generator=g)
    v = torch.randn(BATCH, HEADS, L, HEADDIM, device=device, dtype=dtype, generator=g)
    return (lambda a, b, c: F.scaled_dot_product_attention(b, c, a)), (v, q, k)


def _targets(results):
    """The issue's targets, read off the results (ratios of fwd+bwd medians; None where not measured)."""
    get = {(r["kind"], r["method"], r["L"]): r for r in results}

    def ratio(a, b, key="fwd_bwd_ms"):
        ra, rb = get.get(a, {}), get.get(b, {})
        return ra[key] / rb[key] if key in ra and key in rb else None
    out = {}
    for kind in ("cauchy", "vandermonde"):
        big = get.get((kind, "triton", max(LENGTHS)), {})
        out[kind] = {
            "speedup_vs_materialize_L512_fwd_bwd (target >= 20)": ratio((kind, "materialize", 512),
                                                                         (kind, "triton", 512)),
            "speedup_vs_materialize_L512_fwd": ratio((kind, "materialize", 512), (kind, "triton", 512), "fwd_ms"),
            "slowdown_vs_sdpa_L2048_fwd_bwd (target <= 5)": ratio((kind, "triton", 2048), ("sdpa", "sdpa", 2048)),
            "slowdown_vs_sdpa_L2048_fwd": ratio((kind, "triton", 2048), ("sdpa", "sdpa", 2048), "fwd_ms"),
            f"runs_at_L{max(LENGTHS)}": "fwd_bwd_ms" in big,
            "peak_extra_mb_by_L": {r["L"]: r.get("peak_extra_mb") for r in results
                                   if r["kind"] == kind and r["method"] == "triton"},
        }
    return out


def _write(path, payload):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def _plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds = sorted({r["kind"] for r in results if r["kind"] != "sdpa"})
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
        ax.set_title(f"{kind}: B={BATCH}, H={HEADS}, P={HEADDIM}, d={QK_DIM}, bf16 (v = out of memory)")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel("time [ms]")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(device="cuda", out="results/bench", quick=False, kinds=KINDS) -> list[str]:
    """Run the benchmark on ``device`` (CUDA only) and write JSON + PNG into ``out``; return their paths.

    ``kinds``: a subset of ``KINDS``. If ``out`` already holds a ``kernels_matfree.json``, its results for
    the kinds not run now are kept (so a benchmark can be completed in several device sessions).
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"kinds must be a subset of {KINDS}, got {tuple(kinds)}")
    if not str(device).startswith("cuda"):
        raise ValueError(f"device must be a CUDA device for the kernel benchmark, got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch.cuda.is_available() is False")
    import triton
    from triton.testing import do_bench

    from kernels import _matfree_tiled as _matfree

    os.makedirs(out, exist_ok=True)
    json_path = os.path.join(out, "kernels_matfree.json")
    png_path = os.path.join(out, "kernels_matfree.png")
    dtype = torch.bfloat16
    lengths = QUICK_LENGTHS if quick else LENGTHS
    props = torch.cuda.get_device_properties(device)
    payload = {
        "benchmark": "matrix-free Cauchy / Vandermonde products vs peers",
        "command": " ".join([os.path.basename(sys.executable), "-m", "benchmarks.kernels_matfree"] + sys.argv[1:]),
        "device": props.name, "multiprocessors": props.multi_processor_count,
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
                     "python": platform.python_version()},
        "shapes": {"batch": BATCH, "heads": HEADS, "headdim": HEADDIM, "qk_dim": QK_DIM, "dtype": "bfloat16",
                   "vandermonde_scale": VANDERMONDE_SCALE, "cauchy_c": 0.0},
        "timing": "triton.testing.do_bench median (warmup 25 ms, rep 100 ms); one synchronized run when a "
                  f"call exceeds {SINGLE_SHOT_S} s; peak_extra_mb = max_memory_allocated during one fwd+bwd "
                  "minus the inputs",
        "results": [],
    }
    if os.path.exists(json_path):
        with open(json_path) as f:
            old = json.load(f)
        payload["results"] = [r for r in old.get("results", []) if r["kind"] not in kinds]
        payload["accuracy_vs_float64"] = {k: v for k, v in old.get("accuracy_vs_float64", {}).items()
                                          if k not in kinds}
        payload["earlier_commands"] = old.get("earlier_commands", []) + [old.get("command")]
    results = payload["results"]
    for kind in [k for k in ("cauchy", "vandermonde") if k in kinds]:
        methods = _methods(kind)
        given_up = {}
        for L in lengths:
            args = _inputs(kind, L, device, dtype, seed=L)
            for name, fn in methods.items():
                rec = {"kind": kind, "method": name, "L": L}
                if name in given_up:
                    rec["error"] = given_up[name]
                else:
                    rec.update(_measure(fn, args, do_bench))
                    slowest = max(rec.get("fwd_ms", 0), rec.get("fwd_bwd_ms", 0))
                    if 4 * slowest > 1e3 * GIVE_UP_S and name != "triton":   # ours runs at every L
                        given_up[name] = f"not run: predicted > {GIVE_UP_S} s from {slowest:.0f} ms at L={L}"
                    if rec.get("error") == "out of memory":
                        given_up[name] = f"not run: out of memory at L={L}"
                if name == "triton" and L >= _matfree.AUTOTUNE_MIN_LENGTH:
                    rec["configs"] = {role: str(getattr(_matfree._tuned(f"{kind}_matmul", role), "best_config", None))
                                      for role in ("fwd", "cols", "rows")}
                if name == "triton" and "fwd_ms" in rec:
                    evals = BATCH * HEADS * L * L * QK_DIM * (1 if kind == "cauchy" else 2)
                    rec["special_fn_evals_per_s_fwd"] = evals / (rec["fwd_ms"] * 1e-3)
                    rec["fraction_of_mufu_peak_fwd"] = rec["special_fn_evals_per_s_fwd"] / (
                        16 * props.multi_processor_count * H100_SXM_BOOST_HZ)
                results.append(rec)
                print(json.dumps(rec), flush=True)
                _write(json_path, payload)
            if L == lengths[0]:   # one accuracy check per kind against the exact torch path (same inputs)
                with torch.no_grad():
                    ref = methods["torch_tiled"](*(t.double() for t in args))
                    mine = methods["triton"](*args).double()
                payload.setdefault("accuracy_vs_float64", {})[kind] = {
                    "L": L, "rel_fro_error": ((mine - ref).norm() / ref.norm()).item()}
            del args
            torch.cuda.empty_cache()
    for L in (lengths if "sdpa" in kinds else []):
        fn, args = _sdpa(L, device, dtype, seed=L)
        rec = {"kind": "sdpa", "method": "sdpa", "L": L, **_measure(fn, args, do_bench)}
        results.append(rec)
        print(json.dumps(rec), flush=True)
    payload["targets"] = _targets(results)
    _write(json_path, payload)
    _plot(results, png_path)
    _print_table(results)
    return [json_path, png_path]


def _print_table(results):
    fmt = lambda r, key: (f"{r[key]:.3g}" if key in r else r.get("error", "-")[:12])
    print(f"{'kind':12s} {'method':13s} {'L':>6s} {'fwd ms':>12s} {'fwd+bwd ms':>12s} {'peak MB':>12s}")
    for r in results:
        print(f"{r['kind']:12s} {r['method']:13s} {r['L']:6d} {fmt(r, 'fwd_ms'):>12s} {fmt(r, 'fwd_bwd_ms'):>12s} "
              f"{fmt(r, 'peak_extra_mb'):>12s}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="results/bench")
    p.add_argument("--quick", action="store_true", help=f"only L in {QUICK_LENGTHS}")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {KINDS}")
    a = p.parse_args(argv)
    for path in run(a.device, a.out, a.quick, tuple(k for k in a.kinds.split(",") if k)):
        print(path)


if __name__ == "__main__":
    main()
