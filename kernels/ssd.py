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
output. Backward (all gradients of that operator, causal or bidirectional): a right-to-left kernel stores the two
states that come from the right (the lower triangle's adjoint state and the upper triangle's state), then three
launches of the left-to-right gradient kernel, one per role, each compiled for its role alone: dx and the
diagonal's gradient; the column-generator gradients; the row-generator gradients. Generator gradients are summed
over broadcast batch dims in the kernel, the log-decay gradients come from running sums of ``b . db - c . dc``
carried by the sweeps.

Launch configurations (chunk, columns per program, stages) are tried in order of preference
(:func:`plan_candidates`); one whose launch raises Triton's ``OutOfResources`` (its shared memory exceeds the
device's) is remembered for this device and the next one runs, so the first launch of a shape may compile a few
configurations, later ones go straight to the one that fits. Never fewer than two pipeline stages.

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
# H100, triton 3.6, B=8 H=24 P=N=64 bf16, L=16384 fused fwd (ms): (64, default, default) 2.89; (64, 8, default)
# 3.24; (64, 4, 2) 1.97; (32, 4, 3) 3.41; (32, 8, 3) 4.09; (32, 4, 1) failed with an illegal memory access at this
# L (not at L=4096) -- not understood yet, so one stage is never used.
# bwd_*: warps and stages of the backward's kernels. Its arrangement (three role-specialized launches of the
# gradient sweep, one program per batch element for the states) measured fastest on the H100: fused Hydra
# fwd+bwd at L = 16384 (B=8 H=24 P=N=64 bf16) 7.8 ms, against 9.9 for one launch of a binary holding all three
# roles and 13.7 for one program computing every gradient (results/bench/kernels-cuda-tune-bwd.json); the lab
# model's training step (d_state 256, L = 128): quasiseparable 33.8 against 26.1 steps/s, semiseparable 40.5
# against 32.8.
# These are starting points: plan_candidates lowers the chunk and block_v, then the stages (never below 2), and
# the planner takes the first that the device runs.
TUNING = {"block_v": 64, "num_warps": 4, "num_stages": 2, "bwd_num_warps": 4, "bwd_num_stages": 2}


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
_BWD_KERNELS = ("bwd_states", "bwd_sweep")


class Plan(NamedTuple):
    """One launch configuration of a kernel pair: chunk rows BQ, columns per program BV (backward: BP, all of P),
    warps and pipeline stages."""
    BQ: int
    BV: int
    num_warps: int
    num_stages: int


def _tile_pairs(BQ: int, BV: int) -> list:
    """(BQ, BV) pairs from the requested one down to (16, 16) (powers of two), larger tiles first (more
    work per program for the matrix units, fewer programs rereading B and C), the larger chunk first among
    equal tiles (the caller's choice)."""
    qs = [BQ >> i for i in range(BQ.bit_length()) if BQ >> i >= 16] or [BQ]
    vs = [BV >> i for i in range(BV.bit_length()) if BV >> i >= 16] or [BV]
    return sorted(((q, v) for q in qs for v in vs), key=lambda qv: (-qv[0] * qv[1], -qv[0]))


# The plan each kernel pair last launched with, {kernels: Plan}, for benchmarks to record what ran.
LAST_PLANS: dict = {}
# Plans whose launch raised OutOfResources, {(device, kernels, dtype, BG, BP, plan)}: what does not fit this
# device's shared memory is not compiled again; plan_candidates leaves them out.
_REFUSED: set = set()
# Launches that fit but that Triton 3.6 miscompiles on sm_90: {(kernel, half precision?, BQ, BG)}, never
# planned. The causal forward sweep at bf16, chunk 64, state 256 (the lab SSM mixers' shape) declares 112 KiB
# of shared memory and reads at 225 KiB: compute-sanitizer on an H100 reported "Invalid __shared__ read of size
# 1024 bytes ... at _sweep_kernel ... _ssd_triton.py:55" (the tl.dot), and the mixer's training step died with an
# illegal memory access. It happens only for the argument specialization that the mixer's strided tensors give
# (the same plan on contiguous test tensors ran clean), so no unit test on a GPU catches it. Chunk 32 at that
# shape ran clean under the sanitizer. fp16 compiles the same tiles as bf16, so it is excluded with it.
_MISCOMPILED = {("sweep_causal", True, 64, 256)}
_HALF = (torch.float16, torch.bfloat16)
_PLAN_MEMO: dict = {}


