"""No GPU: compile the Chebyshev kernels (kernels/chebyshev.py) for sm_90 with Triton 3.6 and its ptxas, as the
benchmark's L = 512 launches specialize them (bf16 and float32), for several rows-kernel blocks, and print registers,
spill stores and SASS instruction counts (session 7: 4 warps spill, 8 do not, but 8 measured slower on the
H100; the library keeps (64, 4)).

    PYTHONPATH=/tmp/tri36:. python results/device-scripts/static_chebyshev_sm90.py
(/tmp/tri36 = the triton 3.6.0 manylinux wheel unzipped; see benchmarks/scan_static_sm90.py)
"""
import sys, torch
import kernels.chebyshev as kc
from benchmarks.scan_static_sm90 import compile_launch, machine_counts
log = []
class Rec:
    def __init__(self, fn): self.fn = fn
    def __getitem__(self, grid):
        def f(*args, **kw):
            kw.setdefault("num_warps", 4); kw.setdefault("num_stages", 2)
            log.append(dict(fn=self.fn, grid=grid, args=args, kw=kw))
        return f
for name in ("_cheb_prep_kernel", "_cheb_reduce_kernel", "_cheb_rows_kernel"):
    setattr(kc, name, Rec(getattr(kc, name)))
kc._interpreting = lambda: False
for cfg in [(64, 4), (64, 8)]:
    kc._BLOCKS["gpu"]["rows"] = cfg
    log.clear()
    for dt in (torch.bfloat16, torch.float32):
        x = torch.randn(96, 512, 128, dtype=dt, requires_grad=True)
        q = torch.randn(96, 512, 16, dtype=dt, requires_grad=True)
        k = torch.randn(96, 512, 16, dtype=dt, requires_grad=True)
        n_cap = kc.points_cap(512)
        y = kc._ChebyshevProduct.apply(x, q, k, kc._params(1e-6, n_cap, 1e-3, 512, "cpu"), n_cap, torch.float32,
                                       dt == torch.bfloat16, "ieee")
        y.backward(torch.randn_like(y))
    for l in log:
        if "rows" not in l["fn"].fn.__name__: continue
        ck = compile_launch(l)
        kw = {k: v for k, v in l["kw"].items() if k in ("SIGN", "WITH_OUT", "WITH_GRAD", "FAST")}
        print(cfg, l["fn"].fn.__name__, kw, {k: v for k, v in machine_counts(ck).items() if k in ("regs", "spill_stores", "sass_instrs")}, flush=True)
