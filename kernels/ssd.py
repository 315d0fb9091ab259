"""Fused chunked scans for the semiseparable (causal SSD) and quasiseparable (Hydra) products.

Public entry points (autograd-aware; forward and backward run Triton kernels):

* :func:`semiseparable_matmul` -- ``y = M x`` with ``m_ij = c_i . b_j exp(sum_{t=j+1..i} log_a_t)`` for
  ``i >= j`` (Mamba-2's SSD with a scalar decay per head), the product of
  :class:`structured.semiseparable.Semiseparable`;
* :func:`quasiseparable_matmul` -- Hydra's bidirectional product
  ``shift(SS_fwd(x)) + flip(shift(SS_bwd(flip(x)))) + delta * x`` (``shift=False``: the addition-based
  variant), the product of :class:`structured.quasiseparable.Quasiseparable`.

Both reduce to one generic quasiseparable operator (lower + upper triangle + diagonal, each triangle given by
row generators, column generators and log-decays with small index offsets; see :mod:`kernels._ssd_triton`).
Forward: one right-to-left kernel stores the upper triangle's chunk states, one left-to-right kernel forms the
output. Backward (one kernel pair for all gradients of that operator, causal or bidirectional): a
right-to-left kernel stores the two states that come from the right (the lower triangle's adjoint state and
the upper triangle's state), and one left-to-right kernel writes dx, the generator gradients (summed over
broadcast batch dims in the kernel), the log-decay gradients (running sums of ``b . db - c . dc``, carried by
the sweep) and the diagonal's gradient. It runs as one program per batch element that forms each chunk's
``C B^T`` and ``dy x^T`` once for all gradients, or as three (dx; column-generator gradients; row-generator
gradients), adjacent in launch order so that they share x and dy in L2 (``TUNING["bwd_split"]``); the
three run in one launch of one binary holding all roles, or as three launches of role-specialized binaries
(``TUNING["bwd_split_launch"]``).

Launch configurations (chunk, columns per program, stages) are chosen before launching from shared-memory
sizes measured ahead of time for sm_90 (:data:`SMEM_TABLE`, :func:`plan_candidates`), so that a launch does
not run out of shared memory; never with fewer than two pipeline stages.

Reference: T. Dao, A. Gu, "Transformers are SSMs" (arXiv 2405.21060), Section 6 (chunked SSD); S. Hwang,
A. Lahoti, T. Dao, A. Gu, "Hydra" (arXiv 2407.09941), Section 3 (quasiseparable mixer).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch

from . import _ssd_triton as _k
from . import interpreting as _interpreting

import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MAX_GRAM_DIM = 256
DEFAULT_CHUNK = 64
# Launch configuration (columns of V per program, warps, software-pipelining stages; None = Triton's
# default). Module-level so that benchmarks can sweep it; chosen on an H100 (see results/bench).
# H100, triton 3.6, B=8 H=24 P=N=64 bf16, L=16384 fused fwd / fwd+bwd (ms): (64, default, default)
# 2.89 / 20.3; (64, 8, default) 3.24 / 24.6; (64, 4, 2) 1.97 / 18.8; (32, 4, 3) 3.41 / 22.8;
# (32, 8, 3) 4.09 / 27.3; (32, 4, 1) failed with an illegal memory access at this L (not at L=4096) -- not
# understood yet, so that configuration is to be avoided. (Those fwd+bwd times predate the fused backward.)
# bwd_*: the backward's left-to-right gradient kernel. bwd_split: one program per batch element (False: 17
# Q x 64 x 64 products per chunk, each x^T dy and C B^T tile formed once; at 4 warps two programs fit an SM,
# so the benchmark's 192 programs run in one wave) or three (True: about 7 products each, half the register
# spills, but 576 programs take three waves at two per SM). Which wins is a GPU measurement (the forward's
# table above suggests that waves cost more than spills). bwd_atomic_sum: sum generator gradients over
# broadcast batch dims (one B, C for all heads) with float32 atomics in the kernel (True) or write them per
# batch element in the input dtype and sum them in torch (False). Timed by `python -m benchmarks.kernels
# --tune-bwd` on the H100 at L = 16384: 7.94 ms (True) against 7.81 ms (False), with peak memory 1.80 against
# 2.54 GB, so True stays (results/bench/kernels-cuda-tune-bwd.json). bwd_states_pair: the backward's right-to-left kernel
# computes its two states in one program per batch element (one wave here) or in two (two waves).
# bwd_split_launch (split arrangement only): "one" launch whose programs pick their role at run time (one
# binary with all three roles' code: on sm_90 at the benchmark shape 145 KiB of shared memory, 1 program
# per SM, 255 registers and 252 B of spills; results/bench/scan-static-sm90.md), or "per_role": three
# launches, each compiled for one role alone (its own shared memory and registers), which run one after
# another, so x and dy are read once per role instead of once from DRAM and twice from L2. Which wins is
# a GPU measurement (`--tune-bwd` sweeps both); where the table has no per-role entry that fits, the
# planner runs the one-launch plan at the same chunk (Plan.split_launch says which ran).
# Defaults chosen on the H100: split + per_role. Fused Hydra fwd+bwd at L = 16384 (B=8 H=24
# P=N=64 bf16): 7.8 ms against 9.9 (split, one launch) and 13.7 (unsplit) (results/bench/
# kernels-cuda-tune-bwd.json); the lab model's training step (d_state 256, L = 128): quasiseparable 33.8
# against 26.1 steps/s, semiseparable 40.5 against 32.8.
# These are starting points: plan_candidates lowers the chunk and block_v (then stages, never below 2, and
# for the backward it tries the other bwd_split arrangement) until the measured shared memory of the kernel
# pair fits the device (_SMEM_SM90); the backward's state kernel runs with the bwd_* warps and stages.
TUNING = {"block_v": 64, "num_warps": 4, "num_stages": 2,
          "bwd_num_warps": 4, "bwd_num_stages": 2, "bwd_atomic_sum": True, "bwd_split": True,
          "bwd_states_pair": True, "bwd_split_launch": "per_role"}
BWD_SPLIT_LAUNCHES = ("one", "per_role")


class _Tri(NamedTuple):
    """One triangle of the generic operator: generators and index offsets (see :mod:`kernels._ssd_triton`)."""
    R: torch.Tensor  # (B0, B1, L, G)
    K: torch.Tensor  # (B0, B1, L, G)
    lam: torch.Tensor  # (B0, B1, L, 1)
    r: int
    k: int
    u: int
    v: int
    s: int


def _view4(t: torch.Tensor, nbatch: int) -> torch.Tensor:
    """``(*batch, L, D)`` -> ``(B0, B1, L, D)`` as a view when the strides allow (expanded views stay views)."""
    if nbatch == 0:
        return t[None, None]
    if nbatch == 1:
        return t[None]
    if nbatch == 2:
        return t
    try:
        return t.view(-1, *t.shape[nbatch - 1:])
    except RuntimeError:  # leading batch dims not mergeable as a view (rare): copy
        return t.reshape(-1, *t.shape[nbatch - 1:])


def _decay_dtype(dtype: torch.dtype):
    """The kernels' DEC: the dtype of the decay exponents (chunk-local cumulative sums of the log-decays,
    their totals and every difference of them; see :mod:`kernels._ssd_triton`). A difference of two such
    sums formed in float32 carries an absolute error of eps32 * |chunk sum|, which under strong decay (sums
    of -1000 within a chunk) exceeds float32's 1e-5 budget; formed in float64 and only then rounded to
    float32 it carries eps32 * |exponent|. Half precision inputs keep float32 exponents (their budget is
    1e-2, and their binaries, the benchmarks' and training's, stay as they were)."""
    return tl.float32 if dtype in (torch.float16, torch.bfloat16) else tl.float64


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(n)))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when a and b are the same tensor data (object identity or identical view)."""
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
                      and a.dtype == b.dtype)


def _apply(V: torch.Tensor, lo: _Tri, up: Optional[_Tri], delta: Optional[torch.Tensor], vo: int,
           out_dtype: torch.dtype, plan: Plan) -> torch.Tensor:
    """Run the generic operator (lower triangle, optional upper one and diagonal) on 4-D views with the
    launch configuration ``plan`` (see :func:`plan_candidates`); returns ``(B0, B1, L, DV)`` in
    ``out_dtype``."""
    B0, B1, L, DV = V.shape
    DG = lo.R.shape[-1]
    dev = V.device
    BQ, BV = plan.BQ, plan.BV
    BG = _pow2(DG)
    n_chunks = triton.cdiv(L, BQ)
    grid = (B0 * B1, triton.cdiv(DV, BV))
    prec = "ieee" if V.dtype == torch.float32 else "tf32"
    upcast = V.dtype == torch.bfloat16 and _interpreting()
    acc = tl.float64 if V.dtype == torch.float64 else tl.float32
    dec = _decay_dtype(V.dtype)
    out = torch.empty((B0, B1, L, DV), dtype=out_dtype, device=dev)
    launch = dict(num_warps=plan.num_warps, num_stages=plan.num_stages)
    if up is not None:
        # Stored in V's dtype: the sweep casts each state to it before its matrix product anyway, so a
        # wider copy would only double this, the kernel pair's largest, memory traffic.
        states = torch.empty((B0 * B1, n_chunks, DG, DV), dtype=V.dtype, device=dev)
        _k._upper_states_kernel[grid](
            up.K, *up.K.stride(), up.lam, *up.lam.stride()[:3], V, *V.stride(), states,
            B1, L, DG, DV, n_chunks,
            UP_K=up.k, UP_U=up.u, VO=vo, BQ=BQ, BG=BG, BV=BV, PREC=prec, UPCAST=upcast, ACC=acc, DEC=dec,
            **launch)
    else:
        states = out  # unused placeholder pointer
    lo_ = lo
    up_ = up if up is not None else lo  # placeholder pointers when there is no upper triangle
    shared = (up is not None and _same(lo.R, up.R) and _same(lo.K, up.K)
              and lo.r == -up.r and lo.k == -up.k)
    d = delta if delta is not None else lo_.lam
    _k._sweep_kernel[grid](
        lo_.R, *lo_.R.stride(), lo_.K, *lo_.K.stride(), lo_.lam, *lo_.lam.stride()[:3],
        up_.R, *up_.R.stride(), up_.K, *up_.K.stride(), up_.lam, *up_.lam.stride()[:3],
        V, *V.stride(), d, *d.stride()[:3], states, out, *out.stride(),
        B1, L, DG, DV, n_chunks,
        LO_R=lo_.r, LO_K=lo_.k, LO_U=lo_.u, LO_V=lo_.v, LO_S=lo_.s,
        HAS_UP=up is not None, UP_R=up_.r, UP_K=up_.k, UP_U=up_.u, UP_V=up_.v, UP_S=up_.s,
        SHARED_GRAM=shared, HAS_D=delta is not None, VO=vo,
        BQ=BQ, BG=BG, BV=BV, PREC=prec, UPCAST=upcast, ACC=acc, DEC=dec, **launch)
    return out


