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
gradients), adjacent in launch order so that they share x and dy in L2 (``TUNING["bwd_split"]``).

Reference: T. Dao, A. Gu, "Transformers are SSMs" (arXiv 2405.21060), Section 6 (chunked SSD); S. Hwang,
A. Lahoti, T. Dao, A. Gu, "Hydra" (arXiv 2407.09941), Section 3 (quasiseparable mixer).
"""
from __future__ import annotations

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
# batch element in the input dtype and sum them in torch (False). Not yet timed on a GPU:
# `python -m benchmarks.kernels --tune-bwd` sweeps them. bwd_states_pair: the backward's right-to-left kernel
# computes its two states in one program per batch element (one wave here) or in two (two waves).
TUNING = {"block_v": 64, "num_warps": 4, "num_stages": 2,
          "bwd_num_warps": 4, "bwd_num_stages": 2, "bwd_atomic_sum": True, "bwd_split": False,
          "bwd_states_pair": True}


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


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(n)))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when a and b are the same tensor data (object identity or identical view)."""
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
                      and a.dtype == b.dtype)


def _apply(V: torch.Tensor, lo: _Tri, up: Optional[_Tri], delta: Optional[torch.Tensor], vo: int,
           out_dtype: torch.dtype, chunk: int) -> torch.Tensor:
    """Run the generic operator (lower triangle, optional upper one and diagonal) on 4-D views; returns
    ``(B0, B1, L, DV)`` in ``out_dtype``."""
    B0, B1, L, DV = V.shape
    DG = lo.R.shape[-1]
    dev = V.device
    BQ = chunk
    BG = _pow2(DG)
    BV = min(TUNING["block_v"], _pow2(DV))
    n_chunks = triton.cdiv(L, BQ)
    grid = (B0 * B1, triton.cdiv(DV, BV))
    prec = "ieee" if V.dtype == torch.float32 else "tf32"
    upcast = V.dtype == torch.bfloat16 and _interpreting()
    acc = tl.float64 if V.dtype == torch.float64 else tl.float32
    out = torch.empty((B0, B1, L, DV), dtype=out_dtype, device=dev)
    num_warps = TUNING["num_warps"] or (4 if BG * BV <= 64 * 64 else 8)
    launch = dict(num_warps=num_warps)
    if TUNING["num_stages"]:
        launch["num_stages"] = TUNING["num_stages"]
    if up is not None:
        # Stored in V's dtype: the sweep casts each state to it before its matrix product anyway, so a
        # wider copy would only double this, the kernel pair's largest, memory traffic.
        states = torch.empty((B0 * B1, n_chunks, DG, DV), dtype=V.dtype, device=dev)
        _launch_fitting(
            _k._upper_states_kernel, grid,
            (up.K, *up.K.stride(), up.lam, *up.lam.stride()[:3], V, *V.stride(), states,
             B1, L, DG, DV, n_chunks),
            dict(UP_K=up.k, UP_U=up.u, VO=vo, BQ=BQ, BG=BG, BV=BV, PREC=prec, UPCAST=upcast, ACC=acc), launch)
    else:
        states = out  # unused placeholder pointer
    lo_ = lo
    up_ = up if up is not None else lo  # placeholder pointers when there is no upper triangle
    shared = (up is not None and _same(lo.R, up.R) and _same(lo.K, up.K)
              and lo.r == -up.r and lo.k == -up.k)
    d = delta if delta is not None else lo_.lam
    _launch_fitting(_k._sweep_kernel, grid, (
        lo_.R, *lo_.R.stride(), lo_.K, *lo_.K.stride(), lo_.lam, *lo_.lam.stride()[:3],
        up_.R, *up_.R.stride(), up_.K, *up_.K.stride(), up_.lam, *up_.lam.stride()[:3],
        V, *V.stride(), d, *d.stride()[:3], states, out, *out.stride(),
        B1, L, DG, DV, n_chunks), dict(
        LO_R=lo_.r, LO_K=lo_.k, LO_U=lo_.u, LO_V=lo_.v, LO_S=lo_.s,
        HAS_UP=up is not None, UP_R=up_.r, UP_K=up_.k, UP_U=up_.u, UP_V=up_.v, UP_S=up_.s,
        SHARED_GRAM=shared, HAS_D=delta is not None, VO=vo,
        BQ=BQ, BG=BG, BV=BV, PREC=prec, UPCAST=upcast, ACC=acc), launch)
    return out


