"""The Chebyshev path of the Vandermonde (cosine) product, fused on the GPU, without a host synchronization.

``structured.vandermonde`` (module docstring, ``chebyshev``) approximates ``m_ij = sum_d cos(2 pi s q_id j) -
cos(2 pi s k_jd i)`` by interpolating each cosine in the index at n Chebyshev points ``t_r`` (index space):

    M_hat = U Lam^T - Lam V^T,   U_ir = sum_d cos(2 pi s q_id t_r),  V_jr = sum_d cos(2 pi s k_jd t_r),
                                 Lam_jr = l_r(j)   (the Lagrange basis of the points, at the integers j)

a rank-2n factorization with row features ``[U_i, -Lam_i]`` and column features ``[Lam_j, V_j]``. So the product
runs like the exponential-sum Cauchy kernels (``kernels/cauchy.py``): a "reduce" kernel forms
``Z = [Lam^T x ; V^T x]`` (2n x P per batch element) and a "rows" kernel ``y_i = U_i Z_0 - Lam_i Z_1``; no feature
matrix is stored: U, V and Lam are recomputed in registers from the angles, the points and one number per row.

Everything data-dependent is decided on the device, per batch element, by a "prep" kernel:

* ``Omega_b = pi s (L-1) max(|q_b|, |k_b|)`` and the number of points: the fewest with bound E(n, Omega_b) <= eps,
  read off the table of Omega limits the caller passes in (``structured.vandermonde.chebyshev_omega_limits``: the
  bound grows with Omega, so n = 1 + #{limits < Omega}), rounded up to a multiple of the chunk ``CHUNK`` (more points only tighten the
  bound) and capped at ``max_points`` (the size of the Z blocks). Where more points than the cap would be needed,
  the points are NaN, and so are the batch element's outputs: checking would need a sync (the torch path raises);
  ``structured.vandermonde.Vandermonde`` plans on the host and passes its own count as the cap.
* the points ``t_r = (cos(pi r / (n-1)) + 1) (L-1)/2`` (float64, stored in the accumulation dtype) and, per row j,
  ``1 / sum_r w_r / (j - t_r)`` (weights ``(-1)^r``, halved at both ends): the second ("true") barycentric
  formula, ``Lam_jr = (w_r / (j - t_r)) / sum_r' (w_r' / (j - t_r'))``, forward-stable for Chebyshev points
  (Higham, "The numerical stability of barycentric Lagrange interpolation", IMA J. Numer. Anal. 24(4), 2004) and
  consistent with the stored points: U and Lam use the same rounded t_r, so the approximant interpolates exactly
  at the points it evaluates. A row on a point (j == t_r) gets 0 there, and Lam_j = e_r.

The reduce kernel also splits L into segments (enough programs at short L) whose sums are added atomically: the
results are reproducible to rounding, not bit for bit.

Backward (g = dL/dy): ``Zg = [Lam^T g ; U^T g]`` by the reduce kernel on (q, g); then the rows kernel twice:
on (k, Zg, x) for ``dx = Lam (U^T g) - V (Lam^T g)`` and ``dk_jd = 2 pi s sum_r (x_j . (Lam^T g)_r)
t_r sin(2 pi s k_jd t_r)``, and on (q, Z, g) for ``dq_id = -2 pi s sum_r (g_i . (Lam^T x)_r) t_r sin(2 pi s q_id
t_r)``: the exact gradients of the approximant. The torch reference of the same computation is
``structured.vandermonde._chebyshev_product`` (points given, Lam from the same formula in float64).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._matfree_tiled import (DOT_PRECISIONS, _cdiv, _dense, _flat_dims, _interpreting, _next_pow2, _node_extremes, _put,
                             check_args, check_device, fake_gradients, register_intermediate_autograd)
from .cauchy import _cast_out
from .vandermonde import _cos_turns, _reduce_turns, _sin_turns

#: Points are taken in chunks of this many (``tl.dot`` needs >= 16): the count is rounded up to a multiple.
CHUNK = 16
#: Default cap on the number of points (the Z blocks hold ``min(L, DEFAULT_MAX_POINTS)`` rounded up to a chunk):
#: beyond ~L points the path costs more than the exact product; Hydra's scale s = 1e-3 needs ~0.016 L + 15.
DEFAULT_MAX_POINTS = 1024


@triton.jit
def _points(offs, npts, half, valid, ACC: tl.constexpr):
    # t_r = (cos(pi r / (n - 1)) + 1) (L - 1)/2 in float64, rounded to ACC (NaN where the cap was exceeded)
    den = tl.maximum(npts - 1, 1).to(tl.float64)
    t = (tl.cos(3.141592653589793 * offs.to(tl.float64) / den) + 1.0) * half
    return tl.where(valid, t, float("nan")).to(ACC)


@triton.jit
def _weights(offs, npts, ACC: tl.constexpr):
    # barycentric weights of second-kind Chebyshev points: (-1)^r, halved at both ends
    w = tl.where(offs % 2 == 0, 1.0, -1.0)
    return tl.where((offs == 0) | (offs == npts - 1), 0.5 * w, w).to(ACC)


@triton.jit
def _lagrange(j, t, w, inv_s, TRANSPOSED: tl.constexpr):
    # Lam_jr = (w_r / (j - t_r)) * inv_s_j, and 1 where j is the point itself (inv_s_j = 0 on such rows)
    if TRANSPOSED:                                   # (CHUNK, BLOCK_L)
        diff = j[None, :] - t[:, None]
        scale = w[:, None] * inv_s[None, :]
    else:                                            # (BLOCK_L, CHUNK)
        diff = j[:, None] - t[None, :]
        scale = w[None, :] * inv_s[:, None]
    hit = diff == 0
    return tl.where(hit, 1.0, scale / tl.where(hit, 1.0, diff))


@triton.jit
def _table(TAB, b, L, N_CAP: tl.constexpr):
    # batch element b's row of the table: [points (N_CAP), row factors (L, padded to 16), point count, padding]; a
    # row length that is a multiple of 16 keeps every part 16-aligned (an odd offset cost the backward rows kernel
    # its register allocation in the sm_90 compile: 72 -> 255 registers and spills)
    l_pad = (L + 15) // 16 * 16
    return TAB + b.to(tl.int64) * (N_CAP + l_pad + 16), l_pad


@triton.jit
def _cheb_prep_kernel(
    Q, K, PRM, TAB, Z, L, P,
    D: tl.constexpr, D_PAD: tl.constexpr, N_CAP: tl.constexpr, N_PAD: tl.constexpr, FC: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # one program per batch element: Omega, the point count, the points, 1 / sum_r w_r / (j - t_r) per row, and
    # zeros in the rows of the Z blocks (forward and backward) that the reduce kernels will accumulate into.
    # Q, K (b, L, D) contiguous: the (BLOCK_L, D) tiles are contiguous blocks of memory. TAB: see _table.
    b = tl.program_id(0)
    ACC = TAB.dtype.element_ty
    TAB_b, l_pad = _table(TAB, b, L, N_CAP)
    q_min, q_max, k_min, k_max = _node_extremes(Q, K, b, L, D, D_PAD, BLOCK_L, ACC)
    top = tl.max(tl.maximum(tl.maximum(-q_min, q_max), tl.maximum(-k_min, k_max)), axis=0)   # max |q|, |k|
    # (a NaN node may be skipped here: its angles make the outputs NaN anyway; +inf exceeds every limit)
    omega = top.to(tl.float64) * tl.load(PRM + 1)      # pi s (L - 1) max |.|
    offs_n = tl.arange(0, N_PAD)
    limits = tl.load(PRM + 3 + offs_n, mask=offs_n < N_CAP, other=float("inf"))
    need = tl.sum((limits < omega).to(tl.int32), axis=0) + 1
    valid = need <= N_CAP
    npts = tl.minimum(((need + FC - 1) // FC) * FC, N_CAP)
    tl.store(TAB_b + N_CAP + l_pad, npts.to(ACC))
    offs_p = tl.arange(0, BLOCK_P)
    zeros = tl.zeros((FC, BLOCK_P), dtype=Z.dtype.element_ty)
    for c0 in range(0, 2 * npts, FC):                # the Lam rows [0, npts), then the feature rows [N_CAP, ...)
        row = tl.where(c0 < npts, c0, N_CAP + c0 - npts) + tl.arange(0, FC)
        at = b.to(tl.int64) * (2 * N_CAP * P) + row[:, None] * P + offs_p[None, :]
        tl.store(Z + at, zeros, mask=offs_p[None, :] < P)
        tl.store(Z + tl.num_programs(0).to(tl.int64) * (2 * N_CAP * P) + at, zeros, mask=offs_p[None, :] < P)
    half = tl.load(PRM + 2)                          # (L - 1) / 2, float64
    tl.store(TAB_b + offs_n, _points(offs_n, npts, half, valid, ACC), mask=offs_n < npts)
    # the sums use the points exactly as stored (recomputed here bit for bit: reading them back would need a
    # barrier between this program's threads)
    for l0 in range(0, L, BLOCK_L):
        offs = l0 + tl.arange(0, BLOCK_L)
        j = offs.to(ACC)
        s = tl.zeros((BLOCK_L,), dtype=ACC)
        hit = tl.zeros((BLOCK_L,), dtype=tl.int32)
        for c0 in range(0, npts, FC):
            offs_c = c0 + tl.arange(0, FC)
            t = _points(offs_c, npts, half, valid, ACC)
            w = _weights(offs_c, npts, ACC)
            diff = j[:, None] - t[None, :]
            on_point = diff == 0
            s += tl.sum(tl.where(on_point, 0.0, w[None, :] / tl.where(on_point, 1.0, diff)), axis=1)
            hit = tl.maximum(hit, tl.max(on_point.to(tl.int32), axis=1))
        # (s != 0 off the points for distinct points; the padded rows of L = 1, where all points coincide, have 0)
        tl.store(TAB_b + N_CAP + offs, tl.where(hit > 0, 0.0, 1.0 / tl.where(s == 0, 1.0, s)),
                 mask=offs < L)


@triton.jit
def _cheb_reduce_kernel(
    ANG, X, PRM, TAB, Z,
    L, P, SEG_LEN,
    D: tl.constexpr, FC: tl.constexpr, N_CAP: tl.constexpr, N_SEG: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_P: tl.constexpr, FAST: tl.constexpr, PRECISION: tl.constexpr,
):
    # Z[b, 0, chunk] += Lam_chunk^T X[b, seg], Z[b, 1, chunk] += F_chunk^T X[b, seg] with
    # F_jr = sum_d cos(2 pi s ang_jd t_r): one program per (batch element, chunk of points, segment of rows), the
    # segments' sums added atomically into Z (zeroed by the prep kernel): a batch element has only a few chunks,
    # and without the split over L too few programs would run at short L. Chunks past the count do nothing.
    # ANG (b, L, D) and X (b, L, P) are contiguous.
    pid = tl.program_id(0)
    seg = pid % N_SEG
    b = pid // (N_SEG * (N_CAP // FC))
    c0 = ((pid // N_SEG) % (N_CAP // FC)) * FC
    TAB_b, l_pad = _table(TAB, b, L, N_CAP)
    npts = tl.load(TAB_b + N_CAP + l_pad).to(tl.int32)
    ACC = TAB.dtype.element_ty
    s = tl.load(PRM).to(ACC)
    offs_c = c0 + tl.arange(0, FC)
    offs_p = tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    t = tl.load(TAB_b + offs_c, mask=offs_c < npts, other=0.0)
    w = _weights(offs_c, npts, ACC)
    A_b = ANG + b.to(tl.int64) * (L * D)
    X_b = X + b.to(tl.int64) * (L * P)
    acc_lam = tl.zeros((FC, BLOCK_P), dtype=ACC)
    acc_feat = tl.zeros((FC, BLOCK_P), dtype=ACC)
    seg_end = tl.minimum(L, (seg + 1) * SEG_LEN)
    for l0 in range(seg * SEG_LEN, tl.where(c0 < npts, seg_end, 0), BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        mask_l = offs_l < seg_end
        xt = tl.load(X_b + offs_l[:, None] * P + offs_p[None, :], mask=mask_l[:, None] & mask_p[None, :],
                     other=0.0).to(ACC)                 # padded rows: x = 0 there
        inv_s = tl.load(TAB_b + N_CAP + offs_l, mask=mask_l, other=0.0)
        lam = _lagrange(offs_l.to(ACC), t, w, inv_s, True)
        feat = tl.zeros((FC, BLOCK_L), dtype=ACC)
        for d in range(D):
            a = tl.load(A_b + offs_l * D + d, mask=mask_l, other=0.0).to(ACC) * s
            feat += _cos_turns(_reduce_turns(t[:, None] * a[None, :]), FAST)
        acc_lam += tl.dot(lam, xt, input_precision=PRECISION)
        acc_feat += tl.dot(feat, xt, input_precision=PRECISION)
    if c0 < npts:
        Z_b = Z + b.to(tl.int64) * (2 * N_CAP * P) + offs_c[:, None] * P + offs_p[None, :]
        tl.atomic_add(Z_b, acc_lam, mask=mask_p[None, :], sem="relaxed")
        tl.atomic_add(Z_b + N_CAP * P, acc_feat, mask=mask_p[None, :], sem="relaxed")


@triton.jit
def _rows_program(
    b, blk, ANG, W, PRM, TAB, XX, OUT, DANG, L, P,
    D: tl.constexpr, D_PAD: tl.constexpr, FC: tl.constexpr, N_CAP: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_P: tl.constexpr, SIGN: tl.constexpr, WITH_OUT: tl.constexpr, WITH_GRAD: tl.constexpr,
    FAST: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
):
    # Row block blk of batch element b, with F_ir = sum_d cos(2 pi s ang_id t_r) (ANG (b, L, D), XX and OUT
    # (b, L, P), DANG (b, L, D), all contiguous; EMULATE: the interpreter's bf16 stores are made to round to
    # nearest like the GPU's, see kernels.cauchy._mm):
    #   OUT[rows]     = SIGN (F W_0 - Lam W_1)                                              (WITH_OUT)
    #   DANG[rows, d] = -SIGN 2 pi s sum_r (XX_i . W_0r) t_r sin(2 pi s ang_id t_r)         (WITH_GRAD)
    offs_l = blk * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_l = offs_l < L
    offs_p = tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, D_PAD)
    mask_p = offs_p < P
    mask_lp = mask_l[:, None] & mask_p[None, :]
    TAB_b, l_pad = _table(TAB, b, L, N_CAP)
    npts = tl.load(TAB_b + N_CAP + l_pad).to(tl.int32)
    ACC = TAB.dtype.element_ty
    s = tl.load(PRM).to(ACC)
    j = offs_l.to(ACC)
    inv_s = tl.load(TAB_b + N_CAP + offs_l, mask=mask_l, other=0.0)
    A_b = ANG + b.to(tl.int64) * (L * D) + offs_l * D
    W_b = W + b.to(tl.int64) * (2 * N_CAP * P)
    rows_lp = b.to(tl.int64) * (L * P) + offs_l[:, None] * P + offs_p[None, :]
    acc = tl.zeros((BLOCK_L, BLOCK_P), dtype=ACC)
    dang = tl.zeros((BLOCK_L, D_PAD), dtype=ACC)
    xx = tl.zeros((BLOCK_L, BLOCK_P), dtype=ACC)
    if WITH_GRAD:
        xx = tl.load(XX + rows_lp, mask=mask_lp, other=0.0).to(ACC)
    for c0 in range(0, npts, FC):
        offs_c = c0 + tl.arange(0, FC)
        t = tl.load(TAB_b + offs_c)
        w0 = tl.load(W_b + offs_c[:, None] * P + offs_p[None, :], mask=mask_p[None, :], other=0.0)
        feat = tl.zeros((BLOCK_L, FC), dtype=ACC)
        dft = tl.zeros((BLOCK_L, FC), dtype=ACC)
        if WITH_GRAD:                                # (XX_i . W_0r) t_r
            dft = tl.dot(xx, tl.trans(w0), input_precision=PRECISION) * t[None, :]
        for d in range(D):
            a = tl.load(A_b + d, mask=mask_l, other=0.0).to(ACC) * s
            r = _reduce_turns(a[:, None] * t[None, :])
            if WITH_OUT:
                feat += _cos_turns(r, FAST)
            if WITH_GRAD:
                dang = _put(dang, offs_d, d, tl.sum(dft * _sin_turns(r, FAST), axis=1))
        if WITH_OUT:
            w1 = tl.load(W_b + (N_CAP + offs_c)[:, None] * P + offs_p[None, :], mask=mask_p[None, :], other=0.0)
            lam = _lagrange(j, t, _weights(offs_c, npts, ACC), inv_s, False)
            acc += tl.dot(feat, w0, input_precision=PRECISION) - tl.dot(lam, w1, input_precision=PRECISION)
    if WITH_OUT:
        tl.store(OUT + rows_lp, _cast_out(SIGN * acc, OUT.dtype.element_ty, EMULATE), mask=mask_lp)
    if WITH_GRAD:
        dang = dang * (-SIGN * 6.283185307179586 * s)
        tl.store(DANG + b.to(tl.int64) * (L * D) + offs_l[:, None] * D + offs_d[None, :],
                 _cast_out(dang, DANG.dtype.element_ty, EMULATE), mask=mask_l[:, None] & (offs_d[None, :] < D))


@triton.jit
def _cheb_rows_kernel(
    ANG, W, PRM, TAB, XX, OUT, DANG, L, P,
    D: tl.constexpr, D_PAD: tl.constexpr, FC: tl.constexpr, N_CAP: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_P: tl.constexpr, SIGN: tl.constexpr, WITH_OUT: tl.constexpr, WITH_GRAD: tl.constexpr,
    FAST: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
):
    # one program per (batch element, row block). Forward: (q, Z) -> y. Backward, one launch per pass: the rows of
    # k, (k, Zg, x) -> dx = -(V Zg_0 - Lam Zg_1) and dk; the rows of q, (q, Z, g) -> dq. (One launch for both
    # passes, chosen by program_id(1), compiled both into one kernel, whose register allocation made the backward
    # ~15% slower on the H100.)
    n_blocks = tl.cdiv(L, BLOCK_L)
    pid = tl.program_id(0)
    _rows_program(pid // n_blocks, pid % n_blocks, ANG, W, PRM, TAB, XX, OUT, DANG, L, P, D, D_PAD, FC, N_CAP,
                  BLOCK_L, BLOCK_P, SIGN, WITH_OUT, WITH_GRAD, FAST, PRECISION, EMULATE)


# (BLOCK_L, num_warps) of the reduce and rows kernels; the CPU interpreter takes small blocks. In the sm_90 compile
# (triton 3.6) the rows kernels with 4 warps use all 255 registers
# and spill (512 spill stores forward, 704 in the backward rows of k, bf16); 8 warps take 168 / 188 registers
# without spills, yet measured slower on the H100 (the same forward, backward rows 250 -> 338 us at
# L = 512, fwd+bwd 2.47 -> 3.25 ms at L = 2048), so the rows keep 4.
_BLOCKS = {"interpret": {"reduce": (16, 4), "rows": (16, 4)}, "gpu": {"reduce": (64, 4), "rows": (64, 4)}}
_PREP_BLOCK = {"interpret": 16, "gpu": 64}
#: The reduce kernels split L into at most this many segments of at least REDUCE_SEGMENT_MIN rows (a multiple of
#: the block): at L = 512 a batch element's two chunks of points alone would give too few programs.
REDUCE_MAX_SEGMENTS = 8
REDUCE_SEGMENT_MIN = 128


def _blocks(role):
    return _BLOCKS["interpret" if _interpreting() else "gpu"][role]


def _prep(q3, k3, prm, n_cap, acc, P):
    """q3, k3 (*batch, L, D) contiguous (bh = the batch dims' product). Returns the table (bh, n_cap + L_pad + 16)
    in acc, L_pad = L rounded up to 16, per batch element ``[the points (n_cap; those past the count unwritten),
    the row factors 1 / sum_r w_r / (j - t_r) (L, then padding), the point count, padding]`` (one buffer: each
    tensor argument costs a Triton launch several microseconds of host time), and the forward and backward Z
    blocks (bh, 2, n_cap, P) in acc, zero in the rows the counts use."""
    bh, L, D = _flat_dims(q3)
    # zeroed: the table and the forward Z are outputs of the product's operator, so no entry is left undefined
    tab = torch.zeros((bh, n_cap + _cdiv(L, 16) * 16 + 16), dtype=acc, device=q3.device)
    z = torch.zeros((2, bh, 2, n_cap, P), dtype=acc, device=q3.device)
    _cheb_prep_kernel[(bh,)](q3, k3, prm, tab, z, L, P, D=D, D_PAD=_next_pow2(D), N_CAP=n_cap,
           N_PAD=_next_pow2(n_cap), FC=CHUNK, BLOCK_L=_PREP_BLOCK["interpret" if _interpreting() else "gpu"],
           BLOCK_P=max(16, _next_pow2(P)))
    return tab, z[0], z[1]


def unpack_table(tab, n_cap):
    """The prep kernel's table as (point counts (bh,) int, points (bh, n_cap), row factors (bh, L_pad): the first L)."""
    l_pad = tab.shape[1] - n_cap - 16
    return tab[:, n_cap + l_pad].to(torch.int64), tab[:, :n_cap], tab[:, n_cap:n_cap + l_pad]


def _reduce(ang3, x3, prm, tab, z, fast, precision):
    """Adds ``[Lam^T x ; F(ang)^T x]`` into z (bh, 2, n_cap, P), whose used rows the prep kernel zeroed; ang3, x3
    (*batch, L, .) contiguous."""
    bh, L, P = _flat_dims(x3)
    n_cap = z.shape[2]
    bl, warps = _blocks("reduce")
    # (the interpreter's segments are short, so that the CPU tests at small L run the split too)
    seg_min = 2 * bl if _interpreting() else REDUCE_SEGMENT_MIN
    seg_len = max(seg_min, _cdiv(_cdiv(L, REDUCE_MAX_SEGMENTS), bl) * bl)
    n_seg = _cdiv(L, seg_len)
    _cheb_reduce_kernel[(bh * (n_cap // CHUNK) * n_seg,)](ang3, x3, prm, tab, z, L, P, seg_len,
           D=ang3.shape[-1], FC=CHUNK, N_CAP=n_cap, N_SEG=n_seg, BLOCK_L=bl, BLOCK_P=max(16, _next_pow2(P)), FAST=fast,
           PRECISION=precision, num_warps=warps)


def _rows(ang3, w, prm, tab, xx, out, dang, sign, fast, precision):
    """The rows kernel (see its comment); ``out`` / ``dang`` None: not computed (``xx`` is read only for dang); all
    (*batch, L, .) contiguous."""
    bh, L, D = _flat_dims(ang3)
    n_cap, P = w.shape[2], w.shape[3]
    bl, warps = _blocks("rows")
    _cheb_rows_kernel[(bh * _cdiv(L, bl),)](ang3, w, prm, tab, xx, out if out is not None else w,
           dang if dang is not None else w, L, P, D=D, D_PAD=_next_pow2(D), FC=CHUNK, N_CAP=n_cap, BLOCK_L=bl,
           BLOCK_P=max(16, _next_pow2(P)), SIGN=sign, WITH_OUT=out is not None, WITH_GRAD=dang is not None, FAST=fast,
           PRECISION=precision, EMULATE=_interpreting(), num_warps=warps)


# The product and its backward are torch custom operators (torch.compile traces through them). The forward returns
# its intermediates beside y (the table of points and row factors, and the forward Z), which the backward reuses.
@torch.library.custom_op("mixerzoo::chebyshev_product", mutates_args=())
def _chebyshev_product(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, prm: torch.Tensor, n_cap: int,
                       acc: torch.dtype, fast: bool, precision: str) -> list[torch.Tensor]:
    """``[y, tab, z]``: ``y = U (Lam^T x) - Lam (V^T x)`` with the point count chosen per batch element on the device,
    in x's shape and dtype; the prep kernel's table and ``Z = [Lam^T x ; V^T x]``."""
    x, q, k = _dense(x), _dense(q), _dense(k)       # (*batch, L, .) as they are: the kernels take them flat
    tab, z, _ = _prep(q, k, prm, n_cap, acc, x.shape[-1])
    _reduce(k, x, prm, tab, z, fast, precision)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _rows(q, z, prm, tab, y, y, None, 1, fast, precision)
    return [y, tab, z]


@_chebyshev_product.register_fake
def _chebyshev_product_fake(x, q, k, prm, n_cap, acc, fast, precision):
    bh, L, _ = _flat_dims(q)
    P = x.shape[-1]
    return [torch.empty(x.shape, dtype=x.dtype, device=x.device),
            x.new_empty((bh, n_cap + _cdiv(L, 16) * 16 + 16), dtype=acc), x.new_empty((bh, 2, n_cap, P), dtype=acc)]


@torch.library.custom_op("mixerzoo::chebyshev_product_backward", mutates_args=())
def _chebyshev_product_backward(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, prm: torch.Tensor,
                                tab: torch.Tensor, z: torch.Tensor, gy: torch.Tensor, fast: bool, precision: str,
                                need_x: bool, need_q: bool, need_k: bool) -> list[torch.Tensor]:
    """``[dx, dq, dk]`` in the inputs' shapes and dtypes (an unneeded one is an empty tensor)."""
    x, q, k = _dense(x), _dense(q), _dense(k)
    g = _dense(gy.to(x.dtype))
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device) if need_x else None
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device) if need_q else None
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device) if need_k else None
    if need_x or need_k:                   # Zg = [Lam^T g ; U^T g]; the rows of k: dx and dk
        zg = torch.zeros_like(z)           # the reduce kernel adds its segments into it
        _reduce(q, g, prm, tab, zg, fast, precision)
        _rows(k, zg, prm, tab, x, dx, dk, -1, fast, precision)
    if need_q:                             # the rows of q against the forward Z: dq
        _rows(q, z, prm, tab, g, None, dq, 1, fast, precision)
    return [t if t is not None else x.new_empty(0) for t in (dx, dq, dk)]