# ------------------------------------------------------------------------------------ launch planning
# Shared memory per program on sm_90 (KiB, rounded up), measured ahead of time with triton 3.6 by
#     PYTHONPATH=/path/to/triton-3.6:. python -m kernels._ssd_triton --jobs 2
# (see kernels._ssd_triton.measure_shared_memory: each kernel in its largest variant, 4 warps). Row
# "kernel dtype stages BQ BG:", columns BV = 16, 32, 64, 128 (forward: columns of V per program) or
# BP = 16, 32, 64, 128, 256 (backward: pow2(P), all of P in one program). The bwd_sweep_role0/1/2 rows (the
# split backward sweep compiled for one role, TUNING["bwd_split_launch"] = "per_role") were added later by
#     PYTHONPATH=/path/to/triton-3.6:. python -m kernels._ssd_triton --jobs 2 \
#         --kernels bwd_sweep_role0 bwd_sweep_role1 bwd_sweep_role2
# (triton 3.6.0, 1.5 min on 2 CPU cores). All backward sweep rows were then remeasured as the maximum over
# the shared-generator variants (kernels._ssd_triton._VARIANTS; the split sweep had been 32 KiB under at
# bf16 64/64/64) by the same command with --kernels bwd_sweep bwd_sweep_split bwd_sweep_role0
# bwd_sweep_role1 bwd_sweep_role2 (12 min on 2 busy CPU cores). bwd_sweep_split's binary holds all three
# roles. In the unshared variant it needs about the largest role's memory, because shared memory is reused
# across the role branches. In the shared-generator variant, where BQ = BG, it needs more: at bf16 BQ = 64,
# N = P = 64 the per-role rows are 113 / 105 / 105 KiB against the split's 145.
# When float32 inputs' decay exponents moved to float64 (DEC in kernels._ssd_triton), all fp32 rows were
# remeasured by the same command with --dtypes fp32 (triton 3.6.0, 8 min on 2 CPU cores): all 750 entries
# unchanged (bf16 and fp64 compile as before: their DEC is unchanged).
# Spot checks with measure_shared_memory: float16 needs exactly what bfloat16 needs; 8 warps what 4 need
# except the backward sweep at BG = 64 (+4 KiB); see _SMEM_MARGIN. What grows:
# the software pipeline keeps `stages` copies of each tile it prefetches, (BQ, BG) generator tiles and
# the (BG, BV) stored state of each triangle; so d_state 256 with both triangles exceeds an H100's 227 KiB
# at BQ = 64 in two stages and fits at BQ = 32.
_SMEM_SM90 = """
upper_states bf16 2 16 16: 2 3 5 9
upper_states bf16 2 16 32: 3 4 6 10
upper_states bf16 2 16 64: 4 6 11 13
upper_states bf16 2 16 128: 6 7 11 13
upper_states bf16 2 16 256: 10 11 13 17
upper_states bf16 2 32 16: 4 6 10 18
upper_states bf16 2 32 32: 5 7 11 19
upper_states bf16 2 32 64: 7 9 13 21
upper_states bf16 2 32 128: 11 13 17 25
upper_states bf16 2 32 256: 19 21 25 33
upper_states bf16 2 64 16: 7 11 19 35
upper_states bf16 2 64 32: 9 13 21 37
upper_states bf16 2 64 64: 13 17 25 41
upper_states bf16 2 64 128: 21 25 33 49
upper_states bf16 2 64 256: 37 41 49 65
upper_states bf16 3 16 16: 3 4 7 13
upper_states bf16 3 16 32: 3 5 8 14
upper_states bf16 3 16 64: 4 7 13 17
upper_states bf16 3 16 128: 6 8 13 17
upper_states bf16 3 16 256: 10 12 15 21
upper_states bf16 3 32 16: 5 8 14 26
upper_states bf16 3 32 32: 6 9 15 27
upper_states bf16 3 32 64: 8 11 17 29
upper_states bf16 3 32 128: 12 15 21 33
upper_states bf16 3 32 256: 20 23 29 41
upper_states bf16 3 64 16: 9 15 27 51
upper_states bf16 3 64 32: 11 17 29 53
upper_states bf16 3 64 64: 15 21 33 57
upper_states bf16 3 64 128: 23 29 41 65
upper_states bf16 3 64 256: 39 45 57 81
upper_states fp32 2 16 16: 5 7 11 19
upper_states fp32 2 16 32: 7 9 15 21
upper_states fp32 2 16 64: 11 15 17 25
upper_states fp32 2 16 128: 19 21 25 33
upper_states fp32 2 16 256: 35 37 41 49
upper_states fp32 2 32 16: 9 13 21 37
upper_states fp32 2 32 32: 13 17 25 41
upper_states fp32 2 32 64: 21 25 33 49
upper_states fp32 2 32 128: 37 41 49 65
upper_states fp32 2 32 256: 69 73 81 97
upper_states fp32 2 64 16: 17 25 41 73
upper_states fp32 2 64 32: 25 33 49 81
upper_states fp32 2 64 64: 41 49 65 97
upper_states fp32 2 64 128: 73 81 97 129
upper_states fp32 2 64 256: 137 145 161 193
upper_states fp32 3 16 16: 7 10 16 28
upper_states fp32 3 16 32: 10 13 21 31
upper_states fp32 3 16 64: 16 21 25 37
upper_states fp32 3 16 128: 28 31 37 49
upper_states fp32 3 16 256: 52 55 61 73
upper_states fp32 3 32 16: 13 19 31 55
upper_states fp32 3 32 32: 19 25 37 61
upper_states fp32 3 32 64: 31 37 49 73
upper_states fp32 3 32 128: 55 61 73 97
upper_states fp32 3 32 256: 103 109 121 145
upper_states fp32 3 64 16: 25 37 61 109
upper_states fp32 3 64 32: 37 49 73 121
upper_states fp32 3 64 64: 61 73 97 145
upper_states fp32 3 64 128: 109 121 145 193
upper_states fp32 3 64 256: 205 217 241 289
upper_states fp64 2 16 16: 7 11 19 35
upper_states fp64 2 16 32: 11 13 21 37
upper_states fp64 2 16 64: 19 17 25 41
upper_states fp64 2 16 128: 27 29 33 49
upper_states fp64 2 16 256: 43 45 57 65
upper_states fp64 2 32 16: 13 21 37 69
upper_states fp64 2 32 32: 17 25 41 73
upper_states fp64 2 32 64: 29 33 49 81
upper_states fp64 2 32 128: 45 49 65 97
upper_states fp64 2 32 256: 77 81 97 129
upper_states fp64 2 64 16: 25 41 73 137
upper_states fp64 2 64 32: 33 49 81 145
upper_states fp64 2 64 64: 49 65 97 161
upper_states fp64 2 64 128: 81 97 129 193
upper_states fp64 2 64 256: 145 161 193 257
upper_states fp64 3 16 16: 11 17 29 53
upper_states fp64 3 16 32: 17 21 33 57
upper_states fp64 3 16 64: 29 29 41 65
upper_states fp64 3 16 128: 45 49 57 81
upper_states fp64 3 16 256: 77 81 97 113
upper_states fp64 3 32 16: 21 33 57 105
upper_states fp64 3 32 32: 29 41 65 113
upper_states fp64 3 32 64: 49 57 81 129
upper_states fp64 3 32 128: 81 89 113 161
upper_states fp64 3 32 256: 145 153 177 225
upper_states fp64 3 64 16: 42 66 114 210
upper_states fp64 3 64 32: 58 82 130 226
upper_states fp64 3 64 64: 90 114 162 258
upper_states fp64 3 64 128: 154 178 226 322
upper_states fp64 3 64 256: 282 306 354 450
sweep bf16 2 16 16: 4 6 9 15
sweep bf16 2 16 32: 7 9 13 21
sweep bf16 2 16 64: 12 18 29 51
sweep bf16 2 16 128: 22 32 51 89
sweep bf16 2 16 256: 42 60 95 165
sweep bf16 2 32 16: 7 10 15 25
sweep bf16 2 32 32: 12 15 21 33
sweep bf16 2 32 64: 20 27 41 69
sweep bf16 2 32 128: 36 47 69 113
sweep bf16 2 32 256: 68 87 125 201
sweep bf16 2 64 16: 22 30 45 75
sweep bf16 2 64 32: 38 47 65 101
sweep bf16 2 64 64: 67 77 97 137
sweep bf16 2 64 128: 129 145 177 241
sweep bf16 2 64 256: 253 281 337 449
sweep bf16 3 16 16: 7 9 14 24
sweep bf16 3 16 32: 11 15 22 36
sweep bf16 3 16 64: 21 29 45 77
sweep bf16 3 16 128: 39 53 81 137
sweep bf16 3 16 256: 75 101 153 257
sweep bf16 3 32 16: 12 16 24 40
sweep bf16 3 32 32: 20 25 35 55
sweep bf16 3 32 64: 35 45 65 105
sweep bf16 3 32 128: 65 81 113 177
sweep bf16 3 32 256: 125 153 209 321
sweep bf16 3 64 16: 33 43 63 103
sweep bf16 3 64 32: 57 69 93 141
sweep bf16 3 64 64: 103 117 145 201
sweep bf16 3 64 128: 199 221 265 353
sweep bf16 3 64 256: 391 429 505 657
sweep fp32 2 16 16: 9 13 21 37
sweep fp32 2 16 32: 15 21 33 57
sweep fp32 2 16 64: 27 37 57 97
sweep fp32 2 16 128: 51 69 105 177
sweep fp32 2 16 256: 99 133 201 337
sweep fp32 2 32 16: 18 21 33 57
sweep fp32 2 32 32: 27 33 49 81
sweep fp32 2 32 64: 49 57 81 129
sweep fp32 2 32 128: 93 105 145 225
sweep fp32 2 32 256: 181 201 273 417
sweep fp32 2 64 16: 42 51 69 97
sweep fp32 2 64 32: 55 69 81 129
sweep fp32 2 64 64: 93 105 129 193
sweep fp32 2 64 128: 177 193 225 321
sweep fp32 2 64 256: 345 369 417 577
sweep fp32 3 16 16: 15 21 33 57
sweep fp32 3 16 32: 26 35 53 89
sweep fp32 3 16 64: 48 63 93 153
sweep fp32 3 16 128: 92 119 173 281
sweep fp32 3 16 256: 180 231 333 537
sweep fp32 3 32 16: 29 35 53 89
sweep fp32 3 32 32: 47 57 81 129
sweep fp32 3 32 64: 87 101 137 209
sweep fp32 3 32 128: 167 189 249 369
sweep fp32 3 32 256: 327 365 473 689
sweep fp32 3 64 16: 64 78 105 153
sweep fp32 3 64 32: 94 114 137 209
sweep fp32 3 64 64: 165 185 225 321
sweep fp32 3 64 128: 317 345 401 545
sweep fp32 3 64 256: 621 665 753 993
sweep fp64 2 16 16: 15 21 33 57
sweep fp64 2 16 32: 25 33 49 81
sweep fp64 2 16 64: 45 57 81 129
sweep fp64 2 16 128: 85 105 145 225
sweep fp64 2 16 256: 165 201 273 417
sweep fp64 2 32 16: 27 37 57 97
sweep fp64 2 32 32: 41 57 81 129
sweep fp64 2 32 64: 73 97 129 193
sweep fp64 2 32 128: 137 177 225 321
sweep fp64 2 32 256: 265 337 417 577
sweep fp64 2 64 16: 47 65 101 177
sweep fp64 2 64 32: 73 97 145 225
sweep fp64 2 64 64: 129 161 225 321
sweep fp64 2 64 128: 241 289 385 513
sweep fp64 2 64 256: 465 545 705 897
sweep fp64 3 16 16: 25 35 55 95
sweep fp64 3 16 32: 43 57 85 141
sweep fp64 3 16 64: 79 101 145 233
sweep fp64 3 16 128: 151 189 265 417
sweep fp64 3 16 256: 295 365 505 785
sweep fp64 3 32 16: 45 61 93 157
sweep fp64 3 32 32: 73 97 137 217
sweep fp64 3 32 64: 133 169 225 337
sweep fp64 3 32 128: 253 313 401 577
sweep fp64 3 32 256: 493 601 753 1057
sweep fp64 3 64 16: 82 110 166 282
sweep fp64 3 64 32: 134 170 242 370
sweep fp64 3 64 64: 242 290 386 546
sweep fp64 3 64 128: 458 530 674 898
sweep fp64 3 64 256: 890 1010 1250 1602
sweep_causal bf16 2 16 16: 3 4 6 10
sweep_causal bf16 2 16 32: 4 5 7 11
sweep_causal bf16 2 16 64: 6 10 17 31
sweep_causal bf16 2 16 128: 10 16 27 49
sweep_causal bf16 2 16 256: 18 28 47 85
sweep_causal bf16 2 32 16: 5 7 11 19
sweep_causal bf16 2 32 32: 7 9 13 21
sweep_causal bf16 2 32 64: 10 15 25 45
sweep_causal bf16 2 32 128: 16 23 37 65
sweep_causal bf16 2 32 256: 28 39 61 105
sweep_causal bf16 2 64 16: 13 20 33 59
sweep_causal bf16 2 64 32: 20 27 41 69
sweep_causal bf16 2 64 64: 31 37 49 73
sweep_causal bf16 2 64 128: 57 65 81 113
sweep_causal bf16 2 64 256: 109 121 145 193
sweep_causal fp32 2 16 16: 7 10 16 28
sweep_causal fp32 2 16 32: 10 14 22 38
sweep_causal fp32 2 16 64: 16 22 34 58
sweep_causal fp32 2 16 128: 28 38 58 98
sweep_causal fp32 2 16 256: 52 70 106 178
sweep_causal fp32 2 32 16: 15 19 29 49
sweep_causal fp32 2 32 32: 21 25 37 61
sweep_causal fp32 2 32 64: 33 37 53 85
sweep_causal fp32 2 32 128: 57 61 85 133
sweep_causal fp32 2 32 256: 105 109 149 229
sweep_causal fp32 2 64 16: 37 45 61 97
sweep_causal fp32 2 64 32: 49 57 73 113
sweep_causal fp32 2 64 64: 73 81 97 145
sweep_causal fp32 2 64 128: 121 129 145 209
sweep_causal fp32 2 64 256: 217 225 241 337
sweep_causal fp64 2 16 16: 9 13 21 37
sweep_causal fp64 2 16 32: 13 17 25 41
sweep_causal fp64 2 16 64: 21 25 33 49
sweep_causal fp64 2 16 128: 37 41 49 65
sweep_causal fp64 2 16 256: 69 73 81 97
sweep_causal fp64 2 32 16: 17 25 45 77
sweep_causal fp64 2 32 32: 21 33 49 81
sweep_causal fp64 2 32 64: 33 49 65 97
sweep_causal fp64 2 32 128: 57 81 97 129
sweep_causal fp64 2 32 256: 105 145 161 193
sweep_causal fp64 2 64 16: 29 45 77 169
sweep_causal fp64 2 64 32: 37 57 97 177
sweep_causal fp64 2 64 64: 57 81 129 193
sweep_causal fp64 2 64 128: 97 129 193 257
sweep_causal fp64 2 64 256: 177 225 321 385
bwd_states bf16 2 16 16: 3 4 7 13 25
bwd_states bf16 2 16 32: 3 5 8 14 26
bwd_states bf16 2 16 64: 4 7 13 17 33
bwd_states bf16 2 16 128: 6 8 13 17 33
bwd_states bf16 2 16 256: 10 12 15 21 33
bwd_states bf16 2 32 16: 5 8 14 26 50
bwd_states bf16 2 32 32: 6 9 15 27 51
bwd_states bf16 2 32 64: 8 11 17 29 53
bwd_states bf16 2 32 128: 12 15 21 33 57
bwd_states bf16 2 32 256: 20 23 29 41 65
bwd_states bf16 2 64 16: 9 15 27 51 99
bwd_states bf16 2 64 32: 11 17 29 53 101
bwd_states bf16 2 64 64: 15 21 33 57 105
bwd_states bf16 2 64 128: 23 29 41 65 113
bwd_states bf16 2 64 256: 39 45 57 81 129
bwd_states fp32 2 16 16: 7 10 16 28 52
bwd_states fp32 2 16 32: 10 13 21 31 55
bwd_states fp32 2 16 64: 16 21 25 37 61
bwd_states fp32 2 16 128: 28 31 37 49 73
bwd_states fp32 2 16 256: 52 55 61 73 97
bwd_states fp32 2 32 16: 13 19 31 55 103
bwd_states fp32 2 32 32: 19 25 37 61 109
bwd_states fp32 2 32 64: 31 37 49 73 121
bwd_states fp32 2 32 128: 55 61 73 97 145
bwd_states fp32 2 32 256: 103 109 121 145 193
bwd_states fp32 2 64 16: 25 37 61 109 205
bwd_states fp32 2 64 32: 37 49 73 121 217
bwd_states fp32 2 64 64: 61 73 97 145 241
bwd_states fp32 2 64 128: 109 121 145 193 289
bwd_states fp32 2 64 256: 205 217 241 289 385
bwd_states fp64 2 16 16: 11 17 29 53 101
bwd_states fp64 2 16 32: 17 21 33 57 105
bwd_states fp64 2 16 64: 29 33 49 65 113
bwd_states fp64 2 16 128: 45 49 65 97 129
bwd_states fp64 2 16 256: 77 81 97 129 193
bwd_states fp64 2 32 16: 21 33 57 105 201
bwd_states fp64 2 32 32: 29 41 65 113 209
bwd_states fp64 2 32 64: 49 57 81 129 225
bwd_states fp64 2 32 128: 81 89 113 161 257
bwd_states fp64 2 32 256: 145 153 177 225 321
bwd_states fp64 2 64 16: 42 66 114 210 402
bwd_states fp64 2 64 32: 58 82 130 226 418
bwd_states fp64 2 64 64: 90 114 162 258 450
bwd_states fp64 2 64 128: 154 178 226 322 514
bwd_states fp64 2 64 256: 282 306 354 450 642
bwd_sweep bf16 2 16 16: 6 10 17 29 55
bwd_sweep bf16 2 16 32: 10 15 25 43 81
bwd_sweep bf16 2 16 64: 19 26 41 71 133
bwd_sweep bf16 2 16 128: 33 46 73 127 237
bwd_sweep bf16 2 16 256: 63 88 139 241 445
bwd_sweep bf16 2 32 16: 11 18 27 45 81
bwd_sweep bf16 2 32 32: 17 23 37 61 109
bwd_sweep bf16 2 32 64: 30 39 57 93 165
bwd_sweep bf16 2 32 128: 52 67 97 157 277
bwd_sweep bf16 2 32 256: 98 125 179 287 503
bwd_sweep bf16 2 64 16: 27 38 59 101 193
bwd_sweep bf16 2 64 32: 38 51 77 129 241
bwd_sweep bf16 2 64 64: 61 81 121 201 369
bwd_sweep bf16 2 64 128: 107 133 193 313 561
bwd_sweep bf16 2 64 256: 203 245 345 545 945
bwd_sweep fp32 2 16 16: 15 21 33 63 107
bwd_sweep fp32 2 16 32: 22 31 49 91 159
bwd_sweep fp32 2 16 64: 36 51 81 147 263
bwd_sweep fp32 2 16 128: 64 91 145 259 471
bwd_sweep fp32 2 16 256: 120 171 273 483 887
bwd_sweep fp32 2 32 16: 34 43 61 97 169
bwd_sweep fp32 2 32 32: 45 57 81 129 225
bwd_sweep fp32 2 32 64: 67 85 121 193 337
bwd_sweep fp32 2 32 128: 111 141 201 321 561
bwd_sweep fp32 2 32 256: 199 253 361 577 1009
bwd_sweep fp32 2 64 16: 96 111 141 201 321
bwd_sweep fp32 2 64 32: 115 133 169 241 385
bwd_sweep fp32 2 64 64: 153 177 225 321 513
bwd_sweep fp32 2 64 128: 229 265 337 481 769
bwd_sweep fp32 2 64 256: 381 441 561 801 1281
bwd_sweep fp64 2 16 16: 29 41 65 113 209
bwd_sweep fp64 2 16 32: 49 65 97 161 289
bwd_sweep fp64 2 16 64: 89 113 161 273 481
bwd_sweep fp64 2 16 128: 169 209 289 449 801
bwd_sweep fp64 2 16 256: 329 401 545 833 1409
bwd_sweep fp64 2 32 16: 65 93 117 193 353
bwd_sweep fp64 2 32 32: 105 121 161 257 449
bwd_sweep fp64 2 32 64: 169 193 249 385 641
bwd_sweep fp64 2 32 128: 313 353 441 625 1025
bwd_sweep fp64 2 32 256: 601 673 825 1137 1761
bwd_sweep fp64 2 64 16: 187 269 305 377 641
bwd_sweep fp64 2 64 32: 233 257 369 465 769
bwd_sweep fp64 2 64 64: 385 417 481 641 1025
bwd_sweep fp64 2 64 128: 625 673 769 977 1537
bwd_sweep fp64 2 64 256: 1169 1249 1409 1745 2465
bwd_sweep_split bf16 2 16 16: 6 9 17 33 65
bwd_sweep_split bf16 2 16 32: 8 10 17 31 59
bwd_sweep_split bf16 2 16 64: 14 17 27 49 93
bwd_sweep_split bf16 2 16 128: 24 31 49 85 161
bwd_sweep_split bf16 2 16 256: 46 59 93 161 297
bwd_sweep_split bf16 2 32 16: 8 12 19 35 67
bwd_sweep_split bf16 2 32 32: 14 21 33 65 129
bwd_sweep_split bf16 2 32 64: 23 27 37 65 121
bwd_sweep_split bf16 2 32 128: 41 47 65 105 193
bwd_sweep_split bf16 2 32 256: 79 89 121 193 337
bwd_sweep_split bf16 2 64 16: 30 37 59 103 191
bwd_sweep_split bf16 2 64 32: 45 53 69 117 221
bwd_sweep_split bf16 2 64 64: 77 97 145 273 529
bwd_sweep_split bf16 2 64 128: 137 153 193 273 433
bwd_sweep_split bf16 2 64 256: 257 289 353 481 737
bwd_sweep_split fp32 2 16 16: 13 21 37 69 133
bwd_sweep_split fp32 2 16 32: 17 23 35 63 119
bwd_sweep_split fp32 2 16 64: 29 39 59 99 187
bwd_sweep_split fp32 2 16 128: 53 71 107 179 323
bwd_sweep_split fp32 2 16 256: 101 135 203 339 611
bwd_sweep_split fp32 2 32 16: 23 29 45 77 141
bwd_sweep_split fp32 2 32 32: 35 49 81 145 273
bwd_sweep_split fp32 2 32 64: 53 65 89 137 249
bwd_sweep_split fp32 2 32 128: 93 113 153 233 393
bwd_sweep_split fp32 2 32 256: 181 209 281 425 713
bwd_sweep_split fp32 2 64 16: 59 69 97 153 265
bwd_sweep_split fp32 2 64 32: 77 89 113 177 305
bwd_sweep_split fp32 2 64 64: 113 137 193 321 577
bwd_sweep_split fp32 2 64 128: 185 209 257 353 545
bwd_sweep_split fp32 2 64 256: 345 369 449 609 929
bwd_sweep_split fp64 2 16 16: 17 29 49 89 169
bwd_sweep_split fp64 2 16 32: 29 41 69 125 237
bwd_sweep_split fp64 2 16 64: 49 69 109 197 373
bwd_sweep_split fp64 2 16 128: 93 125 197 341 645
bwd_sweep_split fp64 2 16 256: 181 237 373 645 1189
bwd_sweep_split fp64 2 32 16: 39 57 89 161 305
bwd_sweep_split fp64 2 32 32: 57 73 113 193 353
bwd_sweep_split fp64 2 32 64: 89 113 161 273 497
bwd_sweep_split fp64 2 32 128: 161 193 273 433 785
bwd_sweep_split fp64 2 32 256: 313 353 497 785 1361
bwd_sweep_split fp64 2 64 16: 108 137 193 321 593
bwd_sweep_split fp64 2 64 32: 137 161 225 353 641
bwd_sweep_split fp64 2 64 64: 193 225 289 449 769
bwd_sweep_split fp64 2 64 128: 322 354 449 641 1089
bwd_sweep_split fp64 2 64 256: 594 642 769 1089 1729
bwd_sweep_role0 bf16 2 16 16: 5 6 10 16 30
bwd_sweep_role0 bf16 2 16 32: 8 10 14 22 40
bwd_sweep_role0 bf16 2 16 64: 14 17 27 47 87
bwd_sweep_role0 bf16 2 16 128: 24 31 49 85 157
bwd_sweep_role0 bf16 2 16 256: 46 59 93 161 297
bwd_sweep_role0 bf16 2 32 16: 8 11 16 26 48
bwd_sweep_role0 bf16 2 32 32: 14 17 23 35 59
bwd_sweep_role0 bf16 2 32 64: 23 27 37 61 109
bwd_sweep_role0 bf16 2 32 128: 41 47 65 105 185
bwd_sweep_role0 bf16 2 32 256: 79 89 121 193 337
bwd_sweep_role0 bf16 2 64 16: 30 37 51 79 143
bwd_sweep_role0 bf16 2 64 32: 45 53 69 101 173
bwd_sweep_role0 bf16 2 64 64: 77 89 113 169 281
bwd_sweep_role0 bf16 2 64 128: 137 153 193 273 433
bwd_sweep_role0 bf16 2 64 256: 257 289 353 481 737
bwd_sweep_role0 fp32 2 16 16: 11 15 23 39 71
bwd_sweep_role0 fp32 2 16 32: 17 23 35 59 107
bwd_sweep_role0 fp32 2 16 64: 29 39 59 99 179
bwd_sweep_role0 fp32 2 16 128: 53 71 107 179 323
bwd_sweep_role0 fp32 2 16 256: 101 135 203 339 611
bwd_sweep_role0 fp32 2 32 16: 23 29 41 65 113
bwd_sweep_role0 fp32 2 32 32: 33 41 57 89 153
bwd_sweep_role0 fp32 2 32 64: 53 65 89 137 233
bwd_sweep_role0 fp32 2 32 128: 93 113 153 233 393
bwd_sweep_role0 fp32 2 32 256: 181 209 281 425 713
bwd_sweep_role0 fp32 2 64 16: 59 69 89 129 209
bwd_sweep_role0 fp32 2 64 32: 77 89 113 161 257
bwd_sweep_role0 fp32 2 64 64: 113 129 161 225 353
bwd_sweep_role0 fp32 2 64 128: 185 209 257 353 545
bwd_sweep_role0 fp32 2 64 256: 345 369 449 609 929
bwd_sweep_role0 fp64 2 16 16: 17 23 35 63 119
bwd_sweep_role0 fp64 2 16 32: 29 41 53 85 157
bwd_sweep_role0 fp64 2 16 64: 49 69 109 133 233
bwd_sweep_role0 fp64 2 16 128: 93 125 197 341 393
bwd_sweep_role0 fp64 2 16 256: 181 237 373 645 1189
bwd_sweep_role0 fp64 2 32 16: 39 49 69 109 189
bwd_sweep_role0 fp64 2 32 32: 57 73 89 137 233
bwd_sweep_role0 fp64 2 32 64: 89 113 161 201 329
bwd_sweep_role0 fp64 2 32 128: 161 193 273 433 521
bwd_sweep_role0 fp64 2 32 256: 313 353 497 785 1361
bwd_sweep_role0 fp64 2 64 16: 108 126 162 234 378
bwd_sweep_role0 fp64 2 64 32: 137 161 194 274 434
bwd_sweep_role0 fp64 2 64 64: 193 225 289 354 546
bwd_sweep_role0 fp64 2 64 128: 322 354 449 641 802
bwd_sweep_role0 fp64 2 64 256: 594 642 769 1089 1729
bwd_sweep_role1 bf16 2 16 16: 4 7 12 22 42
bwd_sweep_role1 bf16 2 16 32: 6 10 17 31 59
bwd_sweep_role1 bf16 2 16 64: 10 16 27 49 93
bwd_sweep_role1 bf16 2 16 128: 18 28 47 85 161
bwd_sweep_role1 bf16 2 16 256: 34 52 87 157 297
bwd_sweep_role1 bf16 2 32 16: 8 12 19 35 67
bwd_sweep_role1 bf16 2 32 32: 11 15 25 45 85
bwd_sweep_role1 bf16 2 32 64: 16 23 37 65 121
bwd_sweep_role1 bf16 2 32 128: 28 39 61 105 193
bwd_sweep_role1 bf16 2 32 256: 52 71 109 185 337
bwd_sweep_role1 bf16 2 64 16: 26 37 59 103 191
bwd_sweep_role1 bf16 2 64 32: 33 45 69 117 221
bwd_sweep_role1 bf16 2 64 64: 57 73 105 169 313
bwd_sweep_role1 bf16 2 64 128: 101 121 161 241 433
bwd_sweep_role1 bf16 2 64 256: 189 217 273 385 673
bwd_sweep_role1 fp32 2 16 16: 9 14 24 44 84
bwd_sweep_role1 fp32 2 16 32: 13 20 34 62 118
bwd_sweep_role1 fp32 2 16 64: 21 32 54 98 186
bwd_sweep_role1 fp32 2 16 128: 37 56 94 170 322
bwd_sweep_role1 fp32 2 16 256: 69 104 174 314 594
bwd_sweep_role1 fp32 2 32 16: 20 27 41 73 137
bwd_sweep_role1 fp32 2 32 32: 25 33 53 93 173
bwd_sweep_role1 fp32 2 32 64: 35 49 77 133 245
bwd_sweep_role1 fp32 2 32 128: 63 81 125 213 389
bwd_sweep_role1 fp32 2 32 256: 119 145 221 373 677
bwd_sweep_role1 fp32 2 64 16: 54 67 93 145 249
bwd_sweep_role1 fp32 2 64 32: 63 77 105 161 289
bwd_sweep_role1 fp32 2 64 64: 81 97 129 209 369
bwd_sweep_role1 fp32 2 64 128: 117 137 193 305 529
bwd_sweep_role1 fp32 2 64 256: 221 249 321 497 849
bwd_sweep_role1 fp64 2 16 16: 17 29 49 89 169
bwd_sweep_role1 fp64 2 16 32: 25 39 67 123 235
bwd_sweep_role1 fp64 2 16 64: 41 63 107 195 371
bwd_sweep_role1 fp64 2 16 128: 73 111 187 339 643
bwd_sweep_role1 fp64 2 16 256: 137 207 347 627 1187
bwd_sweep_role1 fp64 2 32 16: 39 53 89 161 305
bwd_sweep_role1 fp64 2 32 32: 49 65 113 193 353
bwd_sweep_role1 fp64 2 32 64: 69 97 153 265 489
bwd_sweep_role1 fp64 2 32 128: 117 161 249 425 777
bwd_sweep_role1 fp64 2 32 256: 213 289 441 745 1353
bwd_sweep_role1 fp64 2 64 16: 108 134 186 321 593
bwd_sweep_role1 fp64 2 64 32: 126 154 210 353 641
bwd_sweep_role1 fp64 2 64 64: 162 194 258 449 769
bwd_sweep_role1 fp64 2 64 128: 234 274 385 609 1057
bwd_sweep_role1 fp64 2 64 256: 378 465 641 993 1697
bwd_sweep_role2 bf16 2 16 16: 4 7 12 22 42
bwd_sweep_role2 bf16 2 16 32: 6 10 17 31 59
bwd_sweep_role2 bf16 2 16 64: 10 16 27 49 93
bwd_sweep_role2 bf16 2 16 128: 18 28 47 85 161
bwd_sweep_role2 bf16 2 16 256: 34 52 87 157 297
bwd_sweep_role2 bf16 2 32 16: 7 12 19 35 67
bwd_sweep_role2 bf16 2 32 32: 11 15 25 45 85
bwd_sweep_role2 bf16 2 32 64: 16 23 37 65 121
bwd_sweep_role2 bf16 2 32 128: 28 39 61 105 193
bwd_sweep_role2 bf16 2 32 256: 52 71 109 185 337
bwd_sweep_role2 bf16 2 64 16: 22 33 55 99 191
bwd_sweep_role2 bf16 2 64 32: 33 45 69 117 221
bwd_sweep_role2 bf16 2 64 64: 57 73 105 169 313
bwd_sweep_role2 bf16 2 64 128: 101 121 161 241 433
bwd_sweep_role2 bf16 2 64 256: 189 217 273 385 673
bwd_sweep_role2 fp32 2 16 16: 10 15 25 45 85
bwd_sweep_role2 fp32 2 16 32: 14 21 35 63 119
bwd_sweep_role2 fp32 2 16 64: 22 33 55 99 187
bwd_sweep_role2 fp32 2 16 128: 38 57 95 171 323
bwd_sweep_role2 fp32 2 16 256: 70 105 175 315 595
bwd_sweep_role2 fp32 2 32 16: 21 29 45 77 141
bwd_sweep_role2 fp32 2 32 32: 27 37 57 97 177
bwd_sweep_role2 fp32 2 32 64: 39 53 81 137 249
bwd_sweep_role2 fp32 2 32 128: 63 85 129 217 393
bwd_sweep_role2 fp32 2 32 256: 119 149 225 377 681
bwd_sweep_role2 fp32 2 64 16: 55 69 97 153 265
bwd_sweep_role2 fp32 2 64 32: 65 81 113 177 305
bwd_sweep_role2 fp32 2 64 64: 85 105 145 225 385
bwd_sweep_role2 fp32 2 64 128: 125 153 209 321 545
bwd_sweep_role2 fp32 2 64 256: 221 249 337 513 865
bwd_sweep_role2 fp64 2 16 16: 15 29 49 89 169
bwd_sweep_role2 fp64 2 16 32: 23 37 69 125 237
bwd_sweep_role2 fp64 2 16 64: 39 61 105 197 373
bwd_sweep_role2 fp64 2 16 128: 71 109 185 337 645
bwd_sweep_role2 fp64 2 16 256: 135 205 345 625 1185
bwd_sweep_role2 fp64 2 32 16: 27 57 89 153 297
bwd_sweep_role2 fp64 2 32 32: 37 57 113 193 353
bwd_sweep_role2 fp64 2 32 64: 61 89 145 273 497
bwd_sweep_role2 fp64 2 32 128: 109 153 241 417 785
bwd_sweep_role2 fp64 2 32 256: 205 281 433 737 1345
bwd_sweep_role2 fp64 2 64 16: 47 137 193 305 561
bwd_sweep_role2 fp64 2 64 32: 65 97 225 353 609
bwd_sweep_role2 fp64 2 64 64: 105 145 225 449 769
bwd_sweep_role2 fp64 2 64 128: 193 241 353 577 1089
bwd_sweep_role2 fp64 2 64 256: 369 433 609 961 1665
"""
_SM90_SHARED_BYTES = 232448  # an H100's (sm_90) opt-in shared memory per block, 227 KiB


