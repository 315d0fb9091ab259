"""Cauchy products (the Hydra paper's sequence-aligned Cauchy mixer) in Triton.

``y_i = sum_j m_ij x_j`` with ``m_ij = sum_d 1 / (q_id + k_jd + c)`` (Hwang et al. 2024,
arXiv 2407.09941, Table 1; ``structured.cauchy.Cauchy`` is the same matrix). Two products:

* :func:`cauchy_matmul` -- exact, tile by tile as in FlashAttention (see :mod:`kernels._matfree_tiled`):
  never an L x L tensor in device memory, O(L^2 d) reciprocals;
* :func:`cauchy_expsum_product` -- the exponential-sum expansion of ``structured.cauchy`` (approximate,
  with its stated entrywise bound) as fused feature-map GEMMs: O(L d M P) tensor-core work, no L x L
  anything, the feature maps never stored (recomputed in registers in every pass).
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from ._matfree_tiled import (DOT_PRECISIONS, Term, _cdiv, _dense, _flat_dims, _interpreting, _next_pow2, _node_extremes,
                             _put, check_args, check_device, fake_gradients, matfree_matmul,
                             register_intermediate_autograd, register_term, upcast_nodes)


@triton.jit
def _reciprocal(z, FAST: tl.constexpr):
    if z.dtype == tl.float64:
        return 1.0 / z
    elif FAST:
        # the hardware reciprocal (MUFU.RCP, <= 1 ulp, denormals flushed): the kernels are bound by
        # these evaluations, and IEEE division costs several instructions more. The entries are sums of
        # positive terms, so a relative error per term stays relative in the product (no cancellation).
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [z], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return 1.0 / z


@triton.jit
def _cauchy_value(qd, kd, rows, cols, FAST: tl.constexpr):
    return _reciprocal(qd[:, None] + kd[None, :], FAST)


@triton.jit
def _cauchy_terms(qd, kd, rows, cols, FAST: tl.constexpr):
    r = _reciprocal(qd[:, None] + kd[None, :], FAST)
    slope = -(r * r)  # d/dq 1/(q + k) = d/dk 1/(q + k) = -1/(q + k)^2
    return r, slope, slope


@triton.jit
def _cauchy_value2(qa, ka, qb, kb, rows, cols, FAST: tl.constexpr):
    # 1/a + 1/b = (a + b) / (a b): one reciprocal for two terms (the kernels are bound by reciprocals)
    a = qa[:, None] + ka[None, :]
    b = qb[:, None] + kb[None, :]
    return (a + b) * _reciprocal(a * b, FAST)


@triton.jit
def _cauchy_terms2(qa, ka, qb, kb, rows, cols, FAST: tl.constexpr):
    a = qa[:, None] + ka[None, :]
    b = qb[:, None] + kb[None, :]
    r = _reciprocal(a * b, FAST)
    ra = b * r   # 1/a
    rb = a * r   # 1/b
    slope_a = -(ra * ra)
    slope_b = -(rb * rb)
    return ra + rb, slope_a, slope_a, slope_b, slope_b


def _pair_ok(qt, kt):
    # a b must stay a normal number: every denominator q + k (c folded into q) within
    # [2^-(e/2 - 1), 2^(e/2 - 1)], e = the exponent range of the dtype (float32: about [2e-19, 5e18])
    half = int(math.log2(torch.finfo(qt.dtype).max)) // 2 - 1
    lo, hi = 2.0 ** -half, 2.0 ** half
    qmin, qmax = torch.aminmax(qt)
    kmin, kmax = torch.aminmax(kt)
    return ((qmin + kmin) >= lo) & ((qmax + kmax) <= hi)


CAUCHY = register_term(Term("cauchy_matmul", _cauchy_value, _cauchy_terms, _cauchy_value2, _cauchy_terms2, _pair_ok))


def cauchy_matmul(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, c=0.0, *, precision: str = "ieee"):
    """Multiply by the sequence-aligned Cauchy matrix without forming it.

    ``y_i = sum_j sum_d x_j / (q_id + k_jd + c)``.

    Parameters
    ----------
    x : (*batch, L, P) tensor, float64/float32/bfloat16/float16.
    q, k : (*batch, L, d) tensors (batch dims broadcast with x's). The nodes are not checked here
        (that would need a device sync): ``structured.cauchy.Cauchy`` validates q, k > 0, c >= 0.
        Any q, k, c without a zero denominator give the formula's value.
    c : float or tensor broadcastable to q (differentiable), the shift of every denominator.
    precision : "ieee" (default, exact float32 products) or "tf32": ``tl.dot`` precision for float32 x.

    Returns
    -------
    y : (*batch, L, P) in x's dtype. Differentiable in x, q, k (and c if it is a tensor).

    Notes
    -----
    Arithmetic: float32 for float32/bfloat16/float16 inputs (a bf16/fp16 ``x`` multiplies the tile of
    M rounded to its dtype on the tensor cores, accumulating in float32, as FlashAttention does);
    float64 inputs run the same kernels in float64. Terms are taken in pairs with one reciprocal each,
    ``1/a + 1/b = (a + b) / (a b)`` (the kernels are bound by reciprocals), using the hardware reciprocal
    (``rcp.approx.ftz.f32``, <= 1 ulp) in float32 on the GPU; this needs ``a b`` to stay a normal number,
    so when some denominator ``q + k + c`` lies outside ``[2^-62, 2^62]`` (float64: ``[2^-510, 2^510]``),
    detected on the device without a synchronization, the kernels evaluate the terms one by one instead.
    Cost per batch element: L^2 d / 2 reciprocals and 2 L^2 P multiply-adds per pass (forward; the
    backward makes two passes that recompute the tiles), memory O(L (P + d)). Backward:
    ``dx = M^T g``, ``dq_id = -sum_j (g_i . x_j) / (q_id + k_jd + c)^2``, ``dk_jd`` likewise over i.
    Measured on an H100 (``results/bench/kernels_matfree.json``): bf16, B=8, H=12, P=128, d=16,
    L=2048: 2.1 ms forward, 12.1 ms forward+backward.
    Reference: the tiling of FlashAttention (Dao et al. 2022, arXiv 2205.14135); recomputing the
    matrix in the backward pass as in KeOps' reductions (Charlier et al., JMLR 22(74), 2021).
    """
    x, q, k = check_args("cauchy_matmul", x, q, k)
    q, k = upcast_nodes(q, k)
    if isinstance(c, torch.Tensor) or c != 0:
        q = q + c
    return matfree_matmul(x, q, k, CAUCHY, precision)



# ----------------------------------------------------------------------------------------------------
# Exponential-sum expansion: fused feature-map products
# ----------------------------------------------------------------------------------------------------
# 1/(x_i + y_j) ~= (1/a) sum_m w_m e^{-tau_m x_i/a} e^{-tau_m y_j/a} (structured.cauchy, module docstring).
# With u = x/a, v = y/a and phi_m(t) = sqrt(w_m) exp(-tau_m t) the approximate matrix is
#     M_hat = sum_d (1/a_d) Phi_d(u_d) Phi_d(v_d)^T,        Phi_d(t) = [phi_m(t_i)]_{i,m}  (L x F_d),
# a product of two *positive* feature maps, so
#     y  = sum_d Phi_d(u_d) Z_d,      Z_d  = (1/a_d) Phi_d(v_d)^T x      (F_d x P, "reduce" kernel)
#     dx = sum_d Phi_d(v_d) GZ_d,     GZ_d = (1/a_d) Phi_d(u_d)^T g      (the same two kernels, sides swapped)
#     du_id = -sum_m tau_m phi_m(u_id) (g_i . Z_dm),   dv_jd = -sum_m tau_m phi_m(v_jd) (x_j . GZ_dm),
# and dx_id = du_id / a_d (a is a constant of the expansion, not differentiated).
# Every exponent -tau_m t is <= 0 (t > 0), so nothing overflows; the features are computed in registers
# from the O(L d) nodes in every pass (never stored), and only the (d, F, P) blocks Z, GZ reach memory.
#
# The nodes are placed on the device, per batch element b and term d, with no host synchronization (a
# product at L ~ 512 takes ~0.2 ms of GPU time; a sync per call made it host-bound, and in a model it would
# stall the queue at every layer). The "prep" kernel finds a_bd = min_i x_ibd + min_j y_jbd and
# R_bd = (max x + max y) / a_bd, then the trapezoid grid of the rule passed in (h, s_hi, s_lo1):
# s_lo = s_lo1 - ln R_bd, n = ceil((s_hi - s_lo)/h) + 1 rounded up to a multiple of the chunk FC by a
# finer step over the same interval (the bound only improves); it stores (1/a, n) and the nodes
# tau_m = e^{s_m}, sqrt(w_m) = sqrt(h' tau_m) (computed in float64, stored in the accumulation dtype) per term.
# The other kernels loop over the n / FC feature chunks of each term. FC (expsum_chunk) is one chunk for a
# typical spread (R <= 16), as large as the GEMMs like it (<= 64): wider spreads take more chunks, not a
# sync. The row kernel takes every term's first chunk in one loop over the terms (the loop Triton
# software-pipelines: the next term's Z block loads during this one's GEMMs) and the rare further chunks
# in a second loop nest.

#: Largest node spread ``R_bd`` per batch element and term the kernels take. Beyond it, or for a
#: non-positive (or NaN) denominator, the term's outputs are NaN: raising would need a device sync.
#: ``structured.cauchy.Cauchy(validate=True)`` checks both on the host instead.
R_MAX = 2.0 ** 40
#: Spread for which one chunk of features suffices (expsum_chunk); larger R_bd loop over more chunks.
R_ONE_CHUNK = 16.0


def expsum_feature_count(n_nodes: int, chunk: int = 16) -> int:
    """Features the kernels evaluate for ``n_nodes`` trapezoid nodes: the next multiple of ``chunk``
    (:func:`expsum_chunk`; spread over the same interval by a finer step, which keeps the bound)."""
    if isinstance(n_nodes, bool) or not isinstance(n_nodes, int) or n_nodes < 1:
        raise ValueError(f"n_nodes must be a positive int, got {n_nodes!r}")
    return -(-n_nodes // chunk) * chunk


def check_quadrature(quadrature) -> tuple[float, float, float]:
    """``quadrature = (h, s_hi, s_lo1)`` as floats: the trapezoid step, the right end of the interval and its
    left end for spread R = 1 (``structured.cauchy.quadrature_constants(eps)``); a ValueError otherwise."""
    ok = (isinstance(quadrature, (tuple, list)) and len(quadrature) == 3
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in quadrature))
    if not ok or not (quadrature[0] > 0 and quadrature[2] < quadrature[1]):
        raise ValueError(f"quadrature must be (h, s_hi, s_lo1) with finite floats, step h > 0 and s_lo1 < s_hi "
                         f"(the trapezoid rule of structured.cauchy.quadrature_constants(eps)), got {quadrature!r}")
    return float(quadrature[0]), float(quadrature[1]), float(quadrature[2])


def trapezoid_node_count(quadrature, R: float) -> int:
    """Trapezoid nodes for spread ``R``: ``ceil((s_hi - s_lo) / h) + 1`` with ``s_lo = s_lo1 - ln R``, the count
    the prep kernel computes on the device (before rounding up to whole chunks)."""
    h, s_hi, s_lo1 = quadrature
    return int(math.ceil((s_hi - (s_lo1 - math.log(R))) / h)) + 1


@functools.lru_cache(maxsize=64)
def expsum_chunk(quadrature: tuple) -> int:
    """Features per chunk for the rule ``quadrature`` (:func:`check_quadrature`): the node count at spread
    ``R_ONE_CHUNK`` rounded up to a power of two in [16, 64] (``tl.dot`` needs >= 16; 64 keeps the chunk GEMMs on
    the tensor cores' sweet spot). 64 at the float32 default eps = 1e-6, 32 at eps = 1e-3."""
    return min(64, max(16, _next_pow2(trapezoid_node_count(quadrature, R_ONE_CHUNK))))


def expsum_features(quadrature: tuple, R: float) -> int:
    """Features the kernels evaluate for a term of spread ``R`` under the rule ``quadrature`` (what the prep
    kernel computes on the device, here on the host: the node count rounded up to whole chunks)."""
    return expsum_feature_count(trapezoid_node_count(quadrature, R), expsum_chunk(quadrature))


@functools.lru_cache(maxsize=64)
def expsum_max_features(quadrature: tuple) -> int:
    """Features per term at the largest spread ``R_MAX`` under the rule ``quadrature``: the size of the Z blocks
    (whose unused tail is never read), and the count the cost model assumes without a device sync."""
    return expsum_features(quadrature, R_MAX)


@triton.jit
def _term_row(TAB, bhd, F_MAX: tl.constexpr):
    # the table row of batch element and term bhd = b * D + d, written by the prep kernel:
    # [1/a, n, (14 unused), tau (F_MAX), sqrt(w) (F_MAX)]: one buffer (each tensor argument costs a launch host
    # time), every part 16-aligned (F_MAX is a multiple of 16)
    return TAB + bhd.to(tl.int64) * (16 + 2 * F_MAX)


@triton.jit
def _term_params(TAB, bhd, F_MAX: tl.constexpr):
    # (1/a, n) of batch element and term bhd
    p = _term_row(TAB, bhd, F_MAX)
    return tl.load(p), tl.load(p + 1).to(tl.int32)


@triton.jit
def _expsum_prep_kernel(
    XN, YN, UT, VT, TAB, QUAD, L,
    D: tl.constexpr, D_PAD: tl.constexpr, FC: tl.constexpr, F_MAX: tl.constexpr, F_PAD: tl.constexpr,
    R_LIMIT: tl.constexpr, BLOCK_L: tl.constexpr,
):
    # one program per batch element, all terms at once ((BLOCK_L, D) tiles: rows of the nodes are
    # contiguous): scaling, node grid, and the scaled nodes u = x/a, v = y/a transposed to (b, d, L)
    # (each term's column contiguous for the other kernels). XN, YN (b, L, D) contiguous.
    bh = tl.program_id(0)
    ACC = UT.dtype.element_ty
    offs_d = tl.arange(0, D_PAD)
    mask_d = offs_d < D
    x_min, x_max, y_min, y_max = _node_extremes(XN, YN, bh, L, D, D_PAD, BLOCK_L, ACC)
    # per term; the sums are formed in ACC (float32 for halves), so a = min x + min y is not rounded up
    # past the smallest denominator by a bf16 addition
    lo = tl.where(mask_d, (x_min + y_min).to(tl.float64), 1.0)   # padded terms: 1
    hi = tl.where(mask_d, (x_max + y_max).to(tl.float64), 1.0)
    R = hi / lo
    valid = (lo > 0.0) & (R <= R_LIMIT)          # false for NaN too
    R = tl.where(valid, tl.maximum(R, 1.0), 1.0)
    h0 = tl.load(QUAD)
    s_hi = tl.load(QUAD + 1)
    s_lo = tl.load(QUAD + 2) - tl.log(R)
    n = tl.ceil((s_hi - s_lo) / h0) + 1.0
    n = tl.minimum(tl.ceil(n / FC) * FC, F_MAX)   # <= F_MAX already for R <= R_LIMIT; keeps loops in bounds
    h = (s_hi - s_lo) / (n - 1.0)
    inv_a = tl.where(valid, 1.0 / lo, float("nan"))
    row = _term_row(TAB, bh * D + offs_d, F_MAX)                       # (D_PAD,) row starts
    tl.store(row, inv_a.to(ACC), mask=mask_d)
    tl.store(row + 1, n.to(ACC), mask=mask_d)
    # the nodes of every term, (D, F_MAX): s_m = s_lo + m h', tau = e^s, sqrt(w) = sqrt(h' e^s) (unused past n)
    offs_f = tl.arange(0, F_PAD)
    node = s_lo[:, None] + offs_f.to(tl.float64)[None, :] * h[:, None]
    N_b = row[:, None] + 16 + offs_f[None, :]
    mask_df = mask_d[:, None] & (offs_f[None, :] < F_MAX)
    tl.store(N_b, tl.exp(node).to(ACC), mask=mask_df)
    tl.store(N_b + F_MAX, tl.exp(0.5 * (node + tl.log(h)[:, None])).to(ACC), mask=mask_df)
    inv = inv_a.to(ACC)[None, :]
    T_b = bh.to(tl.int64) * (D * L) + offs_d[None, :] * L
    for l0 in range(0, L, BLOCK_L):
        offs = l0 + tl.arange(0, BLOCK_L)
        mask = (offs < L)[:, None] & mask_d[None, :]
        at = bh.to(tl.int64) * (L * D) + offs[:, None] * D + offs_d[None, :]
        xv = tl.load(XN + at, mask=mask, other=0.0).to(ACC)
        yv = tl.load(YN + at, mask=mask, other=0.0).to(ACC)
        tl.store(UT + T_b + offs[:, None], xv * inv, mask=mask)
        tl.store(VT + T_b + offs[:, None], yv * inv, mask=mask)


@triton.jit
def _exp_features(t, tau, sw, TRANSPOSED: tl.constexpr):
    # phi_m(t) = sqrt(w_m) exp(-tau_m t): t > 0, tau > 0, so the exponent is <= 0 (no overflow; underflow
    # to 0 drops a term below 2^-126 of its weight, harmless since all terms are positive)
    if TRANSPOSED:
        return sw[:, None] * tl.exp(-(tau[:, None] * t[None, :]))      # (F, BLOCK_L)
    else:
        return sw[None, :] * tl.exp(-(t[:, None] * tau[None, :]))      # (BLOCK_L, F)


@triton.jit
def _mm(a, b, DT: tl.constexpr, EMULATE: tl.constexpr, PRECISION: tl.constexpr):
    # a @ b with both operands rounded to DT (the tensor-core dtype). The CPU interpreter (EMULATE)
    # multiplies bf16 operands incorrectly and truncates float32 -> bf16 casts (triton 3.9), so there the
    # round-to-nearest-even cast of the GPU is reproduced on the float32 bit pattern and the product is
    # taken in float32 (exact for bf16 operands), so the interpreter sees the GPU's rounding.
    if EMULATE and DT == tl.bfloat16:
        return tl.dot(_round_bf16(a.to(tl.float32)), _round_bf16(b.to(tl.float32)), input_precision="ieee")
    else:
        return tl.dot(a.to(DT), b.to(DT), input_precision=PRECISION)


@triton.jit
def _cast_out(v, DT: tl.constexpr, EMULATE: tl.constexpr):
    # the store's cast to the output dtype, round-to-nearest in the interpreter too (see _mm)
    if EMULATE and DT == tl.bfloat16:
        return _round_bf16(v.to(tl.float32)).to(DT)
    else:
        return v.to(DT)


@triton.jit
def _round_bf16(v):
    # float32 -> nearest bfloat16 (ties to even), kept in float32: add 0x7FFF + lsb, clear the low 16 bits
    bits = v.to(tl.uint32, bitcast=True)
    bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _expsum_reduce_kernel(
    NT, X, TAB, Z,
    L, P, L_BUCKET,
    D: tl.constexpr, FC: tl.constexpr, F_MAX: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr,
    DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    # Z[b, d, chunk] = (1/a_bd) Phi_chunk(n[b, d])^T X[b]: one program per (batch element, term, feature
    # chunk), a loop over L; chunks past the term's node count n_bd do nothing (their rows are never read).
    # X (b, L, P) contiguous.
    pid = tl.program_id(0)
    bhd = pid // (F_MAX // FC)
    f0 = (pid % (F_MAX // FC)) * FC
    bh = bhd // D
    inv_a, n = _term_params(TAB, bhd, F_MAX)
    ACC = NT.dtype.element_ty
    offs_f = f0 + tl.arange(0, FC)
    offs_p = tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    row = _term_row(TAB, bhd, F_MAX) + 16
    tau = tl.load(row + offs_f)
    sw = tl.load(row + F_MAX + offs_f)
    N_b = NT + bhd.to(tl.int64) * L
    X_b = X + bh.to(tl.int64) * (L * P)
    acc = tl.zeros((FC, BLOCK_P), dtype=ACC)
    for l0 in range(0, tl.where(f0 < n, L, 0), BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        mask_l = offs_l < L
        t = tl.load(N_b + offs_l, mask=mask_l, other=0.0)       # padded rows: x = 0 there
        xt = tl.load(X_b + offs_l[:, None] * P + offs_p[None, :],
                     mask=mask_l[:, None] & mask_p[None, :], other=0.0)
        phi_t = _exp_features(t, tau, sw, True)
        acc += _mm(phi_t, xt, xt.dtype, DOT_F32, PRECISION).to(ACC)
    Z_b = Z + bhd.to(tl.int64) * (F_MAX * P)
    # stored in the dot dtype: every use multiplies it on the tensor cores in that dtype anyway
    tl.store(Z_b + offs_f[:, None] * P + offs_p[None, :],
             _cast_out(acc * inv_a.to(ACC), Z.dtype.element_ty, DOT_F32), mask=(offs_f < n)[:, None] & mask_p[None, :])


@triton.jit
def _rows_chunk(t, TAU_d, SW_d, W_d, f0, xx, offs_c, offs_p, mask_p, P, acc, ACC: tl.constexpr,
                DT: tl.constexpr, WITH_OUT: tl.constexpr, WITH_GRAD: tl.constexpr, DOT_F32: tl.constexpr,
                PRECISION: tl.constexpr):
    # one feature chunk of one term: acc += Phi W (WITH_OUT); returns acc and the chunk's
    # -sum_m tau_m phi_m(t) (XX . W_m) per row (WITH_GRAD; zeros otherwise)
    tau = tl.load(TAU_d + f0 + offs_c)
    sw = tl.load(SW_d + f0 + offs_c)
    w = tl.load(W_d + (f0 + offs_c)[:, None] * P + offs_p[None, :], mask=mask_p[None, :], other=0.0)
    phi = _exp_features(t, tau, sw, False)
    if WITH_OUT:
        acc += _mm(phi, w, DT, DOT_F32, PRECISION).to(ACC)
    g = tl.zeros_like(t)
    if WITH_GRAD:
        s = _mm(xx, tl.trans(w), DT, DOT_F32, PRECISION).to(ACC)     # XX_i . W_dm
        g = -tl.sum(phi * s * tau[None, :], axis=1)
    return acc, g


@triton.jit
def _expsum_rows_kernel(
    NT, W, TAB, XX, OUT, DN,
    L, P, L_BUCKET,
    D: tl.constexpr, D_PAD: tl.constexpr, FC: tl.constexpr, F_MAX: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_P: tl.constexpr, WITH_OUT: tl.constexpr, WITH_GRAD: tl.constexpr, DOT_F32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # One program per (batch element, row block) of
    #   OUT[rows] = sum_d Phi_d(n_d[rows]) W_d                                          (WITH_OUT)
    #   DN[rows, d] = -(1/a_d) sum_m tau_m phi_m(n_d[rows]) (XX[rows] . W_dm)         (WITH_GRAD)
    # forward y: (n, W) = (u, Z); backward: (v, GZ, XX = x) gives dx and dy_nodes, (u, Z, XX = g) gives
    # dx_nodes. DN is written as (b, L, d), the layout of the nodes themselves; XX, OUT (b, L, P) contiguous.
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(L, BLOCK_L)
    bh = pid // n_blocks
    offs_l = (pid % n_blocks) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_l = offs_l < L
    offs_c = tl.arange(0, FC)
    offs_p = tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, D_PAD)
    mask_p = offs_p < P
    mask_lp = mask_l[:, None] & mask_p[None, :]
    N_b = NT + bh.to(tl.int64) * (D * L)
    W_b = W + bh.to(tl.int64) * (D * F_MAX * P)
    DT = W.dtype.element_ty
    ACC = NT.dtype.element_ty
    acc = tl.zeros((BLOCK_L, BLOCK_P), dtype=ACC)
    dn = tl.zeros((BLOCK_L, D_PAD), dtype=ACC)
    xx = tl.zeros((BLOCK_L, BLOCK_P), dtype=DT)
    if WITH_GRAD:
        xx = tl.load(XX + bh.to(tl.int64) * (L * P) + offs_l[:, None] * P + offs_p[None, :], mask=mask_lp, other=0.0)
    for d in range(D):              # every term's first chunk (all terms have one)
        inv_a, n = _term_params(TAB, bh * D + d, F_MAX)
        row = _term_row(TAB, bh * D + d, F_MAX) + 16
        t = tl.load(N_b + d * L + offs_l, mask=mask_l, other=0.0)
        acc, g = _rows_chunk(t, row, row + F_MAX, W_b + d * (F_MAX * P), 0, xx,
                             offs_c, offs_p, mask_p, P, acc, ACC, DT, WITH_OUT, WITH_GRAD, DOT_F32, PRECISION)
        if WITH_GRAD:
            dn = _put(dn, offs_d, d, g * inv_a.to(ACC))
    for d in range(D):              # further chunks: terms whose spread exceeds R_ONE_CHUNK (usually none)
        inv_a, n = _term_params(TAB, bh * D + d, F_MAX)
        row = _term_row(TAB, bh * D + d, F_MAX) + 16
        t = tl.load(N_b + d * L + offs_l, mask=mask_l, other=0.0)
        for f0 in range(FC, n, FC):
            acc, g = _rows_chunk(t, row, row + F_MAX, W_b + d * (F_MAX * P), f0,
                                 xx, offs_c, offs_p, mask_p, P, acc, ACC, DT, WITH_OUT, WITH_GRAD, DOT_F32,
                                 PRECISION)
            if WITH_GRAD:
                dn = _put(dn, offs_d, d, g * inv_a.to(ACC))
    if WITH_OUT:
        tl.store(OUT + bh.to(tl.int64) * (L * P) + offs_l[:, None] * P + offs_p[None, :],
                 _cast_out(acc, OUT.dtype.element_ty, DOT_F32), mask=mask_lp)
    if WITH_GRAD:
        tl.store(DN + bh.to(tl.int64) * (L * D) + offs_l[:, None] * D + offs_d[None, :],
                 _cast_out(dn, DN.dtype.element_ty, DOT_F32), mask=mask_l[:, None] & (offs_d[None, :] < D))


# (BLOCK_L, num_warps, num_stages) candidates; the CPU interpreter and short sequences use the first
_EXPSUM_CONFIGS = {
    "reduce": [(64, 4, 2), (128, 8, 2), (32, 4, 3), (64, 8, 3)],
    # first = the fixed choice below EXPSUM_AUTOTUNE_MIN_LENGTH: what the autotuner picked at every
    # L >= 1024 on the H100 (results/bench/kernels_matfree.json, "configs")
    "rows": [(64, 4, 2), (64, 8, 2), (128, 8, 2), (32, 4, 2)],
}
_EXPSUM_KERNELS = {"reduce": _expsum_reduce_kernel, "rows": _expsum_rows_kernel}
_EXPSUM_KEYS = {"reduce": ["P", "D", "FC", "F_MAX", "L_BUCKET", "PRECISION"],
                "rows": ["P", "D", "FC", "F_MAX", "L_BUCKET", "PRECISION", "WITH_OUT", "WITH_GRAD"]}
_EXPSUM_INTERPRET_BLOCK = 16
# Below this length the first config of each role runs: autotuning at L = 512 on the H100 picked the same rows
# config and gave the same graph-replayed fwd+bwd (0.359 vs 0.357 ms), so it would only add its cost.
EXPSUM_AUTOTUNE_MIN_LENGTH = 1024
EXPSUM_AUTOTUNE_MAX_BUCKET = 8192
_PREP_MAX_ELEMENTS = 2048   # (BLOCK_L, D_PAD) tile of the prep kernel


@functools.lru_cache(maxsize=None)
def _expsum_tuned(role: str):
    configs = [triton.Config({"BLOCK_L": bl}, num_warps=w, num_stages=st) for bl, w, st in _EXPSUM_CONFIGS[role]]
    return triton.autotune(configs, key=_EXPSUM_KEYS[role])(_EXPSUM_KERNELS[role])


def _expsum_launch(role, args, n_programs, L, **meta):
    """``args`` up to P (L_BUCKET is appended); n_programs: BLOCK_L -> grid."""
    meta["DOT_F32"] = _interpreting()
    bucket = min(_next_pow2(L), EXPSUM_AUTOTUNE_MAX_BUCKET)
    if not _interpreting() and L >= EXPSUM_AUTOTUNE_MIN_LENGTH:
        _expsum_tuned(role)[lambda m: (n_programs(m["BLOCK_L"]),)](*args, bucket, **meta)
        return
    # one fixed configuration
    if _interpreting():
        bl, opts = _EXPSUM_INTERPRET_BLOCK, {}
    else:
        bl, w, st = _EXPSUM_CONFIGS[role][0]
        opts = {"num_warps": w, "num_stages": st}
    _EXPSUM_KERNELS[role][(n_programs(bl),)](*args, bucket, BLOCK_L=bl, **opts, **meta)


def _block_p(P):
    return max(16, _next_pow2(P))


def _expsum_prep(xn3, yn3, acc, quad, fc, f_max):
    """xn3, yn3 (*batch, L, D) contiguous (bh = the batch dims' product). Per (batch element, term): the scaled
    transposed nodes ``uvt = [(xn/a)^T, (yn/a)^T]`` (2, bh, D, L) in ``acc``, and the table (bh, D, 16 + 2 f_max) in ``acc``, each row
    ``[1/a, n, (unused), tau (f_max), sqrt(w) (f_max)]`` (the values computed in float64); see the comment above."""
    bh, L, D = _flat_dims(xn3)
    uvt = torch.empty((2, bh, D, L), dtype=acc, device=xn3.device)
    ut, vt = uvt[0], uvt[1]
    tab = torch.zeros((bh, D, 16 + 2 * f_max), dtype=acc, device=xn3.device)   # (an output: no undefined entries)
    d_pad = _next_pow2(D)
    block = (_EXPSUM_INTERPRET_BLOCK if _interpreting()
             else min(_PREP_MAX_ELEMENTS // d_pad, max(16, _next_pow2(L))))
    _expsum_prep_kernel[(bh,)](xn3, yn3, ut, vt, tab, quad, L, D=D, D_PAD=d_pad, FC=fc, F_MAX=f_max,
           F_PAD=_next_pow2(f_max), R_LIMIT=R_MAX, BLOCK_L=block)
    return uvt, tab


def _expsum_reduce(nt, x3, tab, fc, f_max, precision, zeroed=False):
    """``Z_d = (1/a_d) Phi_d(n_d)^T x`` for every batch element and term: (bh, D, f_max, P) in x3's dtype,
    rows past each term's node count left unwritten (never read). x3 (*batch, L, P) contiguous."""
    bh, L, P = _flat_dims(x3)
    D = nt.shape[1]
    # zeroed: the forward returns Z as an output, whose unused rows must then be defined values
    z = (torch.zeros if zeroed else torch.empty)((bh, D, f_max, P), dtype=x3.dtype, device=x3.device)
    _expsum_launch("reduce", (nt, x3, tab, z, L, P), lambda bl: bh * D * (f_max // fc), L,
                   D=D, FC=fc, F_MAX=f_max, BLOCK_P=_block_p(P), PRECISION=precision)
    return z


def _expsum_rows(nt, w, tab, fc, precision, xx=None, out=None, dn=None):
    """The row kernel (see its comment): writes ``out`` (bh, L, P) if given and ``dn`` (bh, L, D) if given; xx and
    out contiguous."""
    bh, D, L = nt.shape
    f_max, P = w.shape[2], w.shape[3]
    xx_ = xx if xx is not None else w          # placeholders of unused pointers (never read or written)
    out_ = out if out is not None else w
    dn_ = dn if dn is not None else nt
    _expsum_launch("rows", (nt, w, tab, xx_, out_, dn_, L, P), lambda bl: bh * _cdiv(L, bl), L,
                   D=D, D_PAD=_next_pow2(D), FC=fc, F_MAX=f_max, BLOCK_P=_block_p(P),
                   WITH_OUT=out is not None, WITH_GRAD=dn is not None, PRECISION=precision)


# The product and its backward are torch custom operators (torch.compile traces through them). The forward
# returns its intermediates beside y (the scaled nodes, the node table and the Z blocks), which the backward reuses
# instead of recomputing them; buffers whose unused parts the kernels never write start zeroed, so that every output
# is a defined value. acc: the node and accumulation dtype; dot: the dtype x is multiplied in.
@torch.library.custom_op("mixerzoo::expsum_product", mutates_args=())
def _expsum_product(x: torch.Tensor, xn: torch.Tensor, yn: torch.Tensor, quad: torch.Tensor, acc: torch.dtype,
                    dot: torch.dtype, fc: int, f_max: int, precision: str) -> list[torch.Tensor]:
    """``[y, uvt, tab, z]``: ``y = sum_d (1/a_d) Phi_d(u_d) Phi_d(v_d)^T x`` in x's shape and dtype, the scaled
    transposed nodes ``uvt = [u^T, v^T]`` (2, bh, D, L), the node table and ``Z`` (see the comment above)."""
    xd = _dense(x.to(dot))
    uvt, tab = _expsum_prep(_dense(xn), _dense(yn), acc, quad, fc, f_max)
    z = _expsum_reduce(uvt[1], xd, tab, fc, f_max, precision, zeroed=True)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)          # the kernel stores in x's dtype
    _expsum_rows(uvt[0], z, tab, fc, precision, out=y)
    return [y, uvt, tab, z]


@_expsum_product.register_fake
def _expsum_product_fake(x, xn, yn, quad, acc, dot, fc, f_max, precision):
    bh, L, D = _flat_dims(xn)
    P = x.shape[-1]
    return [torch.empty(x.shape, dtype=x.dtype, device=x.device), x.new_empty((2, bh, D, L), dtype=acc),
            x.new_empty((bh, D, 16 + 2 * f_max), dtype=acc), x.new_empty((bh, D, f_max, P), dtype=dot)]


@torch.library.custom_op("mixerzoo::expsum_product_backward", mutates_args=())
def _expsum_product_backward(x: torch.Tensor, xn: torch.Tensor, yn: torch.Tensor, uvt: torch.Tensor,
                             tab: torch.Tensor, z: torch.Tensor, gy: torch.Tensor, fc: int, precision: str,
                             need_x: bool, need_xn: bool, need_yn: bool) -> list[torch.Tensor]:
    """``[dx, dxn, dyn]`` in the inputs' shapes and dtypes (an unneeded one is an empty tensor): the reduce
    kernel on g, then the rows kernel on (v, GZ, x) for dx and dyn and on (u, Z, g) for dxn."""
    ut, vt = uvt[0], uvt[1]
    f_max = z.shape[2]
    xd = _dense(x.to(z.dtype))
    g = _dense(gy.to(z.dtype))
    dx = dxn = dyn = None
    # every gradient is stored by the kernels in its own dtype and final shape (no conversion pass)
    if need_x or need_yn:                  # features of v: dx and the column-node gradient
        gz = _expsum_reduce(ut, g, tab, fc, f_max, precision)
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device) if need_x else None
        dyn = torch.empty(yn.shape, dtype=yn.dtype, device=x.device) if need_yn else None
        _expsum_rows(vt, gz, tab, fc, precision, xx=xd, out=dx, dn=dyn)
    if need_xn:                            # features of u: the row-node gradient
        dxn = torch.empty(xn.shape, dtype=xn.dtype, device=x.device)
        _expsum_rows(ut, z, tab, fc, precision, xx=g, dn=dxn)
    return [t if t is not None else x.new_empty(0) for t in (dx, dxn, dyn)]


@_expsum_product_backward.register_fake
def _expsum_product_backward_fake(x, xn, yn, uvt, tab, z, gy, fc, precision, need_x, need_xn, need_yn):
    return fake_gradients((x, need_x), (xn, need_xn), (yn, need_yn))


# inputs (x, xn, yn, quad, acc, dot, fc, f_max, precision); outputs (y, uvt, tab, z)
register_intermediate_autograd(_expsum_product, _expsum_product_backward, n_saved=3, cfg_at=(6, 8))


_QUADRATURE: dict = {}


def _quadrature(quadrature: tuple, device) -> torch.Tensor:
    """``quadrature`` as a float64 device tensor, cached (a host-to-device copy per call would cost more than the
    product at short L)."""
    key = (quadrature, device)           # (torch.device hashes by value; str() would cost a call)
    hit = _QUADRATURE.get(key)
    if hit is None:
        if len(_QUADRATURE) >= 64:
            _QUADRATURE.clear()
        hit = _QUADRATURE[key] = torch.tensor(quadrature, dtype=torch.float64, device=device)
    return hit


def cauchy_expsum_product(x: torch.Tensor, xn: torch.Tensor, yn: torch.Tensor, quadrature: tuple, *,
                          precision: str = "ieee") -> torch.Tensor:
    """The exponential-sum approximation of ``y_i = sum_j sum_d x_j / (xn_id + yn_jd)``, fused on the GPU.

    ``M_hat_ij = sum_d (1/a_d) sum_m w_dm exp(-tau_dm xn_id / a_d) exp(-tau_dm yn_jd / a_d)``, the
    expansion of ``structured.cauchy`` (its module docstring states the quadrature and the bound
    ``|M_hat_ij - m_ij| <= eps m_ij``, derivatives likewise), with the scaling ``a`` and the nodes
    ``tau, w`` chosen on the device for each batch element and term from its own spread
    ``R = (max xn + max yn) / (min xn + min yn)``: no host synchronization.
    ``structured.cauchy.cauchy_matmul_expsum`` calls this on CUDA tensors (it also takes the shift c).

    Parameters
    ----------
    x : (*batch, L, P) float64/float32/bfloat16/float16.
    xn, yn : (*batch, L, d) positive nodes (row nodes with the shift c folded in, column nodes); batch dims
        broadcast with x's.
    quadrature : ``(h, s_hi, s_lo1)``, the trapezoid rule of the expansion for its accuracy eps
        (``structured.cauchy.quadrature_constants(eps)``; :func:`check_quadrature`).
    precision : ``tl.dot`` precision for float32 operands, "ieee" (default) or "tf32".

    Returns
    -------
    y : (*batch, L, P) in x's dtype; differentiable in x, xn, yn. Where a term's denominators are not all
    positive, or its spread exceeds ``R_MAX`` = 2^40, its batch element's outputs are NaN (detected on the
    device; ``structured.cauchy.Cauchy(validate=True)`` raises instead).

    Notes
    -----
    Three kernels forward: "prep" (one program per batch element and term: extremes, grid, scaled nodes),
    ``Z_d = (1/a_d) Phi_d(v_d)^T x`` (one program per batch element, term and chunk of features) and
    ``y = sum_d Phi_d(u_d) Z_d`` (one program per row block), with ``Phi_d(t)_im = sqrt(w_dm) exp(-tau_dm t_i)``,
    ``u = xn/a``, ``v = yn/a``; the backward runs the second on g (``GZ``) and the third twice: on
    (v, GZ, x) for dx and d yn, on (u, Z, g) for d xn. Cost per batch element: 2 d F L P multiply-adds
    and d F L exponentials per kernel launch on the tensor cores (F ~ the node count rounded up to a
    multiple of the chunk :func:`expsum_chunk`, 64 at eps = 1e-6 and R <= 16); memory O(L (P + d) + d F_max P), F_max =
    :func:`expsum_max_features`: no L x L or L x dF tensor is ever stored.
    Arithmetic: float32 accumulation (float64 for float64 inputs), nodes in float64. bfloat16 ``x`` keeps
    the tensor cores in bfloat16: the feature values and Z are rounded to bfloat16 (relative 2^-8 each,
    all factors positive), which adds at most ``3 u_bf16 (|M| |x|)`` to the error bound, like the exact
    kernel's rounding of its M tile; float16 ``x`` runs in float32 (float16's exponent range would flush
    small features).
    References: Beylkin & Monzon, "Approximation by exponential sums revisited", ACHA 28(2), 2010 (the
    sum-of-exponentials separation); FlashAttention's fused tiling (Dao et al. 2022, arXiv 2205.14135).
    """
    if precision not in DOT_PRECISIONS:
        raise ValueError(f"precision must be one of {DOT_PRECISIONS}, got {precision!r}")
    check_device("cauchy_expsum_product", x)
    quadrature = check_quadrature(quadrature)
    x, xn, yn = check_args("cauchy_expsum_product", x, xn, yn)
    acc = torch.float64 if torch.float64 in (x.dtype, xn.dtype, yn.dtype) else torch.float32
    # the dot dtype: bf16 stays on the tensor cores; fp16 goes to fp32 (its exponent range is too narrow
    # for features spanning ~R e^-tau); float64 nodes force float64
    dot = torch.float64 if acc == torch.float64 else (torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32)
    return _expsum_product(x, xn, yn, _quadrature(quadrature, x.device), acc, dot, expsum_chunk(quadrature),
                           expsum_max_features(quadrature), precision)[0]
