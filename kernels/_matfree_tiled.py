"""Shared machinery of the matrix-free (flash-attention style) Triton products ``y = M x``.

The matrices handled here are sums of ``d`` *terms*, ``m_ij = sum_d f(q_id, k_jd, i, j)``, with one node
per (position, term) on each side (the sequence-aligned Cauchy and Vandermonde forms of the Hydra paper,
Hwang et al. 2024, arXiv 2407.09941, Table 1). A *term* is described by ``@triton.jit`` functions that
act on a ``(BLOCK_M, BLOCK_N)`` tile of one term ``d`` (and pair versions, see :class:`Term`):

* ``value(qd, kd, rows, cols, FAST) -> f`` (the entries), and
* ``terms(qd, kd, rows, cols, FAST) -> (f, df/dq, df/dk)`` (entries and their partial derivatives),

with ``qd`` of shape ``(BLOCK_M,)`` (row nodes), ``kd`` of shape ``(BLOCK_N,)`` (column nodes), ``rows``
and ``cols`` the global row/column indices as floats, and ``FAST`` a constexpr that allows the hardware's
approximate special functions. :class:`Term` bundles them; ``kernels/cauchy.py`` and
``kernels/vandermonde.py`` each define one. Nothing else in this module knows which matrix it computes.

Algorithm (the tiling of FlashAttention, Dao et al. 2022, arXiv 2205.14135, without the softmax):

* forward: one program per ``BLOCK_M`` rows of one batch element; it walks the ``BLOCK_N``-column tiles,
  builds the ``BLOCK_M x BLOCK_N`` tile of ``M`` in registers (sum over ``d`` in float32/float64) and
  multiplies it with the tile of ``x`` on the tensor cores (``tl.dot``). Memory: O(L (P + d)) per batch
  element; no L x L tensor ever reaches device memory.
* backward, given ``g = dL/dy``: two passes that each rebuild the tiles of ``M`` and of ``S = g x^T``
  (``S_ij = g_i . x_j``, on the tensor cores). Column programs accumulate ``dx_j = sum_i m_ij g_i`` and
  ``dk_jd = sum_i S_ij df/dk`` in registers; row programs accumulate ``dq_id = sum_j S_ij df/dq``. No
  atomics (one pass with atomically added dq was 10x slower on an H100), deterministic results.

Cost: O(L^2 d) special-function evaluations and O(L^2 P) multiply-adds per batch element and pass; the
special functions bound the speed (see ``benchmarks/kernels_matfree.py``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import interpreting


# Compute dtypes the kernels run in; half-precision inputs accumulate in float32.
_COMPUTE = {torch.float64: torch.float64, torch.float32: torch.float32,
            torch.bfloat16: torch.float32, torch.float16: torch.float32}
DOT_PRECISIONS = ("ieee", "tf32")


@dataclass(frozen=True)
class Term:
    """One family of matrix entries: the jit functions described in the module docstring.

    ``value2`` / ``terms2`` evaluate two terms ``a, b`` at once (``value2 -> f_a + f_b``,
    ``terms2 -> (f_a + f_b, df_a/dq, df_a/dk, df_b/dq, df_b/dk)``), which lets a term share work between
    them (Cauchy: one reciprocal for two). ``pair_ok(qn, kn)``, if given, returns a 0-dim device tensor,
    true when the pair form is valid for these nodes (checked on the device, no synchronization); the
    kernels then take the pair branch, else the single-term one.
    """
    name: str
    value: object    # triton.JITFunction
    terms: object    # triton.JITFunction
    value2: object   # triton.JITFunction
    terms2: object   # triton.JITFunction
    pair_ok: object = None   # callable (qn, kn) -> 0-dim bool tensor, or None: always valid


# Read once (kernels.interpreting), as Triton decides at decoration time whether @triton.jit gives an interpreted
# function (and reading the environment per call cost ~1 us each, a dozen times per product).
_INTERPRET = interpreting()


def _interpreting() -> bool:
    return _INTERPRET


# plain-Python forms of triton.cdiv / triton.next_power_of_2 (those are Triton functions: ~6 us per call
# from Python, a visible part of a product's host time at L ~ 512)
def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


# The fused products' kernels read (*batch, L, n) tensors through their addresses and the dims they are given, so a
# contiguous tensor of any batch shape serves as (bh, L, n) as it is: no reshape (each view op is a dispatcher call,
# microseconds of host time at short L).
def _dense(t):
    """t itself if contiguous, else a contiguous copy."""
    return t if t.is_contiguous() else t.contiguous()


def _flat_dims(t):
    """(bh, L, n) of a (*batch, L, n) tensor: the batch dims flattened."""
    L, n = t.shape[-2], t.shape[-1]
    return t.numel() // (L * n), L, n


# ----------------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------------

@triton.jit
def _dot(a, b, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    # The CPU interpreter multiplies bf16/fp16 operands incorrectly (triton 3.9), so there the operands
    # (already rounded to the input dtype) are widened first; the GPU path keeps them narrow.
    if DOT_F32 and (a.dtype == tl.bfloat16 or a.dtype == tl.float16):
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PRECISION)
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _node_extremes(XN, YN, b, L, D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_L: tl.constexpr, ACC: tl.constexpr):
    # per term d of batch element b of two contiguous (b, L, D) node arrays, read in (BLOCK_L, D) tiles: (min x,
    # max x, min y, max y), each (D_PAD,) in ACC (extremes are exact in any dtype); padded terms get +inf / -inf.
    # The prep kernels of the Cauchy exp-sum (scaling, spread) and the Chebyshev path (bandwidth) start here.
    offs_d = tl.arange(0, D_PAD)
    X_b = XN + b.to(tl.int64) * (L * D) + offs_d[None, :]
    Y_b = YN + b.to(tl.int64) * (L * D) + offs_d[None, :]
    x_lo = tl.full((BLOCK_L, D_PAD), float("inf"), ACC)
    y_lo = tl.full((BLOCK_L, D_PAD), float("inf"), ACC)
    x_hi = tl.full((BLOCK_L, D_PAD), -float("inf"), ACC)
    y_hi = tl.full((BLOCK_L, D_PAD), -float("inf"), ACC)
    for l0 in range(0, L, BLOCK_L):
        offs = l0 + tl.arange(0, BLOCK_L)
        mask = (offs < L)[:, None] & (offs_d < D)[None, :]
        xv = tl.load(X_b + offs[:, None] * D, mask=mask, other=0.0).to(ACC)
        yv = tl.load(Y_b + offs[:, None] * D, mask=mask, other=0.0).to(ACC)
        x_lo = tl.minimum(x_lo, tl.where(mask, xv, float("inf")))
        y_lo = tl.minimum(y_lo, tl.where(mask, yv, float("inf")))
        x_hi = tl.maximum(x_hi, tl.where(mask, xv, -float("inf")))
        y_hi = tl.maximum(y_hi, tl.where(mask, yv, -float("inf")))
    return tl.min(x_lo, axis=0), tl.max(x_hi, axis=0), tl.min(y_lo, axis=0), tl.max(y_hi, axis=0)


@triton.jit
def _put(acc, offs_d, d, v):
    # acc[:, d] += v: a register tensor cannot be indexed by a column, so select it
    return acc + tl.where(offs_d[None, :] == d, v[:, None], 0.0)


@triton.jit
def _nodes(QT_b, KT_b, d, L, offs_m, offs_n, mask_m, mask_n):
    # padded rows/columns get node 1.0, which keeps every term finite (their x / g rows are zero)
    qd = tl.load(QT_b + d * L + offs_m, mask=mask_m, other=1.0)
    kd = tl.load(KT_b + d * L + offs_n, mask=mask_n, other=1.0)
    return qd, kd


@triton.jit
def _m_tile(QT_b, KT_b, L, offs_m, offs_n, mask_m, mask_n, rows, cols, paired,
            VALUE: tl.constexpr, VALUE2: tl.constexpr, D: tl.constexpr,
            FAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    m = tl.zeros((BLOCK_M, BLOCK_N), dtype=rows.dtype)
    if paired:   # run-time, uniform over the launch: the nodes are inside the pair form's domain
        for h in tl.static_range(D // 2):
            qa, ka = _nodes(QT_b, KT_b, 2 * h, L, offs_m, offs_n, mask_m, mask_n)
            qb, kb = _nodes(QT_b, KT_b, 2 * h + 1, L, offs_m, offs_n, mask_m, mask_n)
            m += VALUE2(qa, ka, qb, kb, rows, cols, FAST)
        if D % 2 == 1:
            qd, kd = _nodes(QT_b, KT_b, D - 1, L, offs_m, offs_n, mask_m, mask_n)
            m += VALUE(qd, kd, rows, cols, FAST)
    else:
        for d in tl.static_range(D):
            qd, kd = _nodes(QT_b, KT_b, d, L, offs_m, offs_n, mask_m, mask_n)
            m += VALUE(qd, kd, rows, cols, FAST)
    return m


@triton.jit
def _matfree_fwd_kernel(
    X, QT, KT, Y, PAIR_OK,
    L, P, L_BUCKET,
    stride_xb, stride_xl, stride_yb, stride_yl,
    VALUE: tl.constexpr, VALUE2: tl.constexpr, D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
    FAST: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    n_row_blocks = tl.cdiv(L, BLOCK_M)
    bh = pid // n_row_blocks
    rb = pid % n_row_blocks
    offs_m = rb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = tl.arange(0, BLOCK_P)
    mask_m = offs_m < L
    mask_p = offs_p < P
    X_b = X + bh.to(tl.int64) * stride_xb
    QT_b = QT + bh.to(tl.int64) * (D * L)
    KT_b = KT + bh.to(tl.int64) * (D * L)
    paired = tl.load(PAIR_OK) != 0
    ACC = QT.dtype.element_ty
    rows = offs_m.to(ACC)
    acc = tl.zeros((BLOCK_M, BLOCK_P), dtype=ACC)
    for j0 in range(0, L, BLOCK_N):
        offs_n = j0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < L
        cols = offs_n.to(ACC)
        m = _m_tile(QT_b, KT_b, L, offs_m, offs_n, mask_m, mask_n, rows, cols, paired,
                    VALUE, VALUE2, D, FAST, BLOCK_M, BLOCK_N)
        xt = tl.load(X_b + offs_n[:, None] * stride_xl + offs_p[None, :],
                     mask=mask_n[:, None] & mask_p[None, :], other=0.0)
        acc += _dot(m.to(xt.dtype), xt, DOT_F32, PRECISION).to(ACC)
    Y_b = Y + bh.to(tl.int64) * stride_yb
    tl.store(Y_b + offs_m[:, None] * stride_yl + offs_p[None, :], acc.to(Y.dtype.element_ty),
             mask=mask_m[:, None] & mask_p[None, :])


@triton.jit
def _matfree_bwd_cols_kernel(
    X, G, QT, KT, DX, DKT, PAIR_OK,
    L, P, L_BUCKET,
    stride_xb, stride_xl, stride_gb, stride_gl, stride_dxb, stride_dxl,
    TERMS: tl.constexpr, TERMS2: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
    FAST: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    # dx_j = sum_i m_ij g_i and dk_jd = sum_i S_ij df/dk, one program per column block
    pid = tl.program_id(0)
    n_col_blocks = tl.cdiv(L, BLOCK_N)
    bh = pid // n_col_blocks
    cb = pid % n_col_blocks
    offs_n = cb * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_p = tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, D_PAD)
    mask_n = offs_n < L
    mask_p = offs_p < P
    X_b = X + bh.to(tl.int64) * stride_xb
    G_b = G + bh.to(tl.int64) * stride_gb
    QT_b = QT + bh.to(tl.int64) * (D * L)
    KT_b = KT + bh.to(tl.int64) * (D * L)
    paired = tl.load(PAIR_OK) != 0
    ACC = QT.dtype.element_ty
    cols = offs_n.to(ACC)
    xt = tl.load(X_b + offs_n[:, None] * stride_xl + offs_p[None, :],
                 mask=mask_n[:, None] & mask_p[None, :], other=0.0)
    dx = tl.zeros((BLOCK_N, BLOCK_P), dtype=ACC)
    dk = tl.zeros((BLOCK_N, D_PAD), dtype=ACC)
    for i0 in range(0, L, BLOCK_M):
        offs_m = i0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < L
        rows = offs_m.to(ACC)
        gt = tl.load(G_b + offs_m[:, None] * stride_gl + offs_p[None, :],
                     mask=mask_m[:, None] & mask_p[None, :], other=0.0)
        s = _dot(gt, tl.trans(xt), DOT_F32, PRECISION).to(ACC)  # S_ij = g_i . x_j
        m = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        if paired:
            for h in tl.static_range(D // 2):
                qa, ka = _nodes(QT_b, KT_b, 2 * h, L, offs_m, offs_n, mask_m, mask_n)
                qb, kb = _nodes(QT_b, KT_b, 2 * h + 1, L, offs_m, offs_n, mask_m, mask_n)
                f, _, dfdka, _, dfdkb = TERMS2(qa, ka, qb, kb, rows, cols, FAST)
                m += f
                dk = _put(dk, offs_d, 2 * h, tl.sum(s * dfdka, axis=0))
                dk = _put(dk, offs_d, 2 * h + 1, tl.sum(s * dfdkb, axis=0))
            if D % 2 == 1:
                qd, kd = _nodes(QT_b, KT_b, D - 1, L, offs_m, offs_n, mask_m, mask_n)
                f, _, dfdk = TERMS(qd, kd, rows, cols, FAST)
                m += f
                dk = _put(dk, offs_d, D - 1, tl.sum(s * dfdk, axis=0))
        else:
            for d in tl.static_range(D):
                qd, kd = _nodes(QT_b, KT_b, d, L, offs_m, offs_n, mask_m, mask_n)
                f, _, dfdk = TERMS(qd, kd, rows, cols, FAST)
                m += f
                dk = _put(dk, offs_d, d, tl.sum(s * dfdk, axis=0))
        dx += _dot(tl.trans(m.to(gt.dtype)), gt, DOT_F32, PRECISION).to(ACC)
    DX_b = DX + bh.to(tl.int64) * stride_dxb
    tl.store(DX_b + offs_n[:, None] * stride_dxl + offs_p[None, :], dx.to(DX.dtype.element_ty),
             mask=mask_n[:, None] & mask_p[None, :])
    DKT_b = DKT + bh.to(tl.int64) * (D * L)
    tl.store(DKT_b + offs_d[None, :] * L + offs_n[:, None], dk, mask=mask_n[:, None] & (offs_d[None, :] < D))


@triton.jit
def _matfree_bwd_rows_kernel(
    X, G, QT, KT, DQT, PAIR_OK,
    L, P, L_BUCKET,
    stride_xb, stride_xl, stride_gb, stride_gl,
    TERMS: tl.constexpr, TERMS2: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
    FAST: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    # dq_id = sum_j S_ij df/dq, one program per row block: a second pass over the tiles instead of
    # atomics from the column programs (measured on an H100: the atomics made the backward 10x slower)
    pid = tl.program_id(0)
    n_row_blocks = tl.cdiv(L, BLOCK_M)
    bh = pid // n_row_blocks
    rb = pid % n_row_blocks
    offs_m = rb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, D_PAD)
    mask_m = offs_m < L
    mask_p = offs_p < P
    X_b = X + bh.to(tl.int64) * stride_xb
    G_b = G + bh.to(tl.int64) * stride_gb
    QT_b = QT + bh.to(tl.int64) * (D * L)
    KT_b = KT + bh.to(tl.int64) * (D * L)
    paired = tl.load(PAIR_OK) != 0
    ACC = QT.dtype.element_ty
    rows = offs_m.to(ACC)
    gt = tl.load(G_b + offs_m[:, None] * stride_gl + offs_p[None, :],
                 mask=mask_m[:, None] & mask_p[None, :], other=0.0)
    dq = tl.zeros((BLOCK_M, D_PAD), dtype=ACC)
    for j0 in range(0, L, BLOCK_N):
        offs_n = j0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < L
        cols = offs_n.to(ACC)
        xt = tl.load(X_b + offs_n[:, None] * stride_xl + offs_p[None, :],
                     mask=mask_n[:, None] & mask_p[None, :], other=0.0)
        s = _dot(gt, tl.trans(xt), DOT_F32, PRECISION).to(ACC)  # S_ij = g_i . x_j
        if paired:
            for h in tl.static_range(D // 2):
                qa, ka = _nodes(QT_b, KT_b, 2 * h, L, offs_m, offs_n, mask_m, mask_n)
                qb, kb = _nodes(QT_b, KT_b, 2 * h + 1, L, offs_m, offs_n, mask_m, mask_n)
                _, dfdqa, _, dfdqb, _ = TERMS2(qa, ka, qb, kb, rows, cols, FAST)
                dq = _put(dq, offs_d, 2 * h, tl.sum(s * dfdqa, axis=1))
                dq = _put(dq, offs_d, 2 * h + 1, tl.sum(s * dfdqb, axis=1))
            if D % 2 == 1:
                qd, kd = _nodes(QT_b, KT_b, D - 1, L, offs_m, offs_n, mask_m, mask_n)
                _, dfdq, _ = TERMS(qd, kd, rows, cols, FAST)
                dq = _put(dq, offs_d, D - 1, tl.sum(s * dfdq, axis=1))
        else:
            for d in tl.static_range(D):
                qd, kd = _nodes(QT_b, KT_b, d, L, offs_m, offs_n, mask_m, mask_n)
                _, dfdq, _ = TERMS(qd, kd, rows, cols, FAST)
                dq = _put(dq, offs_d, d, tl.sum(s * dfdq, axis=1))
    DQT_b = DQT + bh.to(tl.int64) * (D * L)
    tl.store(DQT_b + offs_d[None, :] * L + offs_m[:, None], dq, mask=mask_m[:, None] & (offs_d[None, :] < D))


# Tile shapes. Small problems (and the CPU interpreter) use one fixed shape; from L >= AUTOTUNE_MIN_LENGTH
# the GPU autotunes once per shape class (P, d, power-of-two bucket of L, dot precision, dtypes).
_CONFIGS = {
    "fwd": [(64, 64, 4, 2), (128, 64, 8, 2), (64, 128, 8, 2), (128, 32, 4, 2), (64, 32, 4, 2)],
    "rows": [(64, 64, 4, 1), (128, 64, 8, 1), (64, 32, 4, 1), (128, 32, 8, 1)],
    "cols": [(64, 64, 4, 1), (32, 64, 4, 1), (64, 128, 8, 1), (32, 128, 8, 1), (64, 32, 4, 1)],
}
_KERNELS = {"fwd": _matfree_fwd_kernel, "rows": _matfree_bwd_rows_kernel, "cols": _matfree_bwd_cols_kernel}
_GRID_BLOCK = {"fwd": "BLOCK_M", "rows": "BLOCK_M", "cols": "BLOCK_N"}   # the block a program owns
_L_BUCKET_ARG = {"fwd": 7, "cols": 9, "rows": 8}   # index of L_BUCKET in each kernel's arguments
_FIXED = (64, 64, 4, 1)
_INTERPRET_BLOCK = 16
AUTOTUNE_MIN_LENGTH = 1024
AUTOTUNE_MAX_BUCKET = 4096   # longer sequences reuse the 4096 choice (tuning at 16384 costs minutes)


@functools.lru_cache(maxsize=None)
def _tuned(term_name: str, role: str):
    # one autotuner per (term, role), each with its own cache
    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
               for bm, bn, w, st in _CONFIGS[role]]
    return triton.autotune(configs, key=["P", "D", "L_BUCKET", "PRECISION"])(_KERNELS[role])


def _launch(role, term, args, L, bh, **meta):
    # args[L_BUCKET position] is replaced by the capped bucket the autotuner keys on
    args = tuple(min(a, AUTOTUNE_MAX_BUCKET) if i == _L_BUCKET_ARG[role] else a for i, a in enumerate(args))
    kernel = _KERNELS[role]
    block = _GRID_BLOCK[role]
    if not _interpreting() and L >= AUTOTUNE_MIN_LENGTH:
        _tuned(term.name, role)[lambda m: (bh * _cdiv(L, m[block]),)](*args, **meta)
        return
    # one fixed configuration
    if _interpreting():
        bm = bn = _INTERPRET_BLOCK
        opts = {}
    else:
        bm, bn, w, st = _FIXED
        opts = {"num_warps": w, "num_stages": st}
    kernel[(bh * _cdiv(L, bm if block == "BLOCK_M" else bn),)](*args, BLOCK_M=bm, BLOCK_N=bn, **opts, **meta)


def _common(D, P, precision):
    return {"D": D, "BLOCK_P": max(16, _next_pow2(P)), "DOT_F32": _interpreting(),
            "PRECISION": precision, "FAST": not _interpreting()}


def _pair_flag(term, qt, kt):
    if term.pair_ok is None:
        return torch.ones((), dtype=torch.int32, device=qt.device)
    return term.pair_ok(qt, kt).to(torch.int32)


def _launch_fwd(x3, qt, kt, pair_ok, term, precision):
    bh, L, P = x3.shape
    y = torch.empty_like(x3)
    args = (x3, qt, kt, y, pair_ok, L, P, _next_pow2(L), x3.stride(0), x3.stride(1),
            y.stride(0), y.stride(1))
    _launch("fwd", term, args, L, bh, VALUE=term.value, VALUE2=term.value2, **_common(qt.shape[1], P, precision))
    return y


def _launch_bwd(x3, g3, qt, kt, pair_ok, term, precision):
    bh, L, P = x3.shape
    D = qt.shape[1]
    dx = torch.empty_like(x3)
    dqt = torch.empty_like(qt)
    dkt = torch.empty_like(kt)
    meta = dict(_common(D, P, precision), TERMS=term.terms, TERMS2=term.terms2, D_PAD=_next_pow2(D))
    lb = _next_pow2(L)
    _launch("cols", term, (x3, g3, qt, kt, dx, dkt, pair_ok, L, P, lb, x3.stride(0), x3.stride(1),
                           g3.stride(0), g3.stride(1), dx.stride(0), dx.stride(1)), L, bh, **meta)
    _launch("rows", term, (x3, g3, qt, kt, dqt, pair_ok, L, P, lb, x3.stride(0), x3.stride(1),
                           g3.stride(0), g3.stride(1)), L, bh, **meta)
    return dx, dqt, dkt


def fake_gradients(*pairs) -> list:
    """The fake (meta) outputs of a backward operator from ``(input, needed)`` pairs: a tensor like the input where
    its gradient is needed, else an empty one (an operator returns tensors only)."""
    ref = pairs[0][0]
    return [torch.empty(t.shape, dtype=t.dtype, device=t.device) if need else ref.new_empty(0) for t, need in pairs]


def register_intermediate_autograd(op, backward_op, n_saved: int, cfg_at: tuple) -> None:
    """Autograd for a product operator that returns ``(y, *intermediates)`` and differentiates its first three
    inputs: saves ``inputs[:n_saved]`` and the intermediates, keeps ``inputs[i]`` for ``i`` in ``cfg_at``, and calls
    ``backward_op(*saved, gy, *cfg, need_0, need_1, need_2)``; the intermediates are not differentiated."""
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n_saved], *output[1:])
        ctx.cfg = tuple(inputs[i] for i in cfg_at)
        ctx.n_inputs = len(inputs)

    def backward(ctx, grads):
        need = ctx.needs_input_grad[:3]
        got = backward_op(*ctx.saved_tensors, grads[0], *ctx.cfg, *need)
        return (*(g if n else None for g, n in zip(got, need)),) + (None,) * (ctx.n_inputs - 3)

    op.register_autograd(backward, setup_context=setup_context)


#: The terms the products know, by name (a custom operator takes strings, not objects): each term module
#: registers its own with :func:`register_term` at import.
TERMS: dict = {}


def register_term(term: Term) -> Term:
    TERMS[term.name] = term
    return term


def _prepared(x, qn, kn, term: Term):
    """(x3, qt, kt, pair_ok): x as (bh, L, P) with unit last stride, in float64 when the nodes force it (else its
    own dtype: bf16 stays bf16 on the tensor cores), the nodes transposed to (bh, d, L) in the compute dtype (each
    term's column a contiguous vector), and the pair-form flag."""
    L, P, D = x.shape[-2], x.shape[-1], qn.shape[-1]
    acc = torch.float64 if torch.float64 in (x.dtype, qn.dtype, kn.dtype) else torch.float32
    xc = x if acc != torch.float64 else x.to(torch.float64)
    x3 = xc.reshape(-1, L, P)
    if x3.stride(-1) != 1:
        x3 = x3.contiguous()
    qt = qn.reshape(-1, L, D).to(acc).transpose(1, 2).contiguous()
    kt = kn.reshape(-1, L, D).to(acc).transpose(1, 2).contiguous()
    return x3, qt, kt, _pair_flag(term, qt, kt)


# The product and its backward are torch custom operators: torch.compile traces through them (opaque calls in
# the graph) instead of breaking the graph at the launch code. Inputs share their batch dims (*b).
@torch.library.custom_op("mixerzoo::matfree_product", mutates_args=())
def _matfree_product(x: torch.Tensor, qn: torch.Tensor, kn: torch.Tensor, term: str, precision: str) -> torch.Tensor:
    """``y = M(qn, kn) x`` for the registered term ``term``; (*b, L, P) in x's dtype."""
    x3, qt, kt, pair_ok = _prepared(x, qn, kn, TERMS[term])
    y3 = _launch_fwd(x3, qt, kt, pair_ok, TERMS[term], precision)
    return y3.reshape(x.shape).to(x.dtype)


@_matfree_product.register_fake
def _matfree_product_fake(x, qn, kn, term, precision):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("mixerzoo::matfree_product_backward", mutates_args=())
def _matfree_product_backward(x: torch.Tensor, qn: torch.Tensor, kn: torch.Tensor, gy: torch.Tensor, term: str,
                              precision: str) -> list[torch.Tensor]:
    """``[dx, dqn, dkn]`` in the inputs' shapes and dtypes (two passes that rebuild the tiles of M)."""
    x3, qt, kt, pair_ok = _prepared(x, qn, kn, TERMS[term])
    L, P, D = x.shape[-2], x.shape[-1], qn.shape[-1]
    g3 = gy.to(x3.dtype).reshape(-1, L, P)
    if g3.stride(-1) != 1:
        g3 = g3.contiguous()
    dx3, dqt, dkt = _launch_bwd(x3, g3, qt, kt, pair_ok, TERMS[term], precision)
    batch = x.shape[:-2]
    return [dx3.reshape(x.shape).to(x.dtype), dqt.transpose(1, 2).reshape(*batch, L, D).to(qn.dtype),
            dkt.transpose(1, 2).reshape(*batch, L, D).to(kn.dtype)]


@_matfree_product_backward.register_fake
def _matfree_product_backward_fake(x, qn, kn, gy, term, precision):
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in (x, qn, kn)]


