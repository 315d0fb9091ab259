"""Run by tests/kernels/test_launch.py in a subprocess without TRITON_INTERPRET (the interpreter never reaches a
driver): with benchmarks.fake_cuda standing in for the CUDA driver, every launch of the Chebyshev and exp-sum
products, of the exact tiled Cauchy product and of the scans (quasiseparable, semiseparable), forward and backward,
goes through both ``kernel[grid](...)`` (JITFunction.run) and ``kernels._launch.launch``'s cached path, and the
two are compared:

* the cached path returns the very kernel object that JITFunction.run picked for these arguments (so the
  specialization matches: a wrong cache key would hand back a kernel compiled for other arguments);
* its launcher receives the same arguments (grid, stream, function, metadata, hooks, then every parameter;
  tensors as their addresses);
* JITFunction.run is not entered on a hit.

Prints one JSON line: {"launches": n, "hits": n, "mismatches": [...]}.
"""
import json
import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    raise SystemExit("launch_probe: unset TRITON_INTERPRET")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from benchmarks import fake_cuda  # noqa: E402

fake_cuda.install()
fake_cuda.record = True

import kernels._launch as kl  # noqa: E402
from kernels import _matfree_tiled as mt, cauchy as kcc, chebyshev as kc, ssd  # noqa: E402

for m in (kc, kcc, mt):
    m.check_device = lambda *a: None        # CPU tensors stand in for CUDA ones

jit_runs = [0]
_run = JITFunction.run


def counting_run(self, *args, **kwargs):
    jit_runs[0] += 1
    return _run(self, *args, **kwargs)


JITFunction.run = counting_run
mismatches, stats = [], {"launches": 0, "hits": 0}


def same(a, b):
    if a is b:
        return True
    if isinstance(a, torch.Tensor) and type(b) is int:        # the cached path passes tensors as their addresses
        return a.data_ptr() == b
    if type(a).__name__ == "LazyDict":
        return type(b).__name__ == "LazyDict" and a.data == b.data
    try:
        return bool(a == b)
    except Exception:
        return False


def both_ways(fn, grid, *args, **kwargs):
    """One launch through JITFunction.run, then the cached path twice (the first may fill the cache); compare."""
    stats["launches"] += 1
    kl.DIRECT = False
    k_jit = kl.launch(fn, grid, *args, **kwargs)
    via_jit = fake_cuda.calls[-1]
    kl.DIRECT = True
    kl.launch(fn, grid, *args, **kwargs)
    runs = jit_runs[0]
    k_direct = kl.launch(fn, grid, *args, **kwargs)
    via_direct = fake_cuda.calls[-1]
    name = fn.__name__
    if jit_runs[0] != runs:
        mismatches.append(f"{name}: the second cached launch entered JITFunction.run")
    else:
        stats["hits"] += 1
    if k_direct is not k_jit:
        mismatches.append(f"{name}: the cached path returned another compiled kernel than JITFunction.run")
    if len(via_jit) != len(via_direct):
        mismatches.append(f"{name}: {len(via_jit)} vs {len(via_direct)} launcher arguments")
    else:
        bad = [i for i, (a, b) in enumerate(zip(via_jit, via_direct)) if not same(a, b)]
        if bad:
            mismatches.append(f"{name}: launcher arguments differ at positions {bad}")
    return k_jit


kc.launch = kcc.launch = mt.launch = ssd._launch = both_ways


def product(kind, dtype, L, misaligned=False, broadcast_q=False):
    g = torch.Generator().manual_seed(L)
    B, H, P, D = 2, 3, 32, 4

    def make(shape, lo=None):
        n = int(torch.tensor(shape).prod())
        base = torch.empty(n + 8, dtype=dtype)
        t = (base[1:n + 1] if misaligned else base[:n]).view(shape)     # offset by one element: not 16-aligned
        t.copy_(torch.rand(shape, generator=g) + (0.5 if lo else -0.5))
        return t.requires_grad_()

    x = make((B, H, L, P))
    q = make((B, 1 if broadcast_q else H, L, D), lo=kind.startswith("cauchy"))
    k = make((B, H, L, D), lo=kind.startswith("cauchy"))
    if kind == "cauchy":
        y = kcc.cauchy_expsum_product(x, q, k, 1e-3)
    elif kind == "cauchy exact":
        y = kcc.cauchy_matmul(x, q, k)
    else:
        y = kc.vandermonde_chebyshev_product(x, q, k, 1e-3, 1e-6)
    y.backward(torch.randn(y.shape, generator=g).to(dtype))


def scan(kind, dtype, L, shared=True):
    g = torch.Generator().manual_seed(L)
    B, H, N, P = 2, 3, 32, 32
    x = torch.randn(B, H, L, P, generator=g).to(dtype).requires_grad_()
    gen = lambda: torch.randn(B, 1 if shared else H, L, N, generator=g).to(dtype).requires_grad_()  # noqa: E731
    b, c = gen(), gen()
    log_a = (-torch.rand(B, H, L, generator=g)).requires_grad_()
    e = lambda t: t.expand(B, H, L, N)  # noqa: E731
    if kind == "ss":
        y = ssd.semiseparable_matmul(x, e(b), e(c), log_a)
    else:
        delta = torch.randn(B, H, L, generator=g).requires_grad_()
        bu, cu = (b, c) if shared else (gen(), gen())
        y = ssd.quasiseparable_matmul(x, e(b), e(c), log_a, delta, e(bu), e(cu), log_a, shift=True)
    y.backward(torch.randn(y.shape, generator=g).to(dtype))


scan("qs", torch.bfloat16, 100)
scan("qs", torch.float32, 37, shared=False)
scan("ss", torch.bfloat16, 64)
product("vandermonde", torch.bfloat16, 64)
product("vandermonde", torch.bfloat16, 37, misaligned=True)     # same kernels, other specializations
product("vandermonde", torch.float32, 1, broadcast_q=True)      # L = 1: Triton makes the 1 a constant
product("cauchy", torch.float32, 48)
product("cauchy", torch.float32, 48, misaligned=True)
product("cauchy exact", torch.bfloat16, 40)                      # the exact tiled kernels (fixed config at short L)
print(json.dumps({**stats, "cache_entries": len(kl._CACHE), "mismatches": mismatches}))