def _parse_smem_table(text: str) -> dict:
    table = {}
    for line in text.strip().splitlines():
        head, vals = line.split(":")
        kernel, dtype, stages, BQ, BG = head.split()
        cols = (16, 32, 64, 128, 256) if kernel.startswith("bwd") else (16, 32, 64, 128)
        for BV, v in zip(cols, vals.split()):
            if v != "-":
                table[(kernel, dtype, int(stages), int(BQ), int(BG), BV)] = int(v) * 1024
    return table


SMEM_TABLE = _parse_smem_table(_SMEM_SM90)
_BWD_KERNELS = ("bwd_states", "bwd_sweep")
# Headroom for what the table does not hold (see kernels._ssd_triton): variants of the split backward
# sweep measured up to 0.5 KiB above its table entries, 8 warps up to 4 KiB above 4 (the table's).
_SMEM_MARGIN = {"bwd_sweep_split": 2048, "bwd_sweep_role0": 2048, "bwd_sweep_role1": 2048,
                "bwd_sweep_role2": 2048, "warps": 8192}
# The split backward sweep's table names per launch arrangement (TUNING["bwd_split_launch"]).
_SPLIT_SWEEP_NAMES = {"one": ("bwd_sweep_split",),
                      "per_role": ("bwd_sweep_role0", "bwd_sweep_role1", "bwd_sweep_role2")}
