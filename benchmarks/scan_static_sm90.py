"""Static (no-GPU) anatomy of the scan kernels on sm_90: what Triton 3.6 + ptxas make of each launch.

The scan entry points (:func:`kernels.ssd.quasiseparable_matmul`, :func:`kernels.ssd.semiseparable_matmul`)
are run forward and backward on CPU tensors with every Triton kernel replaced by a recorder, so the launches
(grid, arguments, constexprs, warps, stages) are exactly the ones the planner and launch code choose. Each
recorded launch is then specialized the way Triton's JIT would (``native_specialize_impl``: pointer
alignment, integers equal to 1 or divisible by 16) and compiled ahead of time for ``GPUTarget("cuda", 90,
32)`` down to a cubin with the wheel's own ptxas. Reported per launch: registers, spill bytes (ptxas -v),
shared memory, warps, grid and waves on 132 SMs, the matrix instructions (wgmma / mma.sync in PTX,
HGMMA / HMMA in SASS), FMA counts, atomics, and the dot FLOPs and load/store bytes per program and chunk
read from the TTIR (static counts: every op of the per-chunk loop body once).

Usage (no GPU needed; triton 3.6 unpacked at /tmp/tri36)::

    PYTHONPATH=/tmp/tri36:. python -m benchmarks.scan_static_sm90 --out results/bench
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import tempfile

import torch
import triton
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.compiler import ASTSource

from kernels import _ssd_triton as K
from kernels import ssd

# The launch settings measured on the H100 (results/bench/kernels-cuda.json, kernel_launch).
BENCH_TUNING = {"block_v": 64, "num_warps": 4, "num_stages": 2, "bwd_num_warps": 4, "bwd_num_stages": 3,
                "bwd_atomic_sum": True, "bwd_split": True, "bwd_states_pair": False}
# Shapes: the benchmark's (benchmarks/kernels.py) and the lab model's
# (d_state 256, headdim 32, batch 64, L 128; 16 heads assumed = 2 * d_model 256 / headdim 32).
SHAPES = {"bench": dict(B=8, H=24, L=4096, N=64, P=64), "lab": dict(B=64, H=16, L=128, N=256, P=32)}
H100 = dict(sms=132, smem_per_sm=228 * 1024, regs_per_sm=65536, bf16_tflops=989.0, hbm_tbs=3.35)
JIT_FNS = ("_upper_states_kernel", "_sweep_kernel", "_bwd_states_kernel", "_bwd_sweep_kernel")
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


# Methods: the product run and TUNING changes on top of BENCH_TUNING ('qs_nosplit': the backward's other
# arrangement, one sweep program per batch element, for comparison; '*_per_role': the split sweep as one
# role-specialized launch per role, TUNING["bwd_split_launch"] = "per_role").
METHODS = {"qs": ("qs", {}), "causal": ("causal", {}), "qs_nosplit": ("qs", {"bwd_split": False}),
           "qs_per_role": ("qs", {"bwd_split_launch": "per_role"}),
           "causal_per_role": ("causal", {"bwd_split_launch": "per_role"})}
# What main() analyses by default, (shape, method).
RUNS = [("bench", "qs"), ("bench", "causal"), ("bench", "qs_nosplit"), ("lab", "qs"), ("lab", "causal"),
        ("bench", "qs_per_role"), ("bench", "causal_per_role"), ("lab", "qs_per_role"),
        ("lab", "causal_per_role")]


def record_launches(method: str, B: int, H: int, L: int, N: int, P: int) -> list:
    """Run ``method`` (see METHODS; 'qs': Hydra's product as benchmarked, shift, shared B/C over heads;
    'causal': one SSD call) forward + backward on CPU with the Triton kernels replaced by recorders;
    returns the launches."""
    product, overrides = METHODS[method]
    log = []

    class Recorder:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            return lambda *args, **kw: log.append(dict(fn=self.fn, grid=tuple(grid), args=args, kw=kw))

    saved = {n: getattr(K, n) for n in JIT_FNS}
    tuning = dict(ssd.TUNING)
    try:
        for n in JIT_FNS:
            setattr(K, n, Recorder(saved[n]))
        ssd.TUNING.update(BENCH_TUNING, **overrides)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, H, L, P, generator=g).to(torch.bfloat16).requires_grad_()
        b = torch.randn(B, 1, L, N, generator=g).to(torch.bfloat16).requires_grad_()
        c = torch.randn(B, 1, L, N, generator=g).to(torch.bfloat16).requires_grad_()
        log_a = (-torch.rand(B, H, L, generator=g) * 0.1).requires_grad_()
        delta = torch.randn(B, H, L, generator=g).requires_grad_()
        if product == "qs":
            y = ssd.quasiseparable_matmul(x, b, c, log_a, delta, b, c, log_a, shift=True)
        else:
            y = ssd.semiseparable_matmul(x, b, c, log_a)
        y.backward(torch.ones_like(y))
    finally:
        for n in JIT_FNS:
            setattr(K, n, saved[n])
        ssd.TUNING.clear()
        ssd.TUNING.update(tuning)
    return log


def kernel_name(launch: dict, method: str) -> str:
    fn, kw = launch["fn"], launch["kw"]
    if fn is K._upper_states_kernel:
        return "upper_states"
    if fn is K._sweep_kernel:
        return "sweep" if kw["HAS_UP"] else "sweep_causal"
    if fn is K._bwd_states_kernel:
        return "bwd_states" + ("_pair" if kw["PAIR"] else "") + ("_causal" if METHODS[method][0] == "causal" else "")
    role = f"_role{kw['ROLE']}" if kw.get("ROLE", -1) >= 0 else ""
    return ("bwd_sweep" + ("_split" if kw["SPLIT"] else "") + role
            + ("_causal" if METHODS[method][0] == "causal" else ""))


def compile_launch(launch: dict):
    """Compile one recorded launch for sm_90 as Triton's JIT would specialize it; returns the CompiledKernel."""
    fn, args, kw = launch["fn"], launch["args"], dict(launch["kw"])
    opts = dict(num_warps=kw.pop("num_warps"), num_stages=kw.pop("num_stages"))
    sig, cx, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in kw:
            sig[name], cx[name] = "constexpr", kw[name]
            continue
        ty, key = native_specialize_impl(CUDABackend, args[i], False, True, True)
        sig[name] = ty
        if ty == "constexpr":
            cx[name] = key
        elif key:
            attrs[(i,)] = CUDABackend.parse_attr(key)
    return triton.compile(ASTSource(fn, sig, cx, attrs), target=GPUTarget("cuda", 90, 32), options=opts)


