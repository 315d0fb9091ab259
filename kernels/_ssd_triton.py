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
    LO_S: tl.constexpr, HAS_UP: tl.constexpr, BQ: tl.constexpr, BN: tl.constexpr, BP: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr, DEC: tl.constexpr,
):
    """Right-to-left, one program per batch element: stores per chunk G_lo (lower adjoint state,
    ``sum exp(span) c_m dy[m+S_lo]^T``) and, with an upper triangle, H_up (upper state, ``sum exp(span) b'_j x_j^T``)
    entering it from the right, both in one loop (two independent dependency chains in one program: one wave
    of programs instead of two)."""
    pid = tl.program_id(0)
    b0 = (pid // B1).to(tl.int64)
    b1 = (pid % B1).to(tl.int64)
    vc = tl.arange(0, BP)
    off = pid.to(tl.int64) * n_chunks * N * P
    # Lower adjoint: span start(c+1)..m is the inclusive prefix of lam up to m, i.e. U = 1.
    if HAS_UP:
        _state_sweep_pair(C, sc0, sc1, scl, scd, AL, sal0, sal1, sall, DY, sy0, sy1, syl, syd, GL + off,
                          BU, sbu0, sbu1, sbul, sbud, AU, sau0, sau1, saul, X, sx0, sx1, sxl, sxd, HU + off,
                          b0, b1, vc, seqlen, N, P, n_chunks, U=1, VO=LO_S, U2=0, VO2=0,
                          BQ=BQ, BG=BN, BV=BP, PREC=PREC, UPCAST=UPCAST, ACC=ACC, DEC=DEC)
    else:
        _state_sweep(C, sc0, sc1, scl, scd, AL, sal0, sal1, sall, DY, sy0, sy1, syl, syd, GL + off,
                     b0, b1, vc, seqlen, N, P, n_chunks, KO=0, U=1, VO=LO_S,
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
    ROLE: tl.constexpr,
    LO_S: tl.constexpr, HAS_UP: tl.constexpr, UP_S: tl.constexpr, SHARED_GRAM: tl.constexpr,
    COMBINE: tl.constexpr, JOINT_DY: tl.constexpr, HAS_D: tl.constexpr,
    AT_BL: tl.constexpr, AT_CL: tl.constexpr, AT_BU: tl.constexpr, AT_CU: tl.constexpr,
    BQ: tl.constexpr, BN: tl.constexpr, BP: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    ACC: tl.constexpr, DEC: tl.constexpr,
):
    """Left-to-right gradient sweep over one batch element (grid: the batch elements), computing the part of
    the gradient of its ROLE, each role compiled and launched on its own: 0 (dx and the diagonal's gradient;
    uses G_lo stored, G_up carried), 1 (db, db' and their row dots; G_lo stored, G_up carried) or 2 (dc, dc' and
    their row dots; H_up stored, H_lo carried). A role carries one state and about a third of the tiles, so
    each binary is sized to its own shared memory and registers.
    Row dots go out as running sums RS[0] = sum_{i<t} c.dc, RS[1] = sum_{i<t} b.db,
    RS[2] = sum_{i<=t} c'.dc', RS[3] = sum_{i<=t} b'.db' (see the comment above)."""
    pid = tl.program_id(0)
    b0 = (pid // B1).to(tl.int64)
    b1 = (pid % B1).to(tl.int64)
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
    n_rows = tl.num_programs(0).to(tl.int64) * seqlen  # one slab of RS
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
        if ROLE != 2:  # dx and db read G_lo and carry G_up
            g_lo = tl.load(GL + st_off + c * N * P + st_idx, mask=st_mask, other=0.0).to(dt)
        if ROLE != 0:  # db and dc use S = dy x^T
            xt = _load_rows(X, sx0, sx1, sxl, sxd, b0, b1, rows, gp, seqlen, P).to(dt)
            sc = _dot(dyl, tl.trans(xt), PREC, UPCAST, ACC)
            ws_lo = w * sc
            if HAS_UP:
                if JOINT_DY:
                    ws_up = w_u * sc
                else:
                    ws_up = w_u * _dot(dyu, tl.trans(xt), PREC, UPCAST, ACC)
        if ROLE == 0:
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
        if ROLE == 1:
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
        if ROLE == 2:
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
            if ROLE != 2:  # dx and db read G_lo and carry G_up
                g_up = g_up * tl.exp(tot_u.to(ACC)) + _dot(tl.trans((cu.to(ACC) * rdec_in[:, None]).to(dt)), dyu,
                                                   PREC, UPCAST, ACC)