@_chebyshev_product_backward.register_fake
def _chebyshev_product_backward_fake(x, q, k, prm, tab, z, gy, fast, precision, need_x, need_q, need_k):
    return fake_gradients((x, need_x), (q, need_q), (k, need_k))


# inputs (x, q, k, prm, n_cap, acc, fast, precision); outputs (y, tab, z)
register_intermediate_autograd(_chebyshev_product, _chebyshev_product_backward, n_saved=4, cfg_at=(6, 7))


_PARAMS: dict = {}


def _params(omega_limits: tuple, scale: float, L: int, device) -> torch.Tensor:
    """float64 device tensor ``[s, pi s (L-1), (L-1)/2, omega_limits...]``, cached (a host-to-device copy per call
    would wait for the GPU, and could not be captured in a CUDA graph). Keyed by the limits' identity (hashing up
    to a thousand floats per call would cost more than the lookup saves); the entry keeps them alive."""
    values = [scale, math.pi * scale * (L - 1), (L - 1) / 2, *omega_limits]
    if torch.compiler.is_compiling():  # traced: a constant of the graph (dynamo cannot trace the id() key)
        return torch.tensor(values, dtype=torch.float64, device=device)
    key = (id(omega_limits), scale, L, device)
    hit = _PARAMS.get(key)
    if hit is None or hit[0] is not omega_limits:
        if len(_PARAMS) >= 64:
            _PARAMS.clear()
        hit = _PARAMS[key] = (omega_limits, torch.tensor(values, dtype=torch.float64, device=device))
    return hit[1]