_DT_BYTES = {"bf16": 2, "f16": 2, "f32": 4, "f64": 8, "i32": 4, "i64": 8}


def _tensor_elems_bytes(ty: str):
    """'tensor<64x64x!tt.ptr<bf16>>' -> (4096, 2)."""
    m = re.search(r"tensor<([\dx]+)x(?:!tt\.ptr<)?(\w+)", ty)
    if not m:
        return 1, _DT_BYTES.get(re.sub(r"\W", "", ty.split("<")[-1]), 4)
    return math.prod(int(d) for d in m.group(1).split("x")), _DT_BYTES.get(m.group(2), 4)


def ttir_counts(ttir: str) -> dict:
    """Dot FLOPs and bytes of loads / stores / atomics of every op in the TTIR once (the loop body is the
    bulk: each op runs once per chunk; a branch-per-role kernel holds all roles' ops)."""
    flops, dots, mem = 0, [], {"load": 0, "store": 0, "atomic": 0}
    for line in ttir.splitlines():
        if "tt.dot " in line:
            a, bt = re.search(r":\s*(tensor<[^>]*>)\s*\*\s*(tensor<[^>]*>)", line).groups()
            M, Kd = (int(v) for v in re.search(r"<(\d+)x(\d+)x", a).groups())
            Nd = int(re.search(r"<\d+x(\d+)x", bt).group(1))
            flops += 2 * M * Kd * Nd
            dots.append(f"{M}x{Kd}x{Nd}")
        for op, key in (("tt.load ", "load"), ("tt.store ", "store"), ("tt.atomic_rmw ", "atomic")):
            if op in line and "tensor<" in line:
                ty = re.search(r"(tensor<[^>]*>>?)", line.split(":")[-1]).group(1)
                n, sz = _tensor_elems_bytes(ty)
                mem[key] += n * (4 if key == "atomic" else sz)
    return dict(dot_flops=flops, dots=dots, **{f"{k}_bytes": v for k, v in mem.items()})


