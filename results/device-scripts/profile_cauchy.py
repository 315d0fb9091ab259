"""Where a Cauchy exp-sum product's time goes on the GPU at the benchmark shape (batch 8, 12 heads, headdim 128,
qk_dim 16, bf16). Prints wall time per call with and without a device sync, then torch.profiler's top host ops
and CUDA kernels for a few calls. Session 5 found the old path host-bound (a sync per call to size the
expansion); session 6 ran it after each rewrite (results/bench/profile-cauchy-cuda.log, checks_s6b.sh).
``--kind vandermonde`` profiles the Vandermonde Chebyshev product (scale 1e-3, the benchmark's ``chebyshev`` row)
instead (session 7, checks_s7.sh).

    PYTHONPATH=. python results/device-scripts/profile_cauchy.py [--L 512] [--backward] [--kind vandermonde]
"""
import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.kernels_matfree import SHAPES, VANDERMONDE_SCALE, _inputs
from structured.cauchy import cauchy_matmul_expsum
from structured.vandermonde import vandermonde_matmul_chebyshev

ap = argparse.ArgumentParser()
ap.add_argument("--L", type=int, default=512)
ap.add_argument("--backward", action="store_true")
ap.add_argument("--calls", type=int, default=50)
ap.add_argument("--kind", choices=("cauchy", "vandermonde"), default="cauchy")
ap.add_argument("--cprofile", action="store_true", help="also cProfile the host side of the calls (where the host "
                "time of an eager call goes: Triton's launcher, autograd, allocations)")
args = ap.parse_args()
x, q, k = _inputs(args.kind, args.L, "cuda", torch.bfloat16, 0, SHAPES)
product = ((lambda x, q, k: cauchy_matmul_expsum(x, q, k, 0.0)) if args.kind == "cauchy"
           else (lambda x, q, k: vandermonde_matmul_chebyshev(x, q, k, VANDERMONDE_SCALE)))
leaves = [t.requires_grad_(args.backward) for t in (x, q, k)]


def call():
    y = product(*leaves)
    if args.backward:
        y.float().sum().backward()
    return y


for _ in range(3):
    call()
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(args.calls):
    call()
host = (time.perf_counter() - t) / args.calls
torch.cuda.synchronize()
total = (time.perf_counter() - t) / args.calls
print(f"{args.kind} L={args.L} backward={args.backward}: {1e3 * host:.3f} ms/call on the host before the final sync, "
      f"{1e3 * total:.3f} ms/call with it")
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(5):
        call()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=60))
if args.cprofile:
    import cProfile
    import pstats
    with cProfile.Profile() as cprof:
        for _ in range(args.calls):
            call()
        torch.cuda.synchronize()
    pstats.Stats(cprof).sort_stats("tottime").print_stats(30)
