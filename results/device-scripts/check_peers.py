"""On a CUDA device: do the benchmark's peers compute the benchmark's products? (float32, small L)

    bash results/device-scripts/install_peers.sh /root/peers
    PYTHONPATH=/root/peers:. python results/device-scripts/check_peers.py [--L 512]

Prints normwise relative errors, forward and gradients (x, b, c, log_a), of
* qs_paper with mamba_ssm's mamba_chunk_scan_combined  vs  qs_fused (this project's kernel),
* fla_simple_gla (fla's chunk_simple_gla)                vs  ss_causal (this project's causal kernel),
and of each against the float64 torch algorithms (structured) as ground truth. Both sides accumulate in
float32 (mamba's dots may use tf32: errors around 1e-3 are then expected; a layout or scaling mistake gives
errors of order 1). Exit status 1 when any forward error exceeds --tol. fla's gated backward is refused on
Hopper with Triton < 3.7.1 (fla issue #640): reported, not an error. First calls compile and autotune the
peers' kernels (tens of seconds).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks import kernels as bk

GRAD_KEYS = ("x", "b", "c", "log_a")


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def run(fn, t):
    leaves = {k: v.detach().clone().requires_grad_(k in GRAD_KEYS) for k, v in t.items()}
    y = fn(leaves)
    dy = torch.ones_like(y)
    try:
        y.backward(dy)
        grads = {k: leaves[k].grad for k in GRAD_KEYS}
    except Exception as e:  # fla's backward refusal
        grads = f"{type(e).__name__}: {e}"[:200]
    return y.detach(), grads


def compare(label, a, b, tol):
    (ya, ga), (yb, gb) = a, b
    err = rel(ya, yb)
    line = f"{label:42s} fwd {err:.2e}"
    if isinstance(ga, str) or isinstance(gb, str):
        line += f"  bwd: {ga if isinstance(ga, str) else gb}"
    else:
        line += "  grads " + " ".join(f"{k} {rel(ga[k], gb[k]):.2e}" for k in GRAD_KEYS)
    print(line, flush=True)
    return err <= tol


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--L", type=int, default=512)
    ap.add_argument("--tol", type=float, default=1e-2, help="largest forward relative error accepted")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("check_peers: needs a CUDA device", file=sys.stderr)
        return 1
    t0 = time.time()
    print("peers:", bk.peer_versions(), flush=True)
    t = bk.make_inputs(args.L, "cuda", dtype=torch.float32)
    t64 = {k: v.double() for k, v in t.items()}
    ok = True
    ref_qs = run(bk.qs_torch, t64)
    fused = run(bk.qs_fused, t)
    ok &= compare("qs_fused vs float64 torch", fused, ref_qs, args.tol)
    mamba = bk._mamba_chunk_scan()
    if mamba is None:
        print("mamba_ssm not importable: qs_paper falls back to this project's kernel (not checked)")
    else:
        paper = run(lambda s: bk.qs_paper(s, mamba), t)
        ok &= compare("qs_paper(mamba) vs qs_fused", paper, fused, args.tol)
        ok &= compare("qs_paper(mamba) vs float64 torch", paper, ref_qs, args.tol)
    print(f"  ({time.time() - t0:.0f} s)", flush=True)
    fla = bk._fla_simple_gla()
    if fla is None:
        print("fla not importable: fla_simple_gla not checked")
    else:
        import structured
        causal = run(bk.ss_causal, t)

        def ref_ss(s):
            b, c = (s[k].expand(-1, bk.H, -1, -1) for k in ("b", "c"))
            return structured.get("semiseparable")(b, c, s["log_a"], validate=False).matmul(s["x"])

        ref_causal = run(ref_ss, t64)
        ok &= compare("ss_causal vs float64 torch", causal, ref_causal, args.tol)
        gla = run(lambda s: bk.fla_simple_gla(s, fla), t)
        ok &= compare("fla_simple_gla vs ss_causal", gla, causal, args.tol)
        ok &= compare("fla_simple_gla vs float64 torch", gla, ref_causal, args.tol)
    print(f"check_peers: {'ok' if ok else 'FAILED'} in {time.time() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