def _count(text: str, pattern: str) -> int:
    return len(re.findall(pattern, text, flags=re.M))


def machine_counts(kernel) -> dict:
    """ptxas -v resources of the PTX, and instruction counts of the PTX and of the cubin's SASS."""
    ptx, cubin = kernel.asm["ptx"], kernel.asm["cubin"]
    arch = re.search(r"^\.target\s+(\S+)", ptx, flags=re.M).group(1)
    with tempfile.TemporaryDirectory() as d:
        p, c = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        open(p, "w").write(ptx)
        open(c, "wb").write(cubin)
        v = subprocess.run([os.path.join(BIN, "ptxas"), f"-arch={arch}", "-v", p, "-o", os.path.join(d, "v.o")],
                           capture_output=True, text=True).stderr
        sass = subprocess.run([os.path.join(BIN, "nvdisasm"), "-c", c], capture_output=True, text=True).stdout
    num = lambda pat: int(m.group(1)) if (m := re.search(pat, v)) else None  # noqa: E731
    return dict(
        arch=arch, regs=num(r"Used (\d+) registers"), spill_stores=num(r"(\d+) bytes spill stores"),
        spill_loads=num(r"(\d+) bytes spill loads"), stack=num(r"(\d+) bytes stack frame"),
        ptx_wgmma=_count(ptx, r"wgmma\.mma_async"), ptx_mma_sync=_count(ptx, r"\bmma\.sync"),
        ptx_fma_f32=_count(ptx, r"fma\.rn\.f32"), ptx_red_atom=_count(ptx, r"\b(red|atom)\.global"),
        ptx_red_ops=sorted(set(re.findall(r"\b((?:red|atom)\.global[\w.]*)", ptx))),
        sass_hgmma=_count(sass, r"\bHGMMA\."), sass_hmma=_count(sass, r"\bHMMA\."),
        sass_ffma=_count(sass, r"\bFFMA\b"), sass_red_atom=_count(sass, r"\b(REDG|RED|ATOMG|ATOM)\."),
        sass_ldl_stl=_count(sass, r"\b(LDL|STL)\b"), sass_mufu_ex2=_count(sass, r"MUFU\.EX2"),
        sass_bar=_count(sass, r"\bBAR\.SYNC"), sass_instrs=_count(sass, r"^\s+/\*[0-9a-f]{4,}\*/"),
        ptxas_log=v.strip())