def _device_key(device: torch.device):
    """The device a refusal holds for: a CUDA device by index (each GPU has its own shared memory)."""
    if device.type == "cuda":
        return ("cuda", device.index if device.index is not None else torch.cuda.current_device())
    return (device.type, None)


def plan_candidates(kernels: tuple, N: int, P: int, dtype: torch.dtype, chunk: int,
                    device: torch.device = torch.device("cpu"), backward: bool = False) -> list:
    """Launch configurations for the kernel pair ``kernels`` (launched with one chunk size) in order of
    preference, less those that ran out of shared memory on ``device`` (:data:`_REFUSED`) and the known
    miscompiled ones (:data:`_MISCOMPILED`).

    Forward: from ``TUNING``'s (chunk, block_v) through smaller (BQ, BV) (:func:`_tile_pairs`) at TUNING's stages,
    then the same at each smaller stage count down to 2 (one stage is never used: (32, 4, 1) faulted on an H100
    at L = 16384, not understood). Backward: BP = pow2(P) is fixed (one program holds all of P), so only BQ
    moves, then the stages. Chunks above 64 are not offered: the kernels are tuned and tested on the GPU up to
    64, and a larger chunk only grows the Q x Q tiles of every kernel. Memoized (about 20 us a call otherwise,
    twice per forward).
    """
    dev = _device_key(device)
    key = (kernels, _pow2(N), _pow2(P), dtype, chunk, dev, backward, tuple(sorted(TUNING.items())), len(_REFUSED))
    if key not in _PLAN_MEMO:
        _PLAN_MEMO[key] = _plan_candidates(kernels, N, P, dtype, chunk, dev, backward)
    return list(_PLAN_MEMO[key])


def _plan_candidates(kernels: tuple, N: int, P: int, dtype: torch.dtype, chunk: int, dev, backward: bool) -> list:
    """The uncached :func:`plan_candidates` (``dev`` from :func:`_device_key`)."""
    BG = _pow2(N)
    prefix = "bwd_" if backward else ""
    warps, stages0 = TUNING[prefix + "num_warps"] or 4, TUNING[prefix + "num_stages"] or 3
    if stages0 < 2:
        raise ValueError(f"kernels.ssd.TUNING[{prefix + 'num_stages'!r}] is {TUNING[prefix + 'num_stages']!r}; the "
                         f"scan kernels run with 2 or more pipeline stages (one stage faulted on an H100), or None "
                         f"for Triton's default")
    BV0 = _pow2(P) if backward else min(TUNING["block_v"], _pow2(P))
    tiles = [(q, BV0) for q, _ in _tile_pairs(min(chunk, 64), 16)] if backward else _tile_pairs(min(chunk, 64), BV0)
    out = []
    for stages in range(stages0, 1, -1):
        for BQ, BV in tiles:
            plan = Plan(BQ, BV, warps, stages)
            if ((dev, kernels, dtype, BG, _pow2(P), plan) not in _REFUSED
                    and not any((k, dtype in _HALF, BQ, BG) in _MISCOMPILED for k in kernels)):
                out.append(plan)
    return out


def _run_planned(kernels: tuple, N: int, P: int, dtype: torch.dtype, chunk: int, device: torch.device,
                 run, backward: bool = False):
    """``run(plan)`` with the first plan of :func:`plan_candidates` that the device runs: a plan whose launch
    raises ``OutOfResources`` (too much shared memory for this device) is remembered and the next one runs (all
    of ``run`` again: it launches the whole kernel pair into fresh outputs). Raises ValueError when none fits."""
    plans = plan_candidates(kernels, N, P, dtype, chunk, device, backward=backward)
    for plan in plans:
        try:
            LAST_PLANS[kernels] = plan
            return run(plan)
        except OutOfResources:
            _REFUSED.add((_device_key(device), kernels, dtype, _pow2(N), _pow2(P), plan))
    raise _no_plan(kernels, N, P, dtype, chunk, plans)


