"""Where the host time of an eager Chebyshev (Vandermonde) fwd+bwd goes at L = 512 (the benchmark shape, bf16):
each piece is run N times back to back without a sync and timed on the host (the GPU queue absorbs the launches),
so the numbers are host microseconds per call. ``--kind cauchy``: the same for the Cauchy exp-sum product.
Session 7.

    PYTHONPATH=. python results/device-scripts/host_breakdown.py [--kind cauchy]
"""
import argparse
import time

import torch

import kernels
from benchmarks.kernels_matfree import SHAPES, VANDERMONDE_SCALE, _inputs
from kernels import chebyshev as kc
from structured.vandermonde import vandermonde_matmul_chebyshev

ap = argparse.ArgumentParser()
ap.add_argument("--kind", choices=("vandermonde", "cauchy"), default="vandermonde")
KIND = ap.parse_args().kind
N = 100
x, q, k = _inputs(KIND, 512, "cuda", torch.bfloat16, 0, SHAPES)


def timed(name, fn):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(N):
        fn()
    host = (time.perf_counter() - t0) / N
    torch.cuda.synchronize()
    print(f"{name:60s} {1e6 * host:8.1f} us/call on the host")


def cauchy_breakdown():
    from kernels import cauchy as kcc
    from structured.cauchy import DEFAULT_EPS, cauchy_matmul_expsum
    leaves = [t.detach().clone().requires_grad_() for t in (x, q, k)]
    gy = torch.randn_like(x)
    eps = DEFAULT_EPS[torch.bfloat16]
    L, P, D = 512, x.shape[-1], q.shape[-1]

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        cauchy_matmul_expsum(*leaves, 0.0).backward(gy)
    timed("fwd+bwd, cauchy_matmul_expsum (the benchmark row)", fwd_bwd)
    with torch.no_grad():
        timed("fwd, cauchy_matmul_expsum", lambda: cauchy_matmul_expsum(x, q, k, 0.0))
        timed("fwd, kernels.cauchy_expsum_product", lambda: kcc.cauchy_expsum_product(x, q, k, eps))
    quad, fc, fmax = kcc._quadrature(eps, x.device), kcc.expsum_chunk(eps), kcc.expsum_max_features(eps)
    q3, k3, x3 = q.reshape(-1, L, D).contiguous(), k.reshape(-1, L, D).contiguous(), x.reshape(-1, L, P)
    ut, vt, tab = kcc._expsum_prep(q3, k3, torch.float32, quad, fc, fmax)
    z = kcc._expsum_reduce(vt, x3, tab, fc, fmax, "ieee")
    y = torch.empty_like(x3)
    timed("_expsum_prep launch (+ 2 torch.empty)", lambda: kcc._expsum_prep(q3, k3, torch.float32, quad, fc, fmax))
    timed("_expsum_reduce launch (+ 1 torch.empty)", lambda: kcc._expsum_reduce(vt, x3, tab, fc, fmax, "ieee"))
    timed("_expsum_rows launch (forward)", lambda: kcc._expsum_rows(ut, z, tab, fc, "ieee", out=y))
    timed("expsum_chunk + expsum_max_features + _quadrature",
          lambda: (kcc.expsum_chunk(eps), kcc.expsum_max_features(eps), kcc._quadrature(eps, x.device)))
    y_g = kcc.cauchy_expsum_product(*leaves, eps)
    timed("backward through the engine (retain_graph)", lambda: y_g.backward(gy, retain_graph=True))
    timed("backward() called directly (no engine)", lambda: kcc._ExpSumProduct.backward(y_g.grad_fn, gy))


if KIND == "cauchy":
    cauchy_breakdown()
    raise SystemExit(0)

leaves = [t.detach().clone().requires_grad_() for t in (x, q, k)]
gy = torch.randn_like(x)
s, eps = VANDERMONDE_SCALE, 1e-6
L, P, D = 512, x.shape[-1], q.shape[-1]
x3, q3, k3 = x.reshape(-1, L, P), q.reshape(-1, L, D), k.reshape(-1, L, D)
n_cap = kc.points_cap(L)
prm = kc._params(eps, n_cap, s, L, x.device)
tab, z, zg = kc._prep(q3, k3, prm, n_cap, torch.float32, P)


def fwd_bwd():
    for t in leaves:
        t.grad = None
    vandermonde_matmul_chebyshev(*leaves, s).backward(gy)


from benchmarks.host_launch import _Nothing as Nothing  # noqa: E402  (the do-nothing Function, defined once)


def nothing_fwd_bwd():
    for t in leaves:
        t.grad = None
    Nothing.apply(*leaves).backward(gy)


bl = kc._blocks("rows")[0]
y = torch.empty_like(x3)
timed("fwd+bwd, vandermonde_matmul_chebyshev (the benchmark row)", fwd_bwd)
with torch.no_grad():
    timed("fwd, vandermonde_matmul_chebyshev", lambda: vandermonde_matmul_chebyshev(x, q, k, s))
    timed("fwd, kernels.vandermonde_chebyshev_product", lambda: kc.vandermonde_chebyshev_product(x, q, k, s, eps))
timed("kernels.enabled(x)", lambda: kernels.enabled(x))
timed("check_args", lambda: kc.check_args("f", x, q, k))
timed("_params (cached)", lambda: kc._params(eps, n_cap, s, L, x.device))
timed("_prep launch (+ 4 torch.empty)", lambda: kc._prep(q3, k3, prm, n_cap, torch.float32, P))
timed("_reduce launch", lambda: kc._reduce(k3, x3, prm, tab, z, True, "ieee"))
timed("rows launch (forward)", lambda: kc._rows(q3, z, prm, tab, y, y, None, 1, True, "ieee"))
timed("torch.empty (1 tensor)", lambda: torch.empty((96, 512, 128), dtype=torch.bfloat16, device="cuda"))
timed("autograd.Function doing nothing, fwd+bwd (3 leaves)", nothing_fwd_bwd)

# the backward alone: through the engine (retain_graph) and called directly on a recorded ctx (no engine)
y_g = kc.vandermonde_chebyshev_product(*leaves, s, eps)
timed("backward of our Function through the engine (retain_graph)", lambda: y_g.backward(gy, retain_graph=True))
ctx = y_g.grad_fn
timed("our backward() called directly (no engine)", lambda: kc._ChebyshevProduct.backward(ctx, gy))
g3 = gy.reshape(-1, L, P)
dx, dq, dk = torch.empty_like(x3), torch.empty_like(q3), torch.empty_like(k3)
timed("rows launch (backward, rows of k)", lambda: kc._rows(k3, zg, prm, tab, x3, dx, dk, -1, True, "ieee"))
timed("rows launch (backward, rows of q)", lambda: kc._rows(q3, z, prm, tab, g3, None, dq, 1, True, "ieee"))
timed("gy.reshape(...).to(...).contiguous()", lambda: gy.reshape(-1, L, P).to(x3.dtype).contiguous())
