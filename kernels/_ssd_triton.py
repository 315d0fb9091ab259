"""Triton kernels of the generic chunked scan behind :mod:`kernels.ssd`.

One kernel pair evaluates ``O = (lower + upper + diag(delta)) V`` for a quasiseparable operator whose two
triangles are given by *generic* generators (row vectors R, column vectors K, log-decays lam) with small
integer index offsets. Per batch element (0-based, i = output row, j = column)::

    lower:  O_i += sum_{j <= i - s}  exp(sum_{t = j+1-u .. i-v} lam_t)  (R[i - r] . K[j + k])  V[j + vo]
    upper:  O_i += sum_{j >= i + s}  exp(sum_{t = i+v .. j-1+u} lam'_t) (R'[i + r'] . K'[j - k']) V[j + vo]

with u + s = v (so the decay span of every kept pair is a non-empty-or-empty run of t, never negative) and
s in {0, 1}. Out-of-range rows read as zero. Hydra's forward product (shift or not) and the causal SSD are
instances of this one form (see :mod:`kernels.ssd`); the backward kernels below compute every gradient of
those instances (``r = v = s``, ``k = u = 0``, ``vo = 0``; causal: lower triangle only) in one kernel pair.

Algorithm (chunked SSD, Dao & Gu, arXiv 2405.21060 Section 6, rearranged as two sweeps): the sequence is cut
into chunks of Q rows. Inside a chunk, decays are differences of a chunk-local (reverse) cumulative sum of
lam, so only exponentials of non-positive numbers are formed. Between chunks, the lower triangle is carried
left-to-right as an (N x P) state in registers, the upper one right-to-left:

* ``_upper_states_kernel`` sweeps right-to-left and stores, per chunk, the upper state entering it;
* ``_sweep_kernel`` sweeps left-to-right, carries the lower state, reads the stored upper state, builds ONE
  combined Q x Q intra-chunk matrix (lower and upper triangles together) and multiplies V once.

Each program owns one batch element and one block of V's columns, so V, R and K are each read once per
sweep and no flipped, shifted or doubled copy of any input exists.

Precision of the decays: every kernel takes two dtype constexprs, ACC (products and states) and DEC (the
decay exponents: lam as loaded, its chunk-local cumulative sums and totals, and every difference of them).
An exponent is cast to ACC right after its last difference and exponentiated there, so its error is about
eps_ACC * |exponent|; a difference formed in ACC = float32 would carry eps32 * |chunk sum| instead, 1e-4
under strong decay (sums near -1000 within a chunk), relative, on every neighbour entry. kernels.ssd passes
DEC = float64 for float32 and float64 inputs and DEC = ACC = float32 for half precision (whose binaries are
then those of plain float32 exponents). The running sums of the log-decay gradients stay in ACC.
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
def _state_step(state, K, sk0, sk1, skl, skd, LAM, sa0, sa1, sal, V, sv0, sv1, svl, svd,
                b0, b1, rows, g, vc, seqlen, DG, DV,
                KO: tl.constexpr, U: tl.constexpr, VO: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                ACC: tl.constexpr, DEC: tl.constexpr):
    """The state entering the chunk at ``rows`` from the right, given the one entering the next chunk."""
    dt = V.dtype.element_ty
    lam = _load_vec(LAM, sa0, sa1, sal, b0, b1, rows, seqlen, DEC)
    rev_total = tl.sum(lam, axis=0)
    rev = rev_total - tl.cumsum(lam, axis=0) + lam
    col_dec = rev - U * lam
    kt = _load_rows(K, sk0, sk1, skl, skd, b0, b1, rows + KO, g, seqlen, DG)
    vt = _load_rows(V, sv0, sv1, svl, svd, b0, b1, rows + VO, vc, seqlen, DV)
    vt = tl.where((rows < seqlen)[:, None], vt, 0.0).to(dt)
    w = tl.exp(tl.minimum((rev_total - col_dec).to(ACC), 0.0))
    kw = (kt.to(ACC) * w[:, None]).to(dt)
    return state * tl.exp(rev_total.to(ACC)) + _dot(tl.trans(kw), vt, PREC, UPCAST, ACC)


@triton.jit
def _state_sweep(K, sk0, sk1, skl, skd, LAM, sa0, sa1, sal, V, sv0, sv1, svl, svd, st_base,
                 b0, b1, vc, seqlen, DG, DV, n_chunks,
                 KO: tl.constexpr, U: tl.constexpr, VO: tl.constexpr,
                 BQ: tl.constexpr, BG: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                 ACC: tl.constexpr, DEC: tl.constexpr):
    """Right-to-left sweep storing, per chunk c, ``st_base[c] = sum_{j in chunks > c}
    exp(sum_{t = start(c+1) .. j-1+U} lam_t) K[j + KO] V[j + VO]^T`` (a (DG, DV) tile, columns vc)."""
    q = tl.arange(0, BQ)
    g = tl.arange(0, BG)
    state = tl.zeros((BG, BV), dtype=ACC)
    st_idx = g[:, None] * DV + vc[None, :]
    st_mask = (g < DG)[:, None] & (vc < DV)[None, :]
    for cc in range(n_chunks):
        c = n_chunks - 1 - cc
        tl.store(st_base + c * DG * DV + st_idx, state.to(st_base.dtype.element_ty), mask=st_mask)
        state = _state_step(state, K, sk0, sk1, skl, skd, LAM, sa0, sa1, sal, V, sv0, sv1, svl, svd,
                            b0, b1, c * BQ + q, g, vc, seqlen, DG, DV, KO=KO, U=U, VO=VO,
                            PREC=PREC, UPCAST=UPCAST, ACC=ACC, DEC=DEC)


@triton.jit
def _state_sweep_pair(K, sk0, sk1, skl, skd, LAM, sa0, sa1, sal, V, sv0, sv1, svl, svd, st_base,
                      K2, sk20, sk21, sk2l, sk2d, LAM2, sa20, sa21, sa2l, V2, sv20, sv21, sv2l, sv2d, st_base2,
                      b0, b1, vc, seqlen, DG, DV, n_chunks,
                      U: tl.constexpr, VO: tl.constexpr, U2: tl.constexpr, VO2: tl.constexpr,
                      BQ: tl.constexpr, BG: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
                      UPCAST: tl.constexpr, ACC: tl.constexpr, DEC: tl.constexpr):
    """Two independent :func:`_state_sweep` (KO = 0) in one loop: one program, two dependency chains."""
    q = tl.arange(0, BQ)
    g = tl.arange(0, BG)
    state = tl.zeros((BG, BV), dtype=ACC)
    state2 = tl.zeros((BG, BV), dtype=ACC)
    st_idx = g[:, None] * DV + vc[None, :]
    st_mask = (g < DG)[:, None] & (vc < DV)[None, :]
    for cc in range(n_chunks):
        c = n_chunks - 1 - cc
        tl.store(st_base + c * DG * DV + st_idx, state.to(st_base.dtype.element_ty), mask=st_mask)
        tl.store(st_base2 + c * DG * DV + st_idx, state2.to(st_base2.dtype.element_ty), mask=st_mask)
        rows = c * BQ + q
        state = _state_step(state, K, sk0, sk1, skl, skd, LAM, sa0, sa1, sal, V, sv0, sv1, svl, svd,
                            b0, b1, rows, g, vc, seqlen, DG, DV, KO=0, U=U, VO=VO,
                            PREC=PREC, UPCAST=UPCAST, ACC=ACC, DEC=DEC)
        state2 = _state_step(state2, K2, sk20, sk21, sk2l, sk2d, LAM2, sa20, sa21, sa2l, V2, sv20, sv21, sv2l,
                             sv2d, b0, b1, rows, g, vc, seqlen, DG, DV, KO=0, U=U2, VO=VO2,
                             PREC=PREC, UPCAST=UPCAST, ACC=ACC, DEC=DEC)


@triton.jit
def _upper_states_kernel(
    K, sk0, sk1, skl, skd,
    LAM, sa0, sa1, sal,
    V, sv0, sv1, svl, svd,
    ST,
    B1, seqlen, DG, DV, n_chunks,
    UP_K: tl.constexpr, UP_U: tl.constexpr, VO: tl.constexpr,
    BQ: tl.constexpr, BG: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    ACC: tl.constexpr, DEC: tl.constexpr,
):
    """Right-to-left sweep: ST[bh, c] = upper-triangle state entering chunk c (from chunks > c)."""
    pid = tl.program_id(0)
    pv = tl.program_id(1)
    b0 = (pid // B1).to(tl.int64)
    b1 = (pid % B1).to(tl.int64)
    vc = pv * BV + tl.arange(0, BV)
    _state_sweep(K, sk0, sk1, skl, skd, LAM, sa0, sa1, sal, V, sv0, sv1, svl, svd,
                 ST + pid.to(tl.int64) * n_chunks * DG * DV, b0, b1, vc, seqlen, DG, DV, n_chunks,
                 KO=-UP_K, U=UP_U, VO=VO, BQ=BQ, BG=BG, BV=BV, PREC=PREC, UPCAST=UPCAST, ACC=ACC, DEC=DEC)


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
    B1, seqlen, DG, DV, n_chunks,
    LO_R: tl.constexpr, LO_K: tl.constexpr, LO_U: tl.constexpr, LO_V: tl.constexpr,
    LO_S: tl.constexpr,
    HAS_UP: tl.constexpr, UP_R: tl.constexpr, UP_K: tl.constexpr, UP_U: tl.constexpr, UP_V: tl.constexpr,
    UP_S: tl.constexpr,
    SHARED_GRAM: tl.constexpr, HAS_D: tl.constexpr, VO: tl.constexpr,
    BQ: tl.constexpr, BG: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    ACC: tl.constexpr, DEC: tl.constexpr,
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
        lam = _load_vec(AL, sal0, sal1, sall, b0, b1, rows, seqlen, DEC)
        row_dec, col_dec, total = _lower_decays(lam, LO_U, LO_V)
        rt = _load_rows(RL, srl0, srl1, srll, srld, b0, b1, rows - LO_R, g, seqlen, DG).to(dt)
        kt = _load_rows(KL, skl0, skl1, skll, skld, b0, b1, rows + LO_K, g, seqlen, DG).to(dt)
        gram = _dot(rt, tl.trans(kt), PREC, UPCAST, ACC)
        keep = q[None, :] <= q[:, None] - LO_S
        expo = tl.where(keep, (row_dec[:, None] - col_dec[None, :]).to(ACC), 0.0)
        w += tl.where(keep, gram * tl.exp(tl.minimum(expo, 0.0)), 0.0)
        acc += _dot(rt, state.to(dt), PREC, UPCAST, ACC) * tl.exp(row_dec.to(ACC))[:, None]
        kw = (kt.to(ACC) * tl.exp(tl.minimum((total - col_dec).to(ACC), 0.0))[:, None]).to(dt)
        state = state * tl.exp(total.to(ACC)) + _dot(tl.trans(kw), vt, PREC, UPCAST, ACC)
        if HAS_UP:
            lam_u = _load_vec(AU, sau0, sau1, saul, b0, b1, rows, seqlen, DEC)
            row_dec_u, col_dec_u, total_u = _upper_decays(lam_u, UP_U, UP_V)
            if SHARED_GRAM:
                ru = rt
                gram_u = gram
            else:
                ru = _load_rows(RU, sru0, sru1, srul, srud, b0, b1, rows + UP_R, g, seqlen, DG).to(dt)
                ku = _load_rows(KU, sku0, sku1, skul, skud, b0, b1, rows - UP_K, g, seqlen, DG).to(dt)
                gram_u = _dot(ru, tl.trans(ku), PREC, UPCAST, ACC)
            keep_u = q[None, :] >= q[:, None] + UP_S
            expo_u = tl.where(keep_u, (row_dec_u[:, None] - col_dec_u[None, :]).to(ACC), 0.0)
            w += tl.where(keep_u, gram_u * tl.exp(tl.minimum(expo_u, 0.0)), 0.0)
            st_in = tl.load(st_base + c * DG * DV + g[:, None] * DV + vc[None, :], mask=st_mask, other=0.0)
            acc += _dot(ru, st_in.to(dt), PREC, UPCAST, ACC) * tl.exp(row_dec_u.to(ACC))[:, None]
        acc += _dot(w.to(dt), vt, PREC, UPCAST, ACC)
        if HAS_D:
            dg = _load_vec(D, sd0, sd1, sdl, b0, b1, rows, seqlen, ACC)
            acc += dg[:, None] * vt.to(ACC)
        o_mask = live[:, None] & (vc < DV)[None, :]
        o_ptr = o_base + rows[:, None] * sol + vc[None, :] * sod
        tl.store(o_ptr, acc.to(O.dtype.element_ty), mask=o_mask)


# ------------------------------------------------------------------------------------------------ backward
# The backward pass of the operator for the instances the products use: in each triangle the row generators
# and the decays are read at the same index as the column ones would be on the diagonal (``r = v = s``,
# ``k = u = 0``, ``vo = 0``). Re-indexing the lower triangle by m = i - s and the upper one by n = i + s makes
# both *inclusive* triangles (diagonal kept) whose output row is shifted instead:
#
#     lower:  y[m + S_lo] += sum_{j <= m} exp(sum_{t=j+1..m} lam_t)  (c_m  . b_j ) x_j
#     upper:  y[n - S_up] += sum_{j >= n} exp(sum_{t=n..j-1} lam'_t) (c'_n . b'_j) x_j
#
# so the backward needs no shifted register tile: it reads dy at rows m + S_lo and n - S_up (overlapping
# loads) and every gradient lands on unshifted rows. Per triangle and chunk, with dyL = dy[m + S_lo],
# W the decay mask, G = C B^T and S = dyL X^T (each formed once per chunk and program):
#
#     dx = (W o G)^T dyL,   dc = (W o S) B,   db = (W o S)^T C     (+ the mirror terms of the upper triangle)
#
# plus inter-chunk terms through four (N x P) states: two that come from the right, stored per chunk by
# ``_bwd_states_kernel`` (G_lo = sum c dyL^T, used by dx and db; H_up = sum b' x^T, used by dc') and two
# carried from the left by the sweep (H_lo = sum b x^T for dc; G_up = sum c' dyU^T for dx and db').
# Log-decay gradients: d lam_t sums the pair terms A_mj = W o G o S over the pairs whose decay span holds t.
# With rho = row sums and kap = column sums of A (inter-chunk pairs included), rho_m = c_m . dc_m and
# kap_j = b_j . db_j, and sum(rho) = sum(kap), so
#
#     d lam_t  = sum_{i < t} (kap_i - rho_i)        (lower: pairs j < t <= m)
#     d lam'_t = sum_{i <= t} (rho'_i - kap'_i)     (upper: pairs n <= t < j)
#
# are running sums that the sweep carries; no O(L N) pass of their own.


@triton.jit
def _bwd_states_kernel(
    C, sc0, sc1, scl, scd,
    AL, sal0, sal1, sall,
    DY, sy0, sy1, syl, syd,
    GL,
    BU, sbu0, sbu1, sbul, sbud,
    AU, sau0, sau1, saul,
    X, sx0, sx1, sxl, sxd,
    HU,
    B1, seqlen, N, P, n_chunks,
    LO_S: tl.constexpr, PAIR: tl.constexpr, BQ: tl.constexpr, BN: tl.constexpr, BP: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr, DEC: tl.constexpr,
):
    """Right-to-left: stores per chunk G_lo (lower adjoint state, ``sum exp(span) c_m dy[m+S_lo]^T``) and
    H_up (upper state, ``sum exp(span) b'_j x_j^T``) entering it from the right. PAIR: one program per
    batch element computes both in one loop (two independent chains); otherwise program (bh, 0) computes
    G_lo and (bh, 1) H_up (twice the programs; the grid's second axis is 1 without an upper triangle)."""
    pid = tl.program_id(0)
    which = tl.program_id(1)
    b0 = (pid // B1).to(tl.int64)
    b1 = (pid % B1).to(tl.int64)
    vc = tl.arange(0, BP)
    off = pid.to(tl.int64) * n_chunks * N * P
    # Lower adjoint: span start(c+1)..m is the inclusive prefix of lam up to m, i.e. U = 1.
    if PAIR:
        _state_sweep_pair(C, sc0, sc1, scl, scd, AL, sal0, sal1, sall, DY, sy0, sy1, syl, syd, GL + off,
                          BU, sbu0, sbu1, sbul, sbud, AU, sau0, sau1, saul, X, sx0, sx1, sxl, sxd, HU + off,
                          b0, b1, vc, seqlen, N, P, n_chunks, U=1, VO=LO_S, U2=0, VO2=0,
                          BQ=BQ, BG=BN, BV=BP, PREC=PREC, UPCAST=UPCAST, ACC=ACC, DEC=DEC)
    else:
        if which == 0:
            _state_sweep(C, sc0, sc1, scl, scd, AL, sal0, sal1, sall, DY, sy0, sy1, syl, syd, GL + off,
                         b0, b1, vc, seqlen, N, P, n_chunks, KO=0, U=1, VO=LO_S,
                         BQ=BQ, BG=BN, BV=BP, PREC=PREC, UPCAST=UPCAST, ACC=ACC, DEC=DEC)
        else:
            _state_sweep(BU, sbu0, sbu1, sbul, sbud, AU, sau0, sau1, saul, X, sx0, sx1, sxl, sxd, HU + off,
                         b0, b1, vc, seqlen, N, P, n_chunks, KO=0, U=0, VO=0,
                         BQ=BQ, BG=BN, BV=BP, PREC=PREC, UPCAST=UPCAST, ACC=ACC, DEC=DEC)


@triton.jit
def _emit(ptr, s0, s1, sl, sd, b0, b1, rows, cols, tile, mask, ATOMIC: tl.constexpr):
    """Write a gradient tile; ATOMIC: sum into a target shared by several batch elements (stride 0)."""
    p = ptr + b0 * s0 + b1 * s1 + rows[:, None] * sl + cols[None, :] * sd
    if ATOMIC:
        # A pure reduction: relaxed order (the default acq_rel would order every element's add).
        tl.atomic_add(p, tile, mask=mask, sem="relaxed")
    else:
        tl.store(p, tile.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_part(
    X, sx0, sx1, sxl, sxd,
    DY, sy0, sy1, syl, syd,
    BL, sbl0, sbl1, sbll, sbld,
    CL, scl0, scl1, scll, scld,
    AL, sal0, sal1, sall,
    BU, sbu0, sbu1, sbul, sbud,
    CU, scu0, scu1, scul, scud,
    AU, sau0, sau1, saul,
    D, sd0, sd1, sdl,
    GL, HU,
    DX, sdx0, sdx1, sdxl, sdxd,
    DBL, sdbl0, sdbl1, sdbll, sdbld,
    DCL, sdcl0, sdcl1, sdcll, sdcld,
    DBU, sdbu0, sdbu1, sdbul, sdbud,
    DCU, sdcu0, sdcu1, sdcul, sdcud,
    RS, DDL,
    pid, b0, b1, seqlen, N, P, n_chunks,
    DO_DX: tl.constexpr, DO_DB: tl.constexpr, DO_DC: tl.constexpr,
    LO_S: tl.constexpr, HAS_UP: tl.constexpr, UP_S: tl.constexpr, SHARED_GRAM: tl.constexpr,
    COMBINE: tl.constexpr, JOINT_DY: tl.constexpr, HAS_D: tl.constexpr,
    AT_BL: tl.constexpr, AT_CL: tl.constexpr, AT_BU: tl.constexpr, AT_CU: tl.constexpr,
    BQ: tl.constexpr, BN: tl.constexpr, BP: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    ACC: tl.constexpr, DEC: tl.constexpr,
):
    """Left-to-right sweep over one batch element computing the parts of the gradient selected by
    DO_DX (dx and the diagonal's gradient; uses G_lo stored, G_up carried), DO_DB (db, db' and their row
    dots; G_lo stored, G_up carried) and DO_DC (dc, dc' and their row dots; H_up stored, H_lo carried).
    Row dots go out as running sums RS[0] = sum_{i<t} c.dc, RS[1] = sum_{i<t} b.db,
    RS[2] = sum_{i<=t} c'.dc', RS[3] = sum_{i<=t} b'.db' (see the comment above)."""
    q = tl.arange(0, BQ)
    gn = tl.arange(0, BN)
    gp = tl.arange(0, BP)
    dt = X.dtype.element_ty
    st_off = pid.to(tl.int64) * n_chunks * N * P
    st_idx = gn[:, None] * P + gp[None, :]
    st_mask = (gn < N)[:, None] & (gp < P)[None, :]
    tri_lo = q[None, :] <= q[:, None]
    tri_up = q[None, :] >= q[:, None]
    h_lo = tl.zeros((BN, BP), dtype=ACC)  # sum exp(span) b_j x_j^T over the chunks to the left
    g_up = tl.zeros((BN, BP), dtype=ACC)  # sum exp(span) c'_n dy[n - S_up]^T over the chunks to the left
    run_rho = tl.sum(tl.zeros((BQ,), dtype=ACC), axis=0)
    run_kap = run_rho
    run_rho_u = run_rho
    run_kap_u = run_rho
    n_rows = tl.num_programs(1).to(tl.int64) * seqlen  # one slab of RS
    vec_base = pid.to(tl.int64) * seqlen
    for c in range(n_chunks):
        rows = c * BQ + q
        live = rows < seqlen
        mask_n = live[:, None] & (gn < N)[None, :]
        dyl = _load_rows(DY, sy0, sy1, syl, syd, b0, b1, rows + LO_S, gp, seqlen, P).to(dt)
        bl = _load_rows(BL, sbl0, sbl1, sbll, sbld, b0, b1, rows, gn, seqlen, N).to(dt)
        cl = _load_rows(CL, scl0, scl1, scll, scld, b0, b1, rows, gn, seqlen, N).to(dt)
        # lower triangle (m-space): W[m, j] = exp(ell_m - ell_j), j <= m
        lam = _load_vec(AL, sal0, sal1, sall, b0, b1, rows, seqlen, DEC)
        ell = tl.cumsum(lam, axis=0)
        tot = tl.sum(lam, axis=0)
        dec_in = tl.exp(ell.to(ACC))  # span chunk start .. m
        dec_out = tl.exp(tl.minimum((tot - ell).to(ACC), 0.0))  # span j+1 .. chunk end
        w = tl.where(tri_lo, tl.exp(tl.minimum((ell[:, None] - ell[None, :]).to(ACC), 0.0)), 0.0)
        if HAS_UP:
            # upper triangle (n-space): W'[n, j] = exp(rev_n - rev_j), j >= n
            if JOINT_DY:
                dyu = dyl
            else:
                dyu = _load_rows(DY, sy0, sy1, syl, syd, b0, b1, rows - UP_S, gp, seqlen, P).to(dt)
            if SHARED_GRAM:
                bu = bl
                cu = cl
            else:
                bu = _load_rows(BU, sbu0, sbu1, sbul, sbud, b0, b1, rows, gn, seqlen, N).to(dt)
                cu = _load_rows(CU, scu0, scu1, scul, scud, b0, b1, rows, gn, seqlen, N).to(dt)
            lam_u = _load_vec(AU, sau0, sau1, saul, b0, b1, rows, seqlen, DEC)
            tot_u = tl.sum(lam_u, axis=0)
            rev = tot_u - tl.cumsum(lam_u, axis=0) + lam_u
            rdec_in = tl.exp(rev.to(ACC))  # span n .. chunk end
            rdec_out = tl.exp(tl.minimum((tot_u - rev).to(ACC), 0.0))  # span chunk start .. j-1
            w_u = tl.where(tri_up, tl.exp(tl.minimum((rev[:, None] - rev[None, :]).to(ACC), 0.0)), 0.0)
        if DO_DX + DO_DB > 0:
            g_lo = tl.load(GL + st_off + c * N * P + st_idx, mask=st_mask, other=0.0).to(dt)
        if DO_DB + DO_DC > 0:
            xt = _load_rows(X, sx0, sx1, sxl, sxd, b0, b1, rows, gp, seqlen, P).to(dt)
            sc = _dot(dyl, tl.trans(xt), PREC, UPCAST, ACC)
            ws_lo = w * sc
            if HAS_UP:
                if JOINT_DY:
                    ws_up = w_u * sc
                else:
                    ws_up = w_u * _dot(dyu, tl.trans(xt), PREC, UPCAST, ACC)
        if DO_DX:
            gram = _dot(cl, tl.trans(bl), PREC, UPCAST, ACC)
            p_lo = w * gram
            # Decays of the inter-chunk terms scale rows after the product: x, dy, b are exact in their
            # dtype, a scaled copy would be rounded once more.
            dx = _dot(bl, g_lo, PREC, UPCAST, ACC) * dec_out[:, None]
            if HAS_UP:
                if SHARED_GRAM:
                    p_up = w_u * gram
                else:
                    p_up = w_u * _dot(cu, tl.trans(bu), PREC, UPCAST, ACC)
                dx += _dot(bu, g_up.to(dt), PREC, UPCAST, ACC) * rdec_out[:, None]
                if JOINT_DY:
                    dx += _dot(tl.trans((p_lo + p_up).to(dt)), dyl, PREC, UPCAST, ACC)
                else:
                    dx += _dot(tl.trans(p_lo.to(dt)), dyl, PREC, UPCAST, ACC)
                    dx += _dot(tl.trans(p_up.to(dt)), dyu, PREC, UPCAST, ACC)
            else:
                dx += _dot(tl.trans(p_lo.to(dt)), dyl, PREC, UPCAST, ACC)
            if HAS_D:
                if LO_S == 0:
                    dy0 = dyl
                else:
                    dy0 = _load_rows(DY, sy0, sy1, syl, syd, b0, b1, rows, gp, seqlen, P).to(dt)
                dx += _load_vec(D, sd0, sd1, sdl, b0, b1, rows, seqlen, ACC)[:, None] * dy0.to(ACC)
                x0 = _load_rows(X, sx0, sx1, sxl, sxd, b0, b1, rows, gp, seqlen, P)
                tl.store(DDL + vec_base + rows, tl.sum(dy0.to(ACC) * x0.to(ACC), axis=1), mask=live)
            tl.store(DX + b0 * sdx0 + b1 * sdx1 + rows[:, None] * sdxl + gp[None, :] * sdxd,
                     dx.to(DX.dtype.element_ty), mask=live[:, None] & (gp < P)[None, :])
        if DO_DB:
            db = (_dot(xt, tl.trans(g_lo), PREC, UPCAST, ACC) * dec_out[:, None]
                  + _dot(tl.trans(ws_lo.to(dt)), cl, PREC, UPCAST, ACC))
            kap = tl.sum(bl.to(ACC) * db, axis=1)
            tl.store(RS + n_rows + vec_base + rows, run_kap + tl.cumsum(kap, axis=0) - kap, mask=live)
            run_kap += tl.sum(kap, axis=0)
            if HAS_UP:
                db_u = (_dot(xt, tl.trans(g_up.to(dt)), PREC, UPCAST, ACC) * rdec_out[:, None]
                        + _dot(tl.trans(ws_up.to(dt)), cu, PREC, UPCAST, ACC))
                kap_u = tl.sum(bu.to(ACC) * db_u, axis=1)
                tl.store(RS + 3 * n_rows + vec_base + rows, run_kap_u + tl.cumsum(kap_u, axis=0), mask=live)
                run_kap_u += tl.sum(kap_u, axis=0)
                if COMBINE:
                    db += db_u
                else:
                    _emit(DBU, sdbu0, sdbu1, sdbul, sdbud, b0, b1, rows, gn, db_u, mask_n, AT_BU)
            _emit(DBL, sdbl0, sdbl1, sdbll, sdbld, b0, b1, rows, gn, db, mask_n, AT_BL)
        if DO_DC:
            dc = (_dot(dyl, tl.trans(h_lo.to(dt)), PREC, UPCAST, ACC) * dec_in[:, None]
                  + _dot(ws_lo.to(dt), bl, PREC, UPCAST, ACC))
            rho = tl.sum(cl.to(ACC) * dc, axis=1)
            tl.store(RS + vec_base + rows, run_rho + tl.cumsum(rho, axis=0) - rho, mask=live)
            run_rho += tl.sum(rho, axis=0)
            if HAS_UP:
                h_up = tl.load(HU + st_off + c * N * P + st_idx, mask=st_mask, other=0.0).to(dt)
                dc_u = (_dot(dyu, tl.trans(h_up), PREC, UPCAST, ACC) * rdec_in[:, None]
                        + _dot(ws_up.to(dt), bu, PREC, UPCAST, ACC))
                rho_u = tl.sum(cu.to(ACC) * dc_u, axis=1)
                tl.store(RS + 2 * n_rows + vec_base + rows, run_rho_u + tl.cumsum(rho_u, axis=0), mask=live)
                run_rho_u += tl.sum(rho_u, axis=0)
                if COMBINE:
                    dc += dc_u
                else:
                    _emit(DCU, sdcu0, sdcu1, sdcul, sdcud, b0, b1, rows, gn, dc_u, mask_n, AT_CU)
            _emit(DCL, sdcl0, sdcl1, sdcll, sdcld, b0, b1, rows, gn, dc, mask_n, AT_CL)
            h_lo = h_lo * tl.exp(tot.to(ACC)) + _dot(tl.trans((bl.to(ACC) * dec_out[:, None]).to(dt)), xt,
                                             PREC, UPCAST, ACC)
        if HAS_UP:
            if DO_DX + DO_DB > 0:
                g_up = g_up * tl.exp(tot_u.to(ACC)) + _dot(tl.trans((cu.to(ACC) * rdec_in[:, None]).to(dt)), dyu,
                                                   PREC, UPCAST, ACC)


@triton.jit
def _bwd_sweep_kernel(
    X, sx0, sx1, sxl, sxd,
    DY, sy0, sy1, syl, syd,
    BL, sbl0, sbl1, sbll, sbld,
    CL, scl0, scl1, scll, scld,
    AL, sal0, sal1, sall,
    BU, sbu0, sbu1, sbul, sbud,
    CU, scu0, scu1, scul, scud,
    AU, sau0, sau1, saul,
    D, sd0, sd1, sdl,
    GL, HU,
    DX, sdx0, sdx1, sdxl, sdxd,
    DBL, sdbl0, sdbl1, sdbll, sdbld,
    DCL, sdcl0, sdcl1, sdcll, sdcld,
    DBU, sdbu0, sdbu1, sdbul, sdbud,
    DCU, sdcu0, sdcu1, sdcul, sdcud,
    RS, DDL,
    B1, seqlen, N, P, n_chunks,
    SPLIT: tl.constexpr, ROLE: tl.constexpr,
    LO_S: tl.constexpr, HAS_UP: tl.constexpr, UP_S: tl.constexpr, SHARED_GRAM: tl.constexpr,
    COMBINE: tl.constexpr, JOINT_DY: tl.constexpr, HAS_D: tl.constexpr,
    AT_BL: tl.constexpr, AT_CL: tl.constexpr, AT_BU: tl.constexpr, AT_CU: tl.constexpr,
    BQ: tl.constexpr, BN: tl.constexpr, BP: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    ACC: tl.constexpr, DEC: tl.constexpr,
):
    """Left-to-right gradient sweep, program (role, batch element). SPLIT: three programs per batch element
    (role 0: dx, 1: db, 2: dc; each carries one state and holds about a third of the tiles, and the three
    of one batch element are adjacent in launch order so that they share x and dy in L2); otherwise one
    program computes all (fewer products: the dy x^T tiles and G_up are formed once).

    ROLE (SPLIT only): -1 takes the role from ``program_id(0)`` at run time (grid ``(3, batch)``, one binary
    holding all three roles' code, whose shared memory and registers must serve every role: 145 KiB on sm_90
    at the benchmark shape where each role alone needs 80 to 89 KiB); 0, 1 or 2 compiles that role alone
    (grid ``(1, batch)``, one launch per role: a binary sized to its own tiles, but the launches run one
    after another, so x and dy are read once per role instead of sharing L2)."""
    role = tl.program_id(0)
    pid = tl.program_id(1)
    b0 = (pid // B1).to(tl.int64)
    b1 = (pid % B1).to(tl.int64)
    if SPLIT and ROLE < 0:
        # The role is known only at run time: one instantiation per role (DO_* are compile-time).
        if role == 0:
            _bwd_part(X, sx0, sx1, sxl, sxd, DY, sy0, sy1, syl, syd, BL, sbl0, sbl1, sbll, sbld, CL, scl0, scl1,
                      scll, scld, AL, sal0, sal1, sall, BU, sbu0, sbu1, sbul, sbud, CU, scu0, scu1, scul, scud, AU,
                      sau0, sau1, saul, D, sd0, sd1, sdl, GL, HU, DX, sdx0, sdx1, sdxl, sdxd, DBL, sdbl0, sdbl1,
                      sdbll, sdbld, DCL, sdcl0, sdcl1, sdcll, sdcld, DBU, sdbu0, sdbu1, sdbul, sdbud, DCU, sdcu0,
                      sdcu1, sdcul, sdcud, RS, DDL, pid, b0, b1, seqlen, N, P, n_chunks, DO_DX=True, DO_DB=False,
                      DO_DC=False, LO_S=LO_S, HAS_UP=HAS_UP, UP_S=UP_S, SHARED_GRAM=SHARED_GRAM, COMBINE=COMBINE,
                      JOINT_DY=JOINT_DY, HAS_D=HAS_D, AT_BL=AT_BL, AT_CL=AT_CL, AT_BU=AT_BU, AT_CU=AT_CU, BQ=BQ,
                      BN=BN, BP=BP, PREC=PREC, UPCAST=UPCAST, ACC=ACC, DEC=DEC)
        elif role == 1:
            _bwd_part(X, sx0, sx1, sxl, sxd, DY, sy0, sy1, syl, syd, BL, sbl0, sbl1, sbll, sbld, CL, scl0, scl1,
                      scll, scld, AL, sal0, sal1, sall, BU, sbu0, sbu1, sbul, sbud, CU, scu0, scu1, scul, scud, AU,
                      sau0, sau1, saul, D, sd0, sd1, sdl, GL, HU, DX, sdx0, sdx1, sdxl, sdxd, DBL, sdbl0, sdbl1,
                      sdbll, sdbld, DCL, sdcl0, sdcl1, sdcll, sdcld, DBU, sdbu0, sdbu1, sdbul, sdbud, DCU, sdcu0,
                      sdcu1, sdcul, sdcud, RS, DDL, pid, b0, b1, seqlen, N, P, n_chunks, DO_DX=False, DO_DB=True,
                      DO_DC=False, LO_S=LO_S, HAS_UP=HAS_UP, UP_S=UP_S, SHARED_GRAM=SHARED_GRAM, COMBINE=COMBINE,
                      JOINT_DY=JOINT_DY, HAS_D=HAS_D, AT_BL=AT_BL, AT_CL=AT_CL, AT_BU=AT_BU, AT_CU=AT_CU, BQ=BQ,
                      BN=BN, BP=BP, PREC=PREC, UPCAST=UPCAST, ACC=ACC, DEC=DEC)
        else:
            _bwd_part(X, sx0, sx1, sxl, sxd, DY, sy0, sy1, syl, syd, BL, sbl0, sbl1, sbll, sbld, CL, scl0, scl1,
                      scll, scld, AL, sal0, sal1, sall, BU, sbu0, sbu1, sbul, sbud, CU, scu0, scu1, scul, scud, AU,
                      sau0, sau1, saul, D, sd0, sd1, sdl, GL, HU, DX, sdx0, sdx1, sdxl, sdxd, DBL, sdbl0, sdbl1,
                      sdbll, sdbld, DCL, sdcl0, sdcl1, sdcll, sdcld, DBU, sdbu0, sdbu1, sdbul, sdbud, DCU, sdcu0,
                      sdcu1, sdcul, sdcud, RS, DDL, pid, b0, b1, seqlen, N, P, n_chunks, DO_DX=False, DO_DB=False,
                      DO_DC=True, LO_S=LO_S, HAS_UP=HAS_UP, UP_S=UP_S, SHARED_GRAM=SHARED_GRAM, COMBINE=COMBINE,
                      JOINT_DY=JOINT_DY, HAS_D=HAS_D, AT_BL=AT_BL, AT_CL=AT_CL, AT_BU=AT_BU, AT_CU=AT_CU, BQ=BQ,
                      BN=BN, BP=BP, PREC=PREC, UPCAST=UPCAST, ACC=ACC, DEC=DEC)
    else:
        # Roles known at compile time: per-role launches (ROLE 0, 1, 2) or one program doing all.
        _bwd_part(X, sx0, sx1, sxl, sxd, DY, sy0, sy1, syl, syd, BL, sbl0, sbl1, sbll, sbld, CL, scl0, scl1, scll,
                  scld, AL, sal0, sal1, sall, BU, sbu0, sbu1, sbul, sbud, CU, scu0, scu1, scul, scud, AU, sau0,
                  sau1, saul, D, sd0, sd1, sdl, GL, HU, DX, sdx0, sdx1, sdxl, sdxd, DBL, sdbl0, sdbl1, sdbll, sdbld,
                  DCL, sdcl0, sdcl1, sdcll, sdcld, DBU, sdbu0, sdbu1, sdbul, sdbud, DCU, sdcu0, sdcu1, sdcul, sdcud,
                  RS, DDL, pid, b0, b1, seqlen, N, P, n_chunks, DO_DX=(not SPLIT) or ROLE == 0,
                  DO_DB=(not SPLIT) or ROLE == 1, DO_DC=(not SPLIT) or ROLE == 2, LO_S=LO_S,
                  HAS_UP=HAS_UP, UP_S=UP_S, SHARED_GRAM=SHARED_GRAM, COMBINE=COMBINE, JOINT_DY=JOINT_DY,
                  HAS_D=HAS_D, AT_BL=AT_BL, AT_CL=AT_CL, AT_BU=AT_BU, AT_CU=AT_CU, BQ=BQ, BN=BN, BP=BP, PREC=PREC,
                  UPCAST=UPCAST, ACC=ACC, DEC=DEC)


# ------------------------------------------------------------------------------------ shared-memory table
# Compiling for sm_90 needs no GPU: Triton lowers to LLVM IR on any machine, and the shared memory a launch
# asks for (what OutOfResources compares with the device's limit) is known at that stage. The table in
# kernels/ssd.py (_SMEM_SM90) was made with triton 3.6 (the GPU machine's version) by
#     PYTHONPATH=/path/to/triton-3.6:. python -m kernels._ssd_triton --jobs 2
# Each kernel is compiled in its largest variant (both triangles, separate generators for them, shifted,
# with the diagonal; the backward's generator gradients atomic), contiguous operands and 16-divisible
# sizes, as a launch specializes them (vectorized loads are the ones the software pipeline stages).
# bwd_sweep_role<r>: the split backward sweep compiled for role r alone (ROLE = r, one launch per role;
# TUNING["bwd_split_launch"] = "per_role" in kernels.ssd), measured like bwd_sweep_split, whose binary
# holds all three roles (ROLE = -1).
MEASURED_KERNELS = ("upper_states", "sweep", "sweep_causal", "bwd_states", "bwd_sweep", "bwd_sweep_split",
                    "bwd_sweep_role0", "bwd_sweep_role1", "bwd_sweep_role2")


def _kernel_spec(kernel: str, dtype: str, BG: int, BV: int, BQ: int):
    """(jit function, pointer dtypes, constexprs) of one measured kernel variant; dtype in bf16/fp32/fp64,
    BG = pow2(N), BV = columns of V per program (backward: BP = pow2(P)), BQ = chunk."""
    import triton.language as tl_
    ptr = "*" + dtype
    vec = "*fp64" if dtype == "fp64" else "*fp32"
    acc = tl_.float64 if dtype == "fp64" else tl_.float32
    dec = tl_.float32 if dtype == "bf16" else tl_.float64  # as kernels.ssd._decay_dtype chooses
    common = dict(BQ=BQ, PREC="ieee" if dtype == "fp32" else "tf32", UPCAST=False, ACC=acc, DEC=dec)
    if kernel == "upper_states":
        return _upper_states_kernel, {"K": ptr, "LAM": vec, "V": ptr, "ST": ptr}, dict(
            UP_K=0, UP_U=0, VO=0, BG=BG, BV=BV, **common)
    if kernel in ("sweep", "sweep_causal"):
        up = kernel == "sweep"
        ptrs = {**{n: ptr for n in ("RL", "KL", "RU", "KU", "V", "ST", "O")}, "AL": vec, "AU": vec, "D": vec}
        return _sweep_kernel, ptrs, dict(
            LO_R=1, LO_K=0, LO_U=0, LO_V=1, LO_S=1, HAS_UP=up, UP_R=1, UP_K=0, UP_U=0, UP_V=1, UP_S=1,
            SHARED_GRAM=False, HAS_D=up, VO=0, BG=BG, BV=BV, **common)
    if kernel == "bwd_states":
        ptrs = {"C": ptr, "AL": vec, "DY": ptr, "GL": ptr, "BU": ptr, "AU": vec, "X": ptr, "HU": ptr}
        return _bwd_states_kernel, ptrs, dict(LO_S=1, PAIR=True, BN=BG, BP=BV, **common)
    if kernel in MEASURED_KERNELS and kernel.startswith("bwd_sweep"):
        role = int(kernel[-1]) if kernel.startswith("bwd_sweep_role") else -1
        ptrs = {**{n: ptr for n in ("X", "DY", "BL", "CL", "BU", "CU", "GL", "HU", "DX")},
                **{n: vec for n in ("AL", "AU", "D", "DBL", "DCL", "DBU", "DCU", "RS", "DDL")}}
        return _bwd_sweep_kernel, ptrs, dict(
            SPLIT=kernel != "bwd_sweep", ROLE=role, LO_S=1, HAS_UP=True, UP_S=1, SHARED_GRAM=False,
            COMBINE=False, JOINT_DY=False, HAS_D=True, AT_BL=True, AT_CL=True, AT_BU=True, AT_CU=True, BN=BG,
            BP=BV, **common)
    raise KeyError(f"kernel must be one of {MEASURED_KERNELS}, got {kernel!r}")


# Other variants of a kernel were checked at three sizes each (bf16 256/32/32, fp32 128/64/64, bf16
# 64/64/64; sweep: shared Gram, unshifted, no diagonal; causal; states: not paired, unshifted; backward
# sweeps: shared generators combined with joint dy, causal, plain stores): all within the largest variant
# except the split backward sweep with shared generators (+0.5 KiB at bf16 64/64/64). kernels.ssd keeps a
# margin for that kernel (and for warp counts other than the table's 4). Later, triton 3.6 on the current
# kernel: the split sweep with shared generators (SHARED_GRAM, COMBINE) exceeded its table rows at 13 of 75
# bf16 cells, all with BQ = BG, by up to 216 KiB (145 against 113 KiB at 64/64/64; see
# results/bench/scan-static-sm90.md). The backward sweep rows are now the maximum over those variants
# (_VARIANTS below).


def measure_shared_memory(kernel: str, dtype: str, BG: int, BV: int, BQ: int, num_warps: int = 4,
                          num_stages: int = 2, arch: int = 90, overrides: dict = None) -> int:
    """Bytes of shared memory one program of ``kernel`` (see :data:`MEASURED_KERNELS`) in its largest
    variant, with the constexprs in ``overrides`` changed, needs on CUDA ``sm_<arch>``, from an
    ahead-of-time compile stopped at shared-memory allocation (no GPU needed). Written against triton
    3.6's NVIDIA backend (its make_llir pass order)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton import knobs

    class _Lowered(Exception):
        pass

    def stop_at_allocation(backend, stages, options, language, capability):
        # The passes of the backend's make_llir up to shared-memory allocation, which sets "ttg.shared"
        # (what the launch later asks for); the LLVM lowering and optimization after it are skipped.
        from triton._C.libtriton import ir, nvidia, passes
        from triton.backends.nvidia.compiler import get_ptx_version_from_options

        def allocate(mod, metadata):
            pm = ir.pass_manager(mod.context)
            passes.ttgpuir.add_combine_tensor_select_and_if(pm)
            passes.ttgpuir.add_allocate_warp_groups(pm)
            passes.convert.add_scf_to_cf(pm)
            passes.gluon.add_inliner(pm)
            nvidia.passes.ttgpuir.add_allocate_shared_memory_nv(
                pm, capability, get_ptx_version_from_options(options, backend.target.arch))
            pm.run(mod, "allocate_shared_memory")
            raise _Lowered(mod.get_int_attr("ttg.shared"))
        stages["llir"] = allocate

    fn, ptrs, consts = _kernel_spec(kernel, dtype, BG, BV, BQ)
    consts = {**consts, **(overrides or {})}
    sig, cx, attrs = {}, {}, {}
    names = fn.arg_names
    for i, n in enumerate(names):
        if n in consts:
            sig[n], cx[n] = "constexpr", consts[n]
        elif n in ptrs:
            sig[n], attrs[(i,)] = ptrs[n], [["tt.divisibility", 16]]
        elif n.startswith("s") and i + 1 < len(names) and (names[i + 1] in ptrs or names[i + 1] == "B1"):
            sig[n], cx[n] = "constexpr", 1  # the last stride of each operand: a launch specializes 1
        else:
            sig[n], attrs[(i,)] = "i32", [["tt.divisibility", 16]]
    old = knobs.runtime.add_stages_inspection_hook
    knobs.runtime.add_stages_inspection_hook = stop_at_allocation
    try:
        triton.compile(ASTSource(fn, sig, cx, attrs), target=GPUTarget("cuda", arch, 32),
                       options=dict(num_warps=num_warps, num_stages=num_stages))
    except _Lowered as done:
        return int(done.args[0])
    finally:
        knobs.runtime.add_stages_inspection_hook = old
    raise RuntimeError("the compile did not reach shared-memory allocation")


def compiled_shared_memory() -> list:
    """What the scan kernels this process compiled on its GPU actually asked for, from Triton's JIT
    caches: one dict per compiled kernel with its block constexprs, warps, stages and ``shared`` bytes,
    to compare with the ahead-of-time table (kernels.ssd.SMEM_TABLE). Empty under the interpreter."""
    rows = []
    for fn in (_upper_states_kernel, _sweep_kernel, _bwd_states_kernel, _bwd_sweep_kernel):
        for cache in list(getattr(fn, "device_caches", {}).values()):
            for compiled in list(cache[0].values()):
                names = fn.arg_names
                consts = {names[k[0]]: v for k, v in getattr(compiled.src, "constants", {}).items()
                          if isinstance(k, tuple) and len(k) == 1}
                sig = getattr(compiled.src, "signature", {})
                blocks = {n: consts[n] for n in ("BQ", "BG", "BV", "BN", "BP", "HAS_UP", "SHARED_GRAM", "SPLIT",
                                                 "ROLE", "PAIR") if n in consts}
                rows.append(dict(kernel=fn.__name__, dtype=sig.get("V", sig.get("X", sig.get("K"))), **blocks,
                                 num_warps=compiled.metadata.num_warps, num_stages=compiled.metadata.num_stages,
                                 shared=compiled.metadata.shared))
    return rows


# Constexpr variants a table row takes the maximum over, beside the kernel's spec: the backward sweeps with
# generators shared by the two triangles (Hydra's layout: SHARED_GRAM, COMBINE; JOINT_DY when unshifted)
# can need more than the unshared spec (145 against 113 KiB for the split sweep at bf16 64/64/64).
_VARIANTS = {k: ({}, dict(SHARED_GRAM=True, COMBINE=True), dict(SHARED_GRAM=True, COMBINE=True, JOINT_DY=True))
             for k in MEASURED_KERNELS if k.startswith("bwd_sweep")}


def _measure_row(args):
    kernel, dtype, stages, BQ, BG, BVs, arch = args
    return args, [max(measure_shared_memory(kernel, dtype, BG, BV, BQ, 4, stages, arch, overrides=v)
                      for v in _VARIANTS.get(kernel, ({},))) for BV in BVs]


def _main(argv=None) -> None:
    """Print the shared-memory table (KiB, rounded up) in the format of kernels.ssd._SMEM_SM90."""
    import argparse
    import multiprocessing
    ap = argparse.ArgumentParser(description=_main.__doc__)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--kernels", nargs="+", default=list(MEASURED_KERNELS), choices=MEASURED_KERNELS,
                    help="measure only these kernels' rows (default: all)")
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp32", "fp64"], choices=["bf16", "fp32", "fp64"],
                    help="measure only these dtypes' rows (default: all)")
    a = ap.parse_args(argv)
    gens = (16, 32, 64, 128, 256)
    rows = []
    for kernel in a.kernels:
        bwd = kernel.startswith("bwd")
        for dtype in a.dtypes:
            for stages in ((2,) if bwd or kernel == "sweep_causal" else (2, 3)):
                for BQ in (16, 32, 64):
                    for BG in gens:
                        rows.append((kernel, dtype, stages, BQ, BG, gens if bwd else gens[:-1], a.arch))
    with multiprocessing.Pool(a.jobs) as pool:
        for (kernel, dtype, stages, BQ, BG, _, _), sizes in pool.imap(_measure_row, rows):
            print(f"{kernel} {dtype} {stages} {BQ} {BG}: " + " ".join(str(-(-s // 1024)) for s in sizes))


if __name__ == "__main__":
    _main()