def points_cap(length: int, max_points: int | None = None) -> int:
    """The number of points the kernels can take (the size of the Z blocks, and the number of Omega limits
    :func:`vandermonde_chebyshev_product` takes): ``max_points`` (default ``min(L, DEFAULT_MAX_POINTS)``) rounded up
    to a multiple of ``CHUNK``."""
    if max_points is None:
        max_points = min(length, DEFAULT_MAX_POINTS)
    elif isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
        raise ValueError(f"max_points must be a positive int (the most Chebyshev points per batch element) or None, "
                         f"got {max_points!r}")
    return _cdiv(max_points, CHUNK) * CHUNK


def check_omega_limits(omega_limits) -> tuple:
    """``omega_limits`` as a tuple of floats whose length is a positive multiple of ``CHUNK``; a ValueError
    otherwise (the values are not checked: their order is the caller's contract)."""
    if (not isinstance(omega_limits, tuple) or not omega_limits or len(omega_limits) % CHUNK
            or not all(isinstance(v, float) for v in omega_limits)):
        got = f"a {type(omega_limits).__name__} of length {len(omega_limits)}" if hasattr(omega_limits, "__len__") \
            else repr(omega_limits)
        raise ValueError(f"omega_limits must be a tuple of floats whose length (the points cap) is a positive "
                         f"multiple of {CHUNK} (see points_cap), got {got}")
    return omega_limits