_TABLE_DTYPE = {torch.float16: "bf16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


class Plan(NamedTuple):
    """One launch configuration of a kernel pair: chunk rows BQ, columns per program BV (backward: BP,
    all of P), warps, pipeline stages, the backward's sweep arrangement (``TUNING["bwd_split"]``) and, when
    split, how its three roles are launched (``TUNING["bwd_split_launch"]``: "one" launch of a binary with
    all roles, or "per_role": one role-specialized launch each)."""
    BQ: int
    BV: int
    num_warps: int
    num_stages: int
    split: bool = False
    split_launch: str = "one"


def _smem_limit(device: torch.device) -> int:
    """Shared memory per block the launch may use: the device's (CUDA), else an H100's, so that the
    interpreter picks the configurations a GPU run would."""
    if device.type == "cuda" and not _interpreting():
        return _device_smem(device.index if device.index is not None else torch.cuda.current_device())
    return _SM90_SHARED_BYTES


@functools.lru_cache(maxsize=None)
def _device_smem(index: int) -> int:
    # What Triton's launch compares a kernel's shared memory with (the opt-in maximum per block).
    return int(triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"])


def _tile_pairs(BQ: int, BV: int) -> list:
    """(BQ, BV) pairs from the requested one down to (16, 16) (powers of two), larger tiles first (more
    work per program for the matrix units, fewer programs rereading B and C), the larger chunk first among
    equal tiles (the caller's choice)."""
    qs = [BQ >> i for i in range(BQ.bit_length()) if BQ >> i >= 16] or [BQ]
    vs = [BV >> i for i in range(BV.bit_length()) if BV >> i >= 16] or [BV]
    return sorted(((q, v) for q in qs for v in vs), key=lambda qv: (-qv[0] * qv[1], -qv[0]))


# The plan each kernel pair last launched with, {kernels: Plan}, for benchmarks to record what ran.
LAST_PLANS: dict = {}
# Plans whose launch raised OutOfResources on this process's device although the sm_90 table says they
# fit (another GPU, another Triton): {(kernels, dtype, BG, plan)}; later plans skip them.
_REFUSED: set = set()
# Launches that fit by the table but that Triton 3.6 miscompiles on sm_90: {(kernel, dtype, BQ, BG)}, never
# planned. The causal forward sweep at bf16, chunk 64, state 256 (the lab SSM mixers' shape) declares 112 KiB
# of shared memory and reads at 225 KiB: compute-sanitizer on an H100 reported "Invalid __shared__ read of size 1024 bytes ...
# at _sweep_kernel ... _ssd_triton.py:55" (the tl.dot), and the mixer's training step died with an illegal
# memory access. It happens only for the argument specialization that the mixer's strided tensors give
# (the same plan on contiguous test tensors ran clean), so no unit test on a GPU catches it. Chunk 32 at that
# shape ran clean under the sanitizer. fp16 uses the bf16 rows (_TABLE_DTYPE), so it is excluded with it.
_MISCOMPILED = {("sweep_causal", "bf16", 64, 256)}


_PLAN_MEMO: dict = {}


def plan_candidates(kernels: tuple, N: int, P: int, dtype: torch.dtype, chunk: int, limit: int,
                    backward: bool = False) -> list:
    """Launch configurations for ``kernels`` (names of :data:`SMEM_TABLE`, launched with one chunk size)
    that the table says fit ``limit`` bytes (with :data:`_SMEM_MARGIN`'s headroom), in order of preference.

    Forward: from ``TUNING``'s (chunk, block_v) through smaller (BQ, BV) (:func:`_tile_pairs`) at
    TUNING's stages, then the same at each smaller stage count down to 2 (one stage is never used:
    (32, 4, 1) faulted on an H100 at L = 16384, not understood). Backward: BP = pow2(P) is fixed (one
    program holds all of P), so only BQ moves; ``TUNING["bwd_split"]``'s arrangement first, the other one
    after it. With ``TUNING["bwd_split_launch"] == "per_role"`` each split step is tried as three
    role-specialized launches (table rows ``bwd_sweep_role0/1/2``, the largest of them must fit) and then,
    at the same chunk, as the one launch (``bwd_sweep_split``), so a shape the per-role rows do not cover
    or fit still runs; the plan run says which (``Plan.split_launch``, recorded in :data:`LAST_PLANS`).
    Chunks above 64 are not measured: a 128 request runs at 64 or less.
    Memoized (about 20 us a call otherwise, twice per forward).
    """
    key = (kernels, _pow2(N), _pow2(P), dtype, chunk, limit, backward, tuple(sorted(TUNING.items())),
           id(_REFUSED), len(_REFUSED))
    if key not in _PLAN_MEMO:
        _PLAN_MEMO[key] = _plan_candidates(kernels, N, P, dtype, chunk, limit, backward)
    return list(_PLAN_MEMO[key])


def _plan_candidates(kernels: tuple, N: int, P: int, dtype: torch.dtype, chunk: int, limit: int,
                     backward: bool = False) -> list:
    """The uncached :func:`plan_candidates`."""
    BG = _pow2(N)
    dt = _TABLE_DTYPE[dtype]
    if backward:
        split0 = bool(TUNING["bwd_split"])
        launch0 = TUNING.get("bwd_split_launch", "one")
        if launch0 not in BWD_SPLIT_LAUNCHES:
            raise ValueError(f"kernels.ssd.TUNING['bwd_split_launch'] is {launch0!r}; allowed: "
                             f"{BWD_SPLIT_LAUNCHES} (one launch of the all-roles binary, or one per role)")
        launches = ("per_role", "one") if launch0 == "per_role" else ("one",)
        warps, stages0 = TUNING["bwd_num_warps"] or 4, TUNING["bwd_num_stages"] or 3
        BV0 = _pow2(P)
        steps = [(q, BV0, s, lnch if s else "one") for s in (split0, not split0)
                 for q, _ in _tile_pairs(min(chunk, 64), 16) for lnch in (launches if s else ("one",))]
    else:
        BV0 = min(TUNING["block_v"], _pow2(P))
        warps, stages0 = TUNING["num_warps"] or 4, TUNING["num_stages"] or 3
        steps = [(q, v, False, "one") for q, v in _tile_pairs(min(chunk, 64), BV0)]
    key = "bwd_num_stages" if backward else "num_stages"
    if stages0 < 2:
        raise ValueError(f"kernels.ssd.TUNING[{key!r}] is {TUNING[key]!r}; the scan kernels run with 2 or more "
                         f"pipeline stages (one stage faulted on an H100), or None for Triton's default")
    out = []
    for stages in range(stages0, 1, -1):
        for BQ, BV, split, split_launch in steps:
            names = tuple(n for k in kernels
                          for n in (_SPLIT_SWEEP_NAMES[split_launch] if split and k == "bwd_sweep" else (k,)))
            need = max(SMEM_TABLE.get((k, dt, stages, BQ, BG, BV), float("inf")) + _SMEM_MARGIN.get(k, 0)
                       for k in names) + (_SMEM_MARGIN["warps"] if warps != 4 else 0)
            plan = Plan(BQ, BV, warps, stages, split, split_launch)
            if (need <= limit and (kernels, dt, BG, plan) not in _REFUSED
                    and not any((n, dt, BQ, BG) in _MISCOMPILED for n in names)):
                out.append(plan)
    return out


def _run_planned(kernels: tuple, N: int, P: int, dtype: torch.dtype, chunk: int, device: torch.device,
                 run, backward: bool = False):
    """``run(plan)`` with the first fitting plan (:func:`plan_candidates`); a plan whose launch still
    runs out of shared memory is remembered and the next one runs (all of ``run`` again: it launches
    the whole kernel pair). Raises ValueError when no plan fits."""
    limit = _smem_limit(device)
    plans = plan_candidates(kernels, N, P, dtype, chunk, limit, backward=backward)
    for plan in plans:
        try:
            LAST_PLANS[kernels] = plan
            return run(plan)
        except OutOfResources:
            _REFUSED.add((kernels, _TABLE_DTYPE[dtype], _pow2(N), plan))
    raise _no_plan(kernels, N, P, dtype, chunk, limit, plans)


def _no_plan(kernels, N, P, dtype, chunk, limit, tried) -> ValueError:
    return ValueError(
        f"no launch configuration of the scan kernels {kernels} fits {limit} bytes of shared memory for "
        f"state size N={N}, head dim P={P} and dtype {dtype} (chunk_size={chunk}, "
        f"{'tried ' + str(tried) if tried else 'none fits by the sm_90 table'}; stages below 2 are not "
        f"used); use a smaller N or P, or a narrower dtype")


# ----------------------------------------------------------------------------------------------- validation
def _check(x, gens: dict, vecs: dict, chunk_size) -> tuple:
    """Validate shapes/dtypes; returns (batch_shape, L, N). Parameters broadcast to x's batch dims."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a tensor of shape (*batch, L, P); got {getattr(x, 'shape', type(x))}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"x has dtype {x.dtype}; the Triton kernels take {_DTYPES}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size not in (16, 32, 64, 128):
        raise ValueError(f"chunk_size must be one of 16, 32, 64, 128; got {chunk_size!r}")
    batch, L = x.shape[:-2], x.shape[-2]
    N = None
    for name, t in gens.items():
        if not isinstance(t, torch.Tensor) or t.dim() < 2 or t.shape[-2] != L:
            raise ValueError(f"{name} must have shape (*batch, L={L}, N); got {getattr(t, 'shape', type(t))}")
        if N is None:
            N = t.shape[-1]
        elif t.shape[-1] != N:
            raise ValueError(f"{name} has state size {t.shape[-1]}, expected N={N} like the other generators")
    for name, t in vecs.items():
        if not isinstance(t, torch.Tensor) or t.dim() < 1 or t.shape[-1] != L:
            raise ValueError(f"{name} must have shape (*batch, L={L}); got {getattr(t, 'shape', type(t))}")
    for name, t in list(gens.items()) + list(vecs.items()):
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
        tb = t.shape[:t.dim() - (2 if name in gens else 1)]
        if tb == batch:               # the common case, without torch.broadcast_shapes (its checks cost host time)
            continue
        try:
            ok = torch.broadcast_shapes(tb, batch) == batch
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"{name} has shape {tuple(t.shape)} whose batch dims {tuple(tb)} do not broadcast "
                             f"to x's batch shape {tuple(batch)}")
    if N > _MAX_GRAM_DIM or x.shape[-1] > _MAX_GRAM_DIM:
        raise ValueError(f"state size N={N} and head dim P={x.shape[-1]} must be <= {_MAX_GRAM_DIM} for the "
                         f"Triton kernels (one register tile holds a full N- or P-vector)")
    return batch, L, N


# ----------------------------------------------------------------------------------------------- autograd
def _tri4(R, K, lam, nb, r, k, u, v, s) -> _Tri:
    return _Tri(_view4(R, nb), _view4(K, nb), _view4(lam.unsqueeze(-1), nb), r, k, u, v, s)


def _strict_view4(t: torch.Tensor, nbatch: int) -> torch.Tensor:
    """Like :func:`_view4` but never copies (a kernel writes through the view); raises RuntimeError instead."""
    if nbatch <= 2:
        return _view4(t, nbatch)
    return t.view(-1, *t.shape[nbatch - 1:])


class _GradTarget(NamedTuple):
    """Where the backward kernel writes the gradient of one parameter of shape broadcastable to
    ``(*batch, L, D)``: a 4-D view, whether it sums into it atomically, and the tensor to finish from."""
    view: torch.Tensor
    atomic: bool
    buf: torch.Tensor

    def finish(self, param: torch.Tensor) -> torch.Tensor:
        return self.buf.sum_to_size(param.shape).to(param.dtype)


def _grad_target(param: torch.Tensor, batch, L: int, acc_t: torch.dtype) -> _GradTarget:
    full = (*batch, L, param.shape[-1])
    nb = len(batch)
    if tuple(param.shape) == full:  # one gradient row per batch element: plain stores in the param's dtype
        buf = torch.empty(full, dtype=param.dtype, device=param.device)
        return _GradTarget(_view4(buf, nb), False, buf)
    if TUNING["bwd_atomic_sum"]:
        # Broadcast over batch dims (e.g. one B for all heads): the kernel sums into one float32/64 buffer
        # through a stride-0 view, so no per-head gradient copy exists.
        red = torch.zeros(param.shape, dtype=acc_t, device=param.device)
        try:
            return _GradTarget(_strict_view4(red.expand(full), nb), True, red)
        except RuntimeError:  # batch dims not mergeable as a view: per-element rows, reduced afterwards
            pass
    buf = torch.empty(full, dtype=param.dtype, device=param.device)
    return _GradTarget(_view4(buf, nb), False, buf)


def _backward(x, dy, lower, upper, delta, s: int, chunk: int, combine: bool):
    """:func:`_backward_planned` with the first fitting launch plan (see :func:`plan_candidates`)."""
    return _run_planned(_BWD_KERNELS, lower[0].shape[-1], x.shape[-1], x.dtype, chunk,
                        x.device, lambda plan: _backward_planned(x, dy, lower, upper, delta, s, combine, plan),
                        backward=True)


def _backward_planned(x, dy, lower, upper, delta, s: int, combine: bool, plan: Plan):
    """All gradients of ``y = (lower + upper + diag(delta)) x`` with the products' offsets (both triangles
    shifted by ``s``); ``lower``/``upper`` are ``(b, c, log_a)`` broadcastable to x's batch dims, ``upper``
    may be None (causal), ``combine``: upper's b, c are lower's (the same tensors), so their gradients are
    summed in the kernel and returned once. Two Triton launches (four with ``plan.split_launch ==
    "per_role"``; see :mod:`kernels._ssd_triton`). Returns
    ``(dx, db, dc, dlog_a, db', dc', dlog_a', ddelta)`` (None where absent or combined)."""
    nb = x.dim() - 2
    batch, L, P = x.shape[:-2], x.shape[-2], x.shape[-1]
    b, c, la = lower
    bu, cu, lau = upper if upper is not None else lower
    N = b.shape[-1]
    has_up = upper is not None
    combine = combine and has_up
    dev = x.device
    acc_t = torch.float64 if x.dtype == torch.float64 else torch.float32
    acc = tl.float64 if x.dtype == torch.float64 else tl.float32
    G = lambda t: _view4(t.expand(*batch, L, t.shape[-1]), nb)  # noqa: E731
    Vv = lambda t: _view4(t.expand(*batch, L).unsqueeze(-1), nb)  # noqa: E731
    X, DY = _view4(x, nb), _view4(dy, nb)
    BL, CL, AL, BU, CU, AU = G(b), G(c), Vv(la), G(bu), G(cu), Vv(lau)
    B0, B1 = X.shape[:2]
    BQ, BN, BP = plan.BQ, _pow2(N), _pow2(P)
    n_chunks = triton.cdiv(L, BQ)
    prec = "ieee" if x.dtype == torch.float32 else "tf32"
    upcast = x.dtype == torch.bfloat16 and _interpreting()
    common = dict(BQ=BQ, BN=BN, BP=BP, PREC=prec, UPCAST=upcast, ACC=acc, DEC=_decay_dtype(x.dtype))
    # Adjoint/upper states from the right, stored in x's dtype (cast to it before every product anyway).
    g_lo = torch.empty((B0 * B1, n_chunks, N, P), dtype=x.dtype, device=dev)
    h_up = torch.empty_like(g_lo) if has_up else g_lo
    # The state kernel is planned with the sweep (one table row each, same chunk, warps and stages).
    launch = dict(num_warps=plan.num_warps, num_stages=plan.num_stages)
    pair = has_up and bool(TUNING["bwd_states_pair"])
    _k._bwd_states_kernel[(B0 * B1, 2 if has_up and not pair else 1)](
        CL, *CL.stride(), AL, *AL.stride()[:3], DY, *DY.stride(), g_lo,
        BU, *BU.stride(), AU, *AU.stride()[:3], X, *X.stride(), h_up,
        B1, L, N, P, n_chunks, LO_S=s, PAIR=pair, **common, **launch)
    dx = torch.empty((B0, B1, L, P), dtype=x.dtype, device=dev)
    t_bl, t_cl = _grad_target(b, batch, L, acc_t), _grad_target(c, batch, L, acc_t)
    t_bu, t_cu = ((_grad_target(bu, batch, L, acc_t), _grad_target(cu, batch, L, acc_t))
                  if has_up and not combine else (t_bl, t_cl))
    rs = torch.empty((4 if has_up else 2, B0 * B1, L), dtype=acc_t, device=dev)
    ddl = torch.empty((B0 * B1, L), dtype=acc_t, device=dev) if delta is not None else rs
    D = Vv(delta) if delta is not None else AL
    split = plan.split
    # Split: one launch of (3, batch) programs that pick their role at run time (ROLE = -1), or one launch
    # of (1, batch) programs per role, each compiled for its role alone; the roles write disjoint outputs.
    per_role = split and plan.split_launch == "per_role"
    args = (X, *X.stride(), DY, *DY.stride(), BL, *BL.stride(), CL, *CL.stride(), AL, *AL.stride()[:3],
            BU, *BU.stride(), CU, *CU.stride(), AU, *AU.stride()[:3], D, *D.stride()[:3], g_lo, h_up,
            dx, *dx.stride(), t_bl.view, *t_bl.view.stride(), t_cl.view, *t_cl.view.stride(),
            t_bu.view, *t_bu.view.stride(), t_cu.view, *t_cu.view.stride(), rs, ddl,
            B1, L, N, P, n_chunks)
    consts = dict(LO_S=s, HAS_UP=has_up, UP_S=s, SHARED_GRAM=has_up and _same(b, bu) and _same(c, cu),
                  COMBINE=combine, JOINT_DY=has_up and s == 0, HAS_D=delta is not None,
                  AT_BL=t_bl.atomic, AT_CL=t_cl.atomic, AT_BU=t_bu.atomic, AT_CU=t_cu.atomic, **common, **launch)
    for role in ((0, 1, 2) if per_role else (-1,)):
        _k._bwd_sweep_kernel[(1 if per_role else 3 if split else 1, B0 * B1)](*args, SPLIT=split,
                ROLE=role, **consts)
    # Log-decay gradients from the running sums of the row dots (see kernels._ssd_triton):
    # d log_a_t = sum_{i<t} (b.db - c.dc),  d log_a'_t = sum_{i<=t} (c'.dc' - b'.db').
    dla_lo = rs[1] - rs[0]
    dla_up = rs[2] - rs[3] if has_up else None
    vec = lambda t, p: t.view(*batch, L).sum_to_size(p.shape).to(p.dtype)  # noqa: E731
    return (dx.view(x.shape), t_bl.finish(b), t_cl.finish(c), vec(dla_lo, la),
            t_bu.finish(bu) if has_up and not combine else None,
            t_cu.finish(cu) if has_up and not combine else None,
            vec(dla_up, lau) if has_up else None,
            vec(ddl, delta) if delta is not None else None)


# The product and its backward are torch custom operators (``torch.library.custom_op``): opaque to
# torch.compile, which compiles the model around them (fusing the block's elementwise work) instead of
# breaking its graph at the launch planner, and registered with autograd through ``register_autograd``.
# Which triangles share generators (Hydra's one B, C for both directions) is an explicit flag, because
# tensor identity does not survive tracing.
@torch.library.custom_op("mixerzoo::quasiseparable_product", mutates_args=())
def _qs_product(x: torch.Tensor, b: torch.Tensor, c: torch.Tensor, log_a: torch.Tensor,
                delta: Optional[torch.Tensor], b_bwd: torch.Tensor, c_bwd: torch.Tensor, log_a_bwd: torch.Tensor,
                s: int, has_up: bool, chunk: int) -> torch.Tensor:
    """Generic forward: lower (b, c, log_a), optional upper (b', c', log_a'), optional delta.

    Parameters arrive with broadcastable batch dims (e.g. (B, 1, L, N), one B for all heads); they are
    expanded here as views and their gradients are summed back inside the backward kernel, so no per-head
    copy of a shared parameter is made and no per-head float32 gradient exists.
    """
    nb = x.dim() - 2
    batch, L = x.shape[:-2], x.shape[-2]
    G = lambda t: t.expand(*batch, L, t.shape[-1])  # noqa: E731
    Vv = lambda t: t.expand(*batch, L)  # noqa: E731
    lo = _tri4(G(c), G(b), Vv(log_a), nb, s, 0, 0, s, s)
    up = _tri4(G(c_bwd), G(b_bwd), Vv(log_a_bwd), nb, s, 0, 0, s, s) if has_up else None
    d4 = _view4(Vv(delta).unsqueeze(-1), nb) if delta is not None else None
    N, P = b.shape[-1], x.shape[-1]
    y = _run_planned(("upper_states", "sweep") if has_up else ("sweep_causal",), N, P, x.dtype, chunk,
                     x.device, lambda plan: _apply(_view4(x, nb), lo, up, d4, 0, x.dtype, plan))
    return y.view(x.shape)


@_qs_product.register_fake
def _qs_product_fake(x, b, c, log_a, delta, b_bwd, c_bwd, log_a_bwd, s, has_up, chunk):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("mixerzoo::quasiseparable_product_backward", mutates_args=())
def _qs_product_backward(x: torch.Tensor, dy: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                         log_a: torch.Tensor, delta: Optional[torch.Tensor], b_bwd: torch.Tensor,
                         c_bwd: torch.Tensor, log_a_bwd: torch.Tensor, s: int, has_up: bool, chunk: int,
                         combine: bool) -> list[torch.Tensor]:
    """``[dx, db, dc, dlog_a, db', dc', dlog_a', ddelta]``; an absent gradient (no upper triangle, shared
    generators, no delta) is an empty tensor, as an operator returns tensors only."""
    grads = _backward(x, dy.to(x.dtype), (b, c, log_a), (b_bwd, c_bwd, log_a_bwd) if has_up else None,
                      delta, s, chunk, combine)
    return [g if g is not None else x.new_empty(0) for g in grads]


@_qs_product_backward.register_fake
def _qs_product_backward_fake(x, dy, b, c, log_a, delta, b_bwd, c_bwd, log_a_bwd, s, has_up, chunk, combine):
    up = has_up and not combine
    like = lambda t, keep: torch.empty_like(t, memory_format=torch.contiguous_format) if keep else x.new_empty(0)  # noqa: E731
    return [like(x, True), like(b, True), like(c, True), like(log_a, True), like(b_bwd, up), like(c_bwd, up),
            like(log_a_bwd, has_up), like(delta, delta is not None)]


def _qs_setup_context(ctx, inputs, output):
    x, b, c, log_a, delta, b_bwd, c_bwd, log_a_bwd, s, has_up, chunk = inputs
    ctx.save_for_backward(x, b, c, log_a, delta, b_bwd, c_bwd, log_a_bwd)
    # The same generators in both triangles (Hydra's shared B, C): one gradient each, summed in the kernel.
    ctx.cfg = (s, has_up, chunk, has_up and b_bwd is b and c_bwd is c)


def _qs_backward(ctx, dy):
    x, b, c, log_a, delta, b_bwd, c_bwd, log_a_bwd = ctx.saved_tensors
    s, has_up, chunk, combine = ctx.cfg
    gx, gb, gc, gla, gbb, gcb, glab, gd = _qs_product_backward(x, dy, b, c, log_a, delta, b_bwd, c_bwd, log_a_bwd,
                                                               s, has_up, chunk, combine)
    if not has_up or combine:
        gbb = gcb = None
    if not has_up:
        glab = None
    if delta is None:
        gd = None
    return gx, gb, gc, gla, gd, gbb, gcb, glab, None, None, None


_qs_product.register_autograd(_qs_backward, setup_context=_qs_setup_context)


def _qs_apply(x, b, c, log_a, delta, b_bwd, c_bwd, log_a_bwd, s: int, has_up: bool, chunk: int) -> torch.Tensor:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x, b, c, log_a, delta, b_bwd, c_bwd, log_a_bwd)):
        # Refuse now rather than in the backward pass.
        N, P, limit = b.shape[-1], x.shape[-1], _smem_limit(x.device)
        if not plan_candidates(_BWD_KERNELS, N, P, x.dtype, chunk, limit, backward=True):
            raise _no_plan(_BWD_KERNELS, N, P, x.dtype, chunk, limit, [])
    return _qs_product(x, b, c, log_a, delta, b_bwd, c_bwd, log_a_bwd, s, has_up, chunk)