def analyse(method: str, shape: str) -> list:
    s = SHAPES[shape]
    rows = []
    for launch in record_launches(method, **s):
        name = kernel_name(launch, method)
        ck = compile_launch(launch)
        kw, grid = launch["kw"], launch["grid"]
        programs = math.prod(grid)
        shared, warps = ck.metadata.shared, ck.metadata.num_warps
        m = machine_counts(ck)
        regs_per_prog = (m["regs"] or 0) * 32 * warps
        per_sm = min(H100["smem_per_sm"] // max(shared, 1), H100["regs_per_sm"] // max(regs_per_prog, 1),
                     64 // warps, 32)
        waves = math.ceil(programs / (H100["sms"] * max(per_sm, 1)))
        n_chunks = math.ceil(s["L"] / kw["BQ"])
        # A kernel with one branch per role (split sweep in one launch, unpaired states): each program runs
        # one branch.
        branches = (3 if kw.get("SPLIT") and kw.get("ROLE", -1) < 0
                    else grid[1] if name.startswith("bwd_states") and not kw["PAIR"] else 1)
        t = ttir_counts(ck.asm["ttir"])
        total_flops = t["dot_flops"] * n_chunks * programs / branches
        total_bytes = (t["load_bytes"] + t["store_bytes"] + t["atomic_bytes"]) * n_chunks * programs / branches
        rows.append(dict(
            method=method, shape=shape, kernel=name, grid=grid, programs=programs, waves_h100=waves,
            programs_per_sm=per_sm, n_chunks=n_chunks, serial_chunk_steps=waves * n_chunks,
            BQ=kw["BQ"], BG=kw.get("BG", kw.get("BN")), BV=kw.get("BV", kw.get("BP")), num_warps=warps,
            num_stages=ck.metadata.num_stages, shared_bytes=shared,
            constexprs={k: v for k, v in kw.items() if k not in ("PREC", "UPCAST", "ACC", "DEC", "num_warps",
                                                                   "num_stages")},
            **{k: v for k, v in m.items() if k != "ptxas_log"}, ptxas_log=m["ptxas_log"],
            dots_per_chunk=t["dots"], atomic_bytes_per_chunk=t["atomic_bytes"],
            total_gflop=total_flops / 1e9, total_l2_mbytes=total_bytes / 1e6,
            t_tensor_peak_us=total_flops / (H100["bf16_tflops"] * 1e12) * 1e6,
            t_bytes_at_hbm_us=total_bytes / (H100["hbm_tbs"] * 1e12) * 1e6))
    return rows


COLS = [("kernel", "kernel"), ("grid", "grid"), ("programs_per_sm", "prog/SM"), ("waves_h100", "waves"),
        ("serial_chunk_steps", "serial steps"), ("BQ", "BQ"), ("BV", "BV/BP"), ("num_warps", "warps"),
        ("num_stages", "stages"), ("shared_bytes", "smem B"), ("regs", "regs"), ("spill_stores", "spill st B"),
        ("spill_loads", "spill ld B"), ("sass_ldl_stl", "LDL/STL"), ("ptx_wgmma", "wgmma"),
        ("ptx_mma_sync", "mma.sync"), ("sass_hgmma", "HGMMA"), ("sass_hmma", "HMMA"), ("sass_ffma", "FFMA"),
        ("sass_red_atom", "RED/ATOM"), ("atomic_bytes_per_chunk", "atomic B/chunk (all roles)"),
        ("total_gflop", "GFLOP"), ("total_l2_mbytes", "L2 MB"), ("t_tensor_peak_us", "us @989TF"),
        ("t_bytes_at_hbm_us", "us @3.35TB/s")]


def to_markdown(rows: list) -> str:
    out = []
    for (method, shape) in dict.fromkeys((r["method"], r["shape"]) for r in rows):
        s = SHAPES[shape]
        out.append(f"\n#### {method}, {shape} shape (B={s['B']} H={s['H']} L={s['L']} N={s['N']} P={s['P']}, bf16)\n")
        out.append("| " + " | ".join(h for _, h in COLS) + " |")
        out.append("|" + "---|" * len(COLS))
        for r in (r for r in rows if (r["method"], r["shape"]) == (method, shape)):
            cell = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v).replace("|", "/")  # noqa: E731
            out.append("| " + " | ".join(cell(r[k]) for k, _ in COLS) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/bench")
    a = ap.parse_args(argv)
    rows = [r for shape, method in RUNS for r in analyse(method, shape)]
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "scan-static-sm90.json"), "w") as f:
        json.dump(dict(triton=triton.__version__, target="cuda sm_90 (warp 32)", tuning=BENCH_TUNING,
                       shapes=SHAPES, h100=H100, rows=rows), f, indent=1, default=str)
    table = to_markdown(rows)
    with open(os.path.join(a.out, "scan-static-sm90-table.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