def _no_plan(kernels, N, P, dtype, chunk, tried) -> ValueError:
    return ValueError(
        f"no launch configuration of the scan kernels {kernels} fits this device's shared memory for state size "
        f"N={N}, head dim P={P} and dtype {dtype} (chunk_size={chunk}; "
        f"{'tried ' + str(tried) if tried else 'every configuration ran out of shared memory before'}; stages "
        f"below 2 are not used); use a smaller N or P, or a narrower dtype")


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
    # Broadcast over batch dims (e.g. one B for all heads): the kernel sums into one float32/64 buffer through a
    # stride-0 view, so no per-head gradient copy exists (on the H100, 1.80 GB peak against 2.54 for per-head
    # rows summed in torch, at the same speed: results/bench/kernels-cuda-tune-bwd.json).
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
    summed in the kernel and returned once. Four Triton launches: the states, then the gradient sweep once per
    role (see :mod:`kernels._ssd_triton`). Returns
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
    # The state kernel runs with the sweep's plan (one plan, same chunk, warps and stages, for all four launches).
    launch = dict(num_warps=plan.num_warps, num_stages=plan.num_stages)
    _k._bwd_states_kernel[(B0 * B1,)](
        CL, *CL.stride(), AL, *AL.stride()[:3], DY, *DY.stride(), g_lo,
        BU, *BU.stride(), AU, *AU.stride()[:3], X, *X.stride(), h_up,
        B1, L, N, P, n_chunks, LO_S=s, HAS_UP=has_up, **common, **launch)
    dx = torch.empty((B0, B1, L, P), dtype=x.dtype, device=dev)
    t_bl, t_cl = _grad_target(b, batch, L, acc_t), _grad_target(c, batch, L, acc_t)
    t_bu, t_cu = ((_grad_target(bu, batch, L, acc_t), _grad_target(cu, batch, L, acc_t))
                  if has_up and not combine else (t_bl, t_cl))
    rs = torch.empty((4 if has_up else 2, B0 * B1, L), dtype=acc_t, device=dev)
    ddl = torch.empty((B0 * B1, L), dtype=acc_t, device=dev) if delta is not None else rs
    D = Vv(delta) if delta is not None else AL
    # One launch per role, each compiled for its role alone; the roles write disjoint outputs.
    args = (X, *X.stride(), DY, *DY.stride(), BL, *BL.stride(), CL, *CL.stride(), AL, *AL.stride()[:3],
            BU, *BU.stride(), CU, *CU.stride(), AU, *AU.stride()[:3], D, *D.stride()[:3], g_lo, h_up,
            dx, *dx.stride(), t_bl.view, *t_bl.view.stride(), t_cl.view, *t_cl.view.stride(),
            t_bu.view, *t_bu.view.stride(), t_cu.view, *t_cu.view.stride(), rs, ddl,
            B1, L, N, P, n_chunks)
    consts = dict(LO_S=s, HAS_UP=has_up, UP_S=s, SHARED_GRAM=has_up and _same(b, bu) and _same(c, cu),
                  COMBINE=combine, JOINT_DY=has_up and s == 0, HAS_D=delta is not None,
                  AT_BL=t_bl.atomic, AT_CL=t_cl.atomic, AT_BU=t_bu.atomic, AT_CU=t_cu.atomic, **common, **launch)
    for role in (0, 1, 2):
        _k._bwd_sweep_kernel[(B0 * B1,)](*args, ROLE=role, **consts)
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
        # Refuse now rather than in the backward pass, once every backward plan ran out of shared memory here.
        N, P = b.shape[-1], x.shape[-1]
        if not plan_candidates(_BWD_KERNELS, N, P, x.dtype, chunk, x.device, backward=True):
            raise _no_plan(_BWD_KERNELS, N, P, x.dtype, chunk, [])
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
        H100, where chunk 64 runs out of shared memory). The chunk only reorganises the computation: every chunk gives the same product in exact
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
        H100, where chunk 64 runs out of shared memory). The chunk only reorganises the computation: every chunk gives the same product in exact
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
