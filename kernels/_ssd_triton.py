"""Triton kernels of the generic chunked scan behind :mod:`kernels.ssd`.

One kernel pair evaluates ``O = (lower + upper + diag(delta)) V`` for a quasiseparable operator whose two
triangles are given by *generic* generators (row vectors R, column vectors K, log-decays lam) with small
integer index offsets. Per batch element (0-based, i = output row, j = column)::

    lower:  O_i += sum_{j <= i - s}  exp(sum_{t = j+1-u .. i-v} lam_t)  (R[i - r] . K[j + k])  V[j + vo]
    upper:  O_i += sum_{j >= i + s}  exp(sum_{t = i+v .. j-1+u} lam'_t) (R'[i + r'] . K'[j - k']) V[j + vo]

with u + s = v (so the decay span of every kept pair is a non-empty-or-empty run of t, never negative) and
s in {0, 1}. Out-of-range rows read as zero. Hydra's forward product (shift or not), its adjoint, and every
gradient of both are instances of this one form (see :mod:`kernels.ssd`), so a single tested code path
serves the forward and backward passes of the causal and bidirectional products.

Algorithm (chunked SSD, Dao & Gu, arXiv 2405.21060 Section 6, rearranged as two sweeps): the sequence is cut
into chunks of Q rows. Inside a chunk, decays are differences of a chunk-local (reverse) cumulative sum of
lam, so only exponentials of non-positive numbers are formed. Between chunks, the lower triangle is carried
left-to-right as an (N x P) state in registers, the upper one right-to-left:

* ``_upper_states_kernel`` sweeps right-to-left and stores, per chunk, the upper state entering it;
* ``_sweep_kernel`` sweeps left-to-right, carries the lower state, reads the stored upper state, builds ONE
  combined Q x Q intra-chunk matrix (lower and upper triangles together) and multiplies V once.

Each program owns one batch element and one block of V's columns, so V, R and K are each read once per
sweep and no flipped, shifted or doubled copy of any input exists.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _load_rows(ptr, s0, s1, sl, sd, b0, b1, rows, cols, seqlen, ncols):
    """Tile ptr[b0, b1, rows, cols] with zeros outside 0 <= rows < seqlen, cols < ncols."""
    mask = ((rows >= 0) & (rows < seqlen))[:, None] & (cols < ncols)[None, :]
    p = ptr + b0 * s0 + b1 * s1 + rows[:, None] * sl + cols[None, :] * sd
    return tl.load(p, mask=mask, other=0.0)


@triton.jit
def _load_vec(ptr, s0, s1, sl, b0, b1, rows, seqlen, ACC: tl.constexpr):
    mask = (rows >= 0) & (rows < seqlen)
    return tl.load(ptr + b0 * s0 + b1 * s1 + rows * sl, mask=mask, other=0.0).to(ACC)


@triton.jit
def _dot(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr):
    """a @ b accumulated in ACC (float32; float64 for float64 operands). UPCAST: feed float32 copies of
    (already rounded) half operands, which gives the same products; used under TRITON_INTERPRET=1, whose
    tl.dot multiplies bfloat16 bit patterns as integers (triton 3.9 interpreter)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC, out_dtype=ACC)


@triton.jit
def _lower_decays(lam, U: tl.constexpr, V_: tl.constexpr):
    """Row and column log-decays of the lower triangle from the chunk's inclusive cumulative sum."""
    ell = tl.cumsum(lam, axis=0)
    return ell - V_ * lam, ell - U * lam, tl.sum(lam, axis=0)


@triton.jit
def _upper_decays(lam, U: tl.constexpr, V_: tl.constexpr):
    """Row and column log-decays of the upper triangle from the chunk's reverse inclusive cumulative sum."""
    total = tl.sum(lam, axis=0)
    rev = total - tl.cumsum(lam, axis=0) + lam
    return rev - V_ * lam, rev - U * lam, total