def device_points(omega: float, omega_limits: tuple) -> int | None:
    """The point count the prep kernel picks for a batch element with ``Omega`` (here on the host, for tests and
    reports): the fewest with bound <= eps (``1 + #{limits < Omega}``), rounded up to a multiple of ``CHUNK``, at
    most ``n_cap = len(omega_limits)``; None where more than ``n_cap`` would be needed (the kernels then give NaN)."""
    n_cap = len(omega_limits)
    need = 1 + sum(1 for v in omega_limits if v < omega)
    return None if need > n_cap else min(_cdiv(need, CHUNK) * CHUNK, n_cap)


def vandermonde_chebyshev_product(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float,
                                  omega_limits: tuple, *, precision: str = "ieee") -> torch.Tensor:
    """The Chebyshev approximation of ``y_i = sum_j sum_d [cos(2 pi s q_id j) - cos(2 pi s k_jd i)] x_j``, fused on
    the GPU with no host synchronization (the point count is chosen on the device; see the module docstring).

    Parameters
    ----------
    x : (*batch, L, P) float64/float32/bfloat16/float16.
    q, k : (*batch, L, d) (batch dims broadcast with x's).
    scale : s > 0, the angle scale (a float).
    omega_limits : the largest Omega each number of points n = 1 .. n_cap covers within the bound E = eps on each
        interpolated cosine (increasing; ``structured.vandermonde.chebyshev_omega_limits(n_cap, eps)``), a tuple of
        floats whose length n_cap, the most points per batch element, is a multiple of ``CHUNK``
        (:func:`points_cap`); a batch element that needs more gets NaN outputs. Per column p,
        ``|y_hat_i - y_i| <= 2 d E ||x_p||_1`` (exact arithmetic, ``structured.vandermonde`` module docstring), the
        gradients within their E' bounds.
    precision : ``tl.dot`` precision for float32 products, "ieee" (default) or "tf32".

    Returns
    -------
    y : (*batch, L, P) in x's dtype, differentiable in x, q, k (gradients in their dtypes).

    Notes
    -----
    Three kernels forward (prep, reduce, rows), three backward (reduce, the rows of k, the rows of q).
    Arithmetic in float32 for float32 and half inputs (float64 for float64): the inputs are read in their own
    dtype, so bf16 x costs no conversion pass, and the angles ``s q t_r`` are formed in float32 (the torch path's
    ``theta t_r`` likewise). Half x uses the hardware's cosines and sines (turns reduced first: absolute error
    about 2^-21 each, 2^12 below the output's own rounding); float32 and float64 use accurate ones.
    Cost per batch element: 2 L n d cosines and 4 L n P multiply-adds forward (n the element's point count),
    about twice that backward with the sines; memory O(L (P + d) + n_cap P) with n_cap = the points cap: no L x L
    or L x n tensor is stored.
    """
    if precision not in DOT_PRECISIONS:
        raise ValueError(f"precision must be one of {DOT_PRECISIONS}, got {precision!r}")
    check_device("vandermonde_chebyshev_product", x)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale < math.inf):
        raise ValueError(f"vandermonde_chebyshev_product: scale must be a finite float > 0, got {scale!r}")
    x, q, k = check_args("vandermonde_chebyshev_product", x, q, k)
    omega_limits = check_omega_limits(omega_limits)
    L = x.shape[-2]
    n_cap = len(omega_limits)
    acc = torch.float64 if torch.float64 in (x.dtype, q.dtype, k.dtype) else torch.float32
    if acc == torch.float64:
        precision = "ieee"
    # half x: the hardware's cosines (|error| <= ~2^-21 on [-pi, pi], the turns are reduced first), 2^12 below the
    # output's own rounding; the interpreter has no such function and evaluates accurate ones
    fast = x.dtype in (torch.bfloat16, torch.float16) and not _interpreting()
    return _chebyshev_product(x, q, k, _params(omega_limits, float(scale), L, x.device), n_cap, acc, fast,
                              precision)[0]