def semiseparable_matmul(x: torch.Tensor, b: torch.Tensor, c: torch.Tensor, log_a: torch.Tensor,
                         chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Causal SSD product ``y = M x``, ``m_ij = c_i . b_j exp(sum_{t=j+1..i} log_a_t)`` (i >= j), in Triton.

    Parameters
    ----------
    x : ``(*batch, L, P)``, float16 / bfloat16 / float32 / float64.
    b, c : ``(*batch, L, N)``, broadcastable to x's batch dims; expanded views (e.g. one B, C shared by all
        heads, ngroups = 1) are read through their strides, never materialized. Cast to x's dtype.
    log_a : ``(*batch, L)``, <= 0 (not checked here; :class:`structured.semiseparable.Semiseparable` checks).
    chunk_size : rows per chunk Q (16, 32, 64 or 128), an upper bound: each kernel pair runs with the
        largest chunk <= chunk_size (and <= 64) whose launch fits the device's shared memory, forward and
        backward planned separately (:func:`plan_candidates`; e.g. d_state 256 in bf16 runs at 32 on an
        H100). The chunk only reorganises the computation: every chunk gives the same product in exact
        arithmetic, results differ in rounding only (tested in float64 to 1e-12).

    Returns ``(*batch, L, P)`` in x's dtype; products accumulate in float32 (bf16/fp16 operands on the matrix
    units, float32 operands in IEEE float32, no tf32; float64 operands and accumulation in float64). Decay
    exponents (chunk-local sums of log_a and their differences) are formed in float64 for float32 and float64
    x, in float32 for half precision (see :func:`_decay_dtype`).
    Differentiable in all inputs; gradients of parameters broadcast over batch dims are summed in the kernel.

    Cost: O(L Q (N + P) + L N P) flops, O(L (N + P)) memory traffic; one program per (batch, 64 columns of P)
    sweeps the L / Q chunks. Reference: Dao & Gu, arXiv 2405.21060, Section 6.
    """
    _check(x, {"b": b, "c": c}, {"log_a": log_a}, chunk_size)
    b, c = b.to(x.dtype), c.to(x.dtype)
    return _qs_apply(x, b, c, log_a, None, b, c, log_a, 0, False, chunk_size)


def quasiseparable_matmul(x: torch.Tensor, b: torch.Tensor, c: torch.Tensor, log_a: torch.Tensor,
                          delta: torch.Tensor, b_bwd: Optional[torch.Tensor] = None,
                          c_bwd: Optional[torch.Tensor] = None, log_a_bwd: Optional[torch.Tensor] = None,
                          shift: bool = True, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Hydra's quasiseparable product, fused bidirectional chunked scan in Triton.

    ``y = shift(SS(x)) + flip(shift(SS_bwd(flip(x)))) + delta * x``; entries (0-based, see
    :class:`structured.quasiseparable.Quasiseparable`): with ``shift=True``
    ``m_ij = c_{i-1}.b_j exp(sum_{t=j+1..i-1} log_a_t)`` (i > j), ``m_ii = delta_i``,
    ``m_ij = c'_{i+1}.b'_j exp(sum_{t=i+1..j-1} log_a'_t)`` (i < j); with ``shift=False`` (addition-based
    bidirectional SSM) ``m_ij = c_i.b_j exp(sum_{t=j+1..i} log_a_t)`` (i >= j) plus
    ``c'_i.b'_j exp(sum_{t=i..j-1} log_a'_t)`` (i <= j) plus ``delta_i`` on the diagonal.

    Parameters
    ----------
    x : ``(*batch, L, P)`` float16 / bfloat16 / float32 / float64 (float64 accumulates in float64).
    b, c, b_bwd, c_bwd : ``(*batch, L, N)`` (broadcastable; expanded views are read through their strides).
        ``b_bwd``/``c_bwd``/``log_a_bwd`` default to the forward ones. When ``b_bwd`` and ``c_bwd`` are the
        same data as ``b`` and ``c`` (Hydra's quasiseparable mixer) and ``shift=False``, one ``C B^T`` per
        chunk serves both triangles; with the shift the two triangles need ``C B^T`` read one row down and
        one row up, which the kernel forms from the one B tile and two overlapping C row windows (Triton
        cannot shift a register tile by a row; a shift-matrix product would cost as much as the second Gram).
    log_a, log_a_bwd : ``(*batch, L)``, <= 0 (not checked here).
    delta : ``(*batch, L)`` diagonal.
    shift : Hydra's shifted form (True) or the addition-based variant (False).
    chunk_size : rows per chunk Q (16, 32, 64 or 128), an upper bound: each kernel pair runs with the
        largest chunk <= chunk_size (and <= 64) whose launch fits the device's shared memory, forward and
        backward planned separately (:func:`plan_candidates`; e.g. d_state 256 in bf16 runs at 32 on an
        H100). The chunk only reorganises the computation: every chunk gives the same product in exact
        arithmetic, results differ in rounding only (tested in float64 to 1e-12).

    Returns ``(*batch, L, P)`` in x's dtype, float32 accumulation (float64 for float64 x; decay exponents in
    float64 for float32 and float64 x, see :func:`_decay_dtype`); differentiable in all inputs (the
    backward is one fused kernel pair for all gradients; see the module docstring).

    Algorithm: one right-to-left sweep stores the backward direction's chunk states, one left-to-right sweep
    carries the forward state and forms, per chunk, one combined Q x Q matrix (strict lower + strict upper
    + diagonal) applied to the x tile once. O(L Q (N + P) + L N P) flops; x is read twice (once per sweep),
    no flipped or doubled copy is made. Reference: Hwang, Lahoti, Dao, Gu, arXiv 2407.09941, Section 3.
    """
    if not isinstance(shift, bool):
        raise ValueError(f"shift must be a bool, got {shift!r}")
    b_bwd = b if b_bwd is None else b_bwd
    c_bwd = c if c_bwd is None else c_bwd
    log_a_bwd = log_a if log_a_bwd is None else log_a_bwd
    _check(x, {"b": b, "c": c, "b_bwd": b_bwd, "c_bwd": c_bwd},
                         {"log_a": log_a, "delta": delta, "log_a_bwd": log_a_bwd}, chunk_size)
    shared_b, shared_c = b_bwd is b, c_bwd is c
    b, c = b.to(x.dtype), c.to(x.dtype)
    b_bwd = b if shared_b else b_bwd.to(x.dtype)
    c_bwd = c if shared_c else c_bwd.to(x.dtype)
    return _qs_apply(x, b, c, log_a, delta, b_bwd, c_bwd, log_a_bwd, 1 if shift else 0, True, chunk_size)