# Launches that ran out of shared memory with the TUNING configuration and ran with fewer pipeline stages:
# {(kernel name, BG, BV, dtype): num_stages}. The software pipeline keeps `num_stages` copies of every
# tile it prefetches, so with wide generators (e.g. d_state 256 for the quasiseparable operator, whose
# two triangles each hold a (chunk, d_state) pair of tiles) two stages exceed an H100's 227 KiB.
_STAGES_FITTING: dict = {}


def _launch_fitting(kernel, grid, args: tuple, meta: dict, launch: dict) -> None:
    """Launch ``kernel[grid](*args, **meta, **launch)``; if it needs more shared memory than the device has,
    retry with fewer software-pipelining stages (remembered per shape class) before giving up."""
    key = (kernel.fn.__name__ if hasattr(kernel, "fn") else str(kernel), meta.get("BG"), meta.get("BV"),
           str(meta.get("ACC")))
    stages = _STAGES_FITTING.get(key, launch.get("num_stages"))
    while True:
        kw = dict(launch) if stages is None else {**launch, "num_stages": stages}
        try:
            kernel[grid](*args, **meta, **kw)
            return
        except OutOfResources as e:
            now = stages if stages is not None else 3  # Triton's default on Hopper
            if now <= 1:
                raise RuntimeError(
                    f"{key[0]} with BG={key[1]} BV={key[2]} and num_stages=1 still exceeds the device's shared "
                    f"memory ({e}); lower kernels.ssd.TUNING['block_v'] or chunk_size") from e
            stages = now - 1
            _STAGES_FITTING[key] = stages


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
    """All gradients of ``y = (lower + upper + diag(delta)) x`` with the products' offsets (both triangles
    shifted by ``s``); ``lower``/``upper`` are ``(b, c, log_a)`` broadcastable to x's batch dims, ``upper``
    may be None (causal), ``combine``: upper's b, c are lower's (the same tensors), so their gradients are
    summed in the kernel and returned once. Two Triton launches (see :mod:`kernels._ssd_triton`). Returns
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
    BQ, BN, BP = chunk, _pow2(N), _pow2(P)
    n_chunks = triton.cdiv(L, BQ)
    prec = "ieee" if x.dtype == torch.float32 else "tf32"
    upcast = x.dtype == torch.bfloat16 and _interpreting()
    common = dict(BQ=BQ, BN=BN, BP=BP, PREC=prec, UPCAST=upcast, ACC=acc)
    # Adjoint/upper states from the right, stored in x's dtype (cast to it before every product anyway).
    g_lo = torch.empty((B0 * B1, n_chunks, N, P), dtype=x.dtype, device=dev)
    h_up = torch.empty_like(g_lo) if has_up else g_lo
    launch = dict(num_warps=TUNING["num_warps"] or 4)
    if TUNING["num_stages"]:
        launch["num_stages"] = TUNING["num_stages"]
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
    launch = dict(num_warps=TUNING["bwd_num_warps"] or 4)
    if TUNING["bwd_num_stages"]:
        launch["num_stages"] = TUNING["bwd_num_stages"]
    split = bool(TUNING["bwd_split"])
    _k._bwd_sweep_kernel[(3 if split else 1, B0 * B1)](
        X, *X.stride(), DY, *DY.stride(), BL, *BL.stride(), CL, *CL.stride(), AL, *AL.stride()[:3],
        BU, *BU.stride(), CU, *CU.stride(), AU, *AU.stride()[:3], D, *D.stride()[:3], g_lo, h_up,
        dx, *dx.stride(), t_bl.view, *t_bl.view.stride(), t_cl.view, *t_cl.view.stride(),
        t_bu.view, *t_bu.view.stride(), t_cu.view, *t_cu.view.stride(), rs, ddl,
        B1, L, N, P, n_chunks, SPLIT=split,
        LO_S=s, HAS_UP=has_up, UP_S=s, SHARED_GRAM=has_up and _same(b, bu) and _same(c, cu),
        COMBINE=combine, JOINT_DY=has_up and s == 0, HAS_D=delta is not None,
        AT_BL=t_bl.atomic, AT_CL=t_cl.atomic, AT_BU=t_bu.atomic, AT_CU=t_cu.atomic, **common, **launch)
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


class _QSFunction(torch.autograd.Function):
    """Generic forward: lower (b, c, log_a), optional upper (b', c', log_a'), optional delta.

    Parameters arrive with broadcastable batch dims (e.g. (B, 1, L, N), one B for all heads); they are
    expanded here as views and their gradients are summed back inside the backward kernel, so no per-head
    copy of a shared parameter is made and no per-head float32 gradient exists.
    """

    @staticmethod
    def forward(ctx, x, b, c, log_a, delta, b_bwd, c_bwd, log_a_bwd, s, has_up, chunk):
        nb = x.dim() - 2
        batch, L = x.shape[:-2], x.shape[-2]
        G = lambda t: t.expand(*batch, L, t.shape[-1])  # noqa: E731
        Vv = lambda t: t.expand(*batch, L)  # noqa: E731
        lo = _tri4(G(c), G(b), Vv(log_a), nb, s, 0, 0, s, s)
        up = _tri4(G(c_bwd), G(b_bwd), Vv(log_a_bwd), nb, s, 0, 0, s, s) if has_up else None
        d4 = _view4(Vv(delta).unsqueeze(-1), nb) if delta is not None else None
        y = _apply(_view4(x, nb), lo, up, d4, 0, x.dtype, chunk)
        ctx.save_for_backward(x, b, c, log_a, delta, b_bwd, c_bwd, log_a_bwd)
        # The same tensors in both triangles (Hydra's shared B, C): one gradient, summed in the kernel.
        ctx.cfg = (s, has_up, chunk, b_bwd is b and c_bwd is c)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x, b, c, log_a, delta, b_bwd, c_bwd, log_a_bwd = ctx.saved_tensors
        s, has_up, chunk, combine = ctx.cfg
        grads = _backward(x, dy.to(x.dtype), (b, c, log_a), (b_bwd, c_bwd, log_a_bwd) if has_up else None,
                          delta, s, chunk, combine)
        gx, gb, gc, gla, gbb, gcb, glab, gd = (g if need else None
                                               for g, need in zip(grads, (ctx.needs_input_grad[i]
                                                                          for i in (0, 1, 2, 3, 5, 6, 7, 4))))
        return gx, gb, gc, gla, gd, gbb, gcb, glab, None, None, None


def semiseparable_matmul(x: torch.Tensor, b: torch.Tensor, c: torch.Tensor, log_a: torch.Tensor,
                         chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Causal SSD product ``y = M x``, ``m_ij = c_i . b_j exp(sum_{t=j+1..i} log_a_t)`` (i >= j), in Triton.

    Parameters
    ----------
    x : ``(*batch, L, P)``, float16 / bfloat16 / float32 / float64.
    b, c : ``(*batch, L, N)``, broadcastable to x's batch dims; expanded views (e.g. one B, C shared by all
        heads, ngroups = 1) are read through their strides, never materialized. Cast to x's dtype.
    log_a : ``(*batch, L)``, <= 0 (not checked here; :class:`structured.semiseparable.Semiseparable` checks).
    chunk_size : rows per chunk Q (16, 32, 64 or 128).

    Returns ``(*batch, L, P)`` in x's dtype; products accumulate in float32 (bf16/fp16 operands on the matrix
    units, float32 operands in IEEE float32, no tf32; float64 operands and accumulation in float64).
    Differentiable in all inputs; gradients of parameters broadcast over batch dims are summed in the kernel.

    Cost: O(L Q (N + P) + L N P) flops, O(L (N + P)) memory traffic; one program per (batch, 64 columns of P)
    sweeps the L / Q chunks. Reference: Dao & Gu, arXiv 2405.21060, Section 6.
    """
    _check(x, {"b": b, "c": c}, {"log_a": log_a}, chunk_size)
    b, c = b.to(x.dtype), c.to(x.dtype)
    return _QSFunction.apply(x, b, c, log_a, None, b, c, log_a, 0, False, chunk_size)


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
    chunk_size : rows per chunk Q (16, 32, 64 or 128).

    Returns ``(*batch, L, P)`` in x's dtype, float32 accumulation; differentiable in all inputs (the
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
    return _QSFunction.apply(x, b, c, log_a, delta, b_bwd, c_bwd, log_a_bwd, 1 if shift else 0, True,
                             chunk_size)