def _matfree_setup_context(ctx, inputs, output):
    x, qn, kn, term, precision = inputs
    ctx.save_for_backward(x, qn, kn)
    ctx.cfg = (term, precision)


def _matfree_backward(ctx, gy):
    x, qn, kn = ctx.saved_tensors
    dx, dq, dk = _matfree_product_backward(x, qn, kn, gy, *ctx.cfg)
    return dx, dq, dk, None, None


_matfree_product.register_autograd(_matfree_backward, setup_context=_matfree_setup_context)


def check_device(fn: str, x):
    """The kernels run on CUDA tensors, or anywhere under the interpreter; a ValueError naming ``fn`` otherwise."""
    if not (x.is_cuda or _INTERPRET):
        raise ValueError(f"{fn}: the Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1 set before triton is "
                         f"imported); got a tensor on {x.device}")


def check_args(fn: str, x, q, k):
    """Validate ``x (*b, L, P)``, ``q, k (*b', L, d)`` and broadcast their batch dims.

    Returns ``(x, q, k)`` expanded to one batch shape (views). Raises ValueError naming the argument.
    """
    for name, t in (("x", x), ("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _COMPUTE:
            raise ValueError(f"{fn}: {name} must be float64, float32, bfloat16 or float16, got {t.dtype}")
        if t.dim() < 2 or 0 in t.shape[-2:]:
            raise ValueError(f"{fn}: {name} must have shape (*batch, L, n) with nonzero L, n; got {tuple(t.shape)}")
    L = x.shape[-2]
    if q.shape[-2] != L or k.shape[-2] != L:
        raise ValueError(f"{fn}: q and k must have the length of x (L={L}) in dim -2; "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{fn}: q and k must have the same number of terms d (last dim); "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if not (x.device == q.device == k.device):
        raise ValueError(f"{fn}: x, q, k must be on one device, got {x.device}, {q.device}, {k.device}")
    if x.shape[:-2] == q.shape[:-2] == k.shape[:-2]:
        return x, q, k                   # nothing to broadcast (broadcast_shapes costs ~50 us of host time)
    try:
        batch = torch.broadcast_shapes(x.shape[:-2], q.shape[:-2], k.shape[:-2])
    except RuntimeError:
        raise ValueError(f"{fn}: batch dims do not broadcast: x {tuple(x.shape)}, q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}") from None
    return (x.expand(*batch, *x.shape[-2:]), q.expand(*batch, *q.shape[-2:]), k.expand(*batch, *k.shape[-2:]))


def upcast_nodes(q, k):
    """q, k in their compute dtype (float32 for half precisions), so that a shift or scale applied
    before the kernels is not rounded to 8 mantissa bits (gradients flow back through the cast)."""
    return q.to(_COMPUTE[q.dtype]), k.to(_COMPUTE[k.dtype])


def matfree_matmul(x, qn, kn, term: Term, precision: str = "ieee"):
    """``y_i = sum_j sum_d term(qn_id, kn_jd, i, j) x_j`` by the tiled kernels (autograd-aware).

    ``x (*b, L, P)``, ``qn, kn (*b, L, d)`` already broadcast to one batch shape. ``precision`` is the
    ``tl.dot`` precision for float32 inputs: ``"ieee"`` (exact float32) or ``"tf32"`` (faster, ~1e-3).
    """
    if precision not in DOT_PRECISIONS:
        raise ValueError(f"precision must be one of {DOT_PRECISIONS}, got {precision!r}")
    check_device(term.name, x)
    if TERMS.get(term.name) is not term:
        raise ValueError(f"term {term.name!r} is not registered (kernels._matfree_tiled.register_term)")
    return _matfree_product(x, qn, kn, term.name, precision)