@triton.jit
def _upper_states_kernel(
    K, sk0, sk1, skl, skd,
    LAM, sa0, sa1, sal,
    V, sv0, sv1, svl, svd,
    ST,
    B1, seqlen, DG, DV, n_chunks,
    UP_K: tl.constexpr, UP_U: tl.constexpr, VO: tl.constexpr,
    BQ: tl.constexpr, BG: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    ACC: tl.constexpr,
):
    """Right-to-left sweep: ST[bh, c] = upper-triangle state entering chunk c (from chunks > c), fp32."""
    pid = tl.program_id(0)
    pv = tl.program_id(1)
    b0 = (pid // B1).to(tl.int64)
    b1 = (pid % B1).to(tl.int64)
    q = tl.arange(0, BQ)
    g = tl.arange(0, BG)
    vc = pv * BV + tl.arange(0, BV)
    dt = V.dtype.element_ty
    state = tl.zeros((BG, BV), dtype=ACC)
    st_base = ST + pid.to(tl.int64) * n_chunks * DG * DV
    st_mask = (g < DG)[:, None] & (vc < DV)[None, :]
    for cc in range(n_chunks):
        c = n_chunks - 1 - cc
        tl.store(st_base + c * DG * DV + g[:, None] * DV + vc[None, :], state.to(ST.dtype.element_ty),
                 mask=st_mask)
        rows = c * BQ + q
        lam = _load_vec(LAM, sa0, sa1, sal, b0, b1, rows, seqlen, ACC)
        rev_total = tl.sum(lam, axis=0)
        rev = rev_total - tl.cumsum(lam, axis=0) + lam
        col_dec = rev - UP_U * lam
        kt = _load_rows(K, sk0, sk1, skl, skd, b0, b1, rows - UP_K, g, seqlen, DG)
        vt = _load_rows(V, sv0, sv1, svl, svd, b0, b1, rows + VO, vc, seqlen, DV)
        vt = tl.where((rows < seqlen)[:, None], vt, 0.0).to(dt)
        w = tl.exp(tl.minimum(rev_total - col_dec, 0.0))
        kw = (kt.to(ACC) * w[:, None]).to(dt)
        state = state * tl.exp(rev_total) + _dot(tl.trans(kw), vt, PREC, UPCAST, ACC)


@triton.jit
def _sweep_kernel(
    RL, srl0, srl1, srll, srld,
    KL, skl0, skl1, skll, skld,
    AL, sal0, sal1, sall,
    RU, sru0, sru1, srul, srud,
    KU, sku0, sku1, skul, skud,
    AU, sau0, sau1, saul,
    V, sv0, sv1, svl, svd,
    D, sd0, sd1, sdl,
    ST, O, so0, so1, sol, sod,
    RD, srd0, srd1, srdl, srdd, RDO,
    B1, seqlen, DG, DV, n_chunks,
    HAS_LO: tl.constexpr, LO_R: tl.constexpr, LO_K: tl.constexpr, LO_U: tl.constexpr, LO_V: tl.constexpr,
    LO_S: tl.constexpr,
    HAS_UP: tl.constexpr, UP_R: tl.constexpr, UP_K: tl.constexpr, UP_U: tl.constexpr, UP_V: tl.constexpr,
    UP_S: tl.constexpr,
    SHARED_GRAM: tl.constexpr, HAS_D: tl.constexpr, VO: tl.constexpr, HAS_RD: tl.constexpr,
    ATOMIC: tl.constexpr,
    BQ: tl.constexpr, BG: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    ACC: tl.constexpr,
):
    """Left-to-right sweep: carry the lower state, read the stored upper states, write O (see module doc)."""
    pid = tl.program_id(0)
    pv = tl.program_id(1)
    b0 = (pid // B1).to(tl.int64)
    b1 = (pid % B1).to(tl.int64)
    q = tl.arange(0, BQ)
    g = tl.arange(0, BG)
    vc = pv * BV + tl.arange(0, BV)
    dt = V.dtype.element_ty
    state = tl.zeros((BG, BV), dtype=ACC)
    st_base = ST + pid.to(tl.int64) * n_chunks * DG * DV
    st_mask = (g < DG)[:, None] & (vc < DV)[None, :]
    o_base = O + b0 * so0 + b1 * so1
    for c in range(n_chunks):
        rows = c * BQ + q
        live = rows < seqlen
        vt = _load_rows(V, sv0, sv1, svl, svd, b0, b1, rows + VO, vc, seqlen, DV)
        vt = tl.where(live[:, None], vt, 0.0).to(dt)
        acc = tl.zeros((BQ, BV), dtype=ACC)
        w = tl.zeros((BQ, BQ), dtype=ACC)
        if HAS_LO:
            lam = _load_vec(AL, sal0, sal1, sall, b0, b1, rows, seqlen, ACC)
            row_dec, col_dec, total = _lower_decays(lam, LO_U, LO_V)
            rt = _load_rows(RL, srl0, srl1, srll, srld, b0, b1, rows - LO_R, g, seqlen, DG).to(dt)
            kt = _load_rows(KL, skl0, skl1, skll, skld, b0, b1, rows + LO_K, g, seqlen, DG).to(dt)
            gram = _dot(rt, tl.trans(kt), PREC, UPCAST, ACC)
            keep = q[None, :] <= q[:, None] - LO_S
            expo = tl.where(keep, row_dec[:, None] - col_dec[None, :], 0.0)
            w += tl.where(keep, gram * tl.exp(tl.minimum(expo, 0.0)), 0.0)
            acc += _dot(rt, state.to(dt), PREC, UPCAST, ACC) * tl.exp(row_dec)[:, None]
            kw = (kt.to(ACC) * tl.exp(tl.minimum(total - col_dec, 0.0))[:, None]).to(dt)
            state = state * tl.exp(total) + _dot(tl.trans(kw), vt, PREC, UPCAST, ACC)
        if HAS_UP:
            lam_u = _load_vec(AU, sau0, sau1, saul, b0, b1, rows, seqlen, ACC)
            row_dec_u, col_dec_u, total_u = _upper_decays(lam_u, UP_U, UP_V)
            if SHARED_GRAM:
                ru = rt
                gram_u = gram
            else:
                ru = _load_rows(RU, sru0, sru1, srul, srud, b0, b1, rows + UP_R, g, seqlen, DG).to(dt)
                ku = _load_rows(KU, sku0, sku1, skul, skud, b0, b1, rows - UP_K, g, seqlen, DG).to(dt)
                gram_u = _dot(ru, tl.trans(ku), PREC, UPCAST, ACC)
            keep_u = q[None, :] >= q[:, None] + UP_S
            expo_u = tl.where(keep_u, row_dec_u[:, None] - col_dec_u[None, :], 0.0)
            w += tl.where(keep_u, gram_u * tl.exp(tl.minimum(expo_u, 0.0)), 0.0)
            st_in = tl.load(st_base + c * DG * DV + g[:, None] * DV + vc[None, :], mask=st_mask, other=0.0)
            acc += _dot(ru, st_in.to(dt), PREC, UPCAST, ACC) * tl.exp(row_dec_u)[:, None]
        acc += _dot(w.to(dt), vt, PREC, UPCAST, ACC)
        if HAS_D:
            dg = _load_vec(D, sd0, sd1, sdl, b0, b1, rows, seqlen, ACC)
            acc += dg[:, None] * vt.to(ACC)
        o_mask = live[:, None] & (vc < DV)[None, :]
        if HAS_RD:
            # Row dots RD_i . O_i of this head's rows (log-decay gradients need them per head, before the
            # sum over heads below); one block of columns holds the whole row (checked by the caller).
            rd = _load_rows(RD, srd0, srd1, srdl, srdd, b0, b1, rows, vc, seqlen, DV).to(ACC)
            tl.store(RDO + pid.to(tl.int64) * seqlen + rows, tl.sum(acc * rd, axis=1), mask=live)
        o_ptr = o_base + rows[:, None] * sol + vc[None, :] * sod
        if ATOMIC:
            # O is shared by several batch elements (a parameter broadcast over heads): sum into it.
            tl.atomic_add(o_ptr, acc, mask=o_mask)
        else:
            tl.store(o_ptr, acc.to(O.dtype.element_ty), mask=o_mask)
