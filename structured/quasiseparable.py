"""Quasiseparable matrices: Hydra's bidirectional SSM (a forward SSM, a backward SSM and a free diagonal).

    QS(x) = shift(SS_fwd(x)) + flip(shift(SS_bwd(flip(x)))) + delta * x

with ``shift`` the one-step delay (row 0 zero). Entries (0-based, i = row, j = column), shift=True:

    m_ij = c_{i-1} . b_j   exp(sum_{t=j+1..i-1} log_a_t)    (i > j)
    m_ii = delta_i
    m_ij = c'_{i+1} . b'_j exp(sum_{t=i+1..j-1} log_a'_t)   (i < j)

shift=False (the addition-based bidirectional SSM, "add" in Table 3 of the Hydra paper):

    m_ij = c_i . b_j exp(sum_{t=j+1..i} log_a_t) (i > j),  m_ij = c'_i . b'_j exp(sum_{t=i..j-1} log_a'_t) (i < j),
    m_ii = c_i . b_i + c'_i . b'_i + delta_i                (a diagonal tied to the generators).

Reference: Hwang, Lahoti, Dao, Gu, "Hydra: Bidirectional State Space Models Through Generalized Matrix
Mixers", NeurIPS 2024 (arXiv 2407.09941), Section 3; the shift makes the diagonal independent of b, c
(goombalab/hydra issue #2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import properties as P
from . import register
from .base import (HALF_DTYPES, StructuredMatrix, StructureReport, broadcast_batch, check_tensor, compute_dtype, promote,
                   rand, randn, torch_algorithm)
from .semiseparable import (_check_generators, causal_decays, half_kernel_dtype, passed_states, semiseparable_dense,
                            ssd_product)


def _scaled(b: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The generator ``b_j * scale_j`` (``b`` itself without a scale)."""
    return b if scale is None else b * scale[..., None]


def _delay(y: torch.Tensor) -> torch.Tensor:
    """One-step delay along the sequence dim -2: out[0] = 0, out[i] = y[i-1]."""
    return F.pad(y[..., :-1, :], (0, 0, 1, 0))


def qs_chunk_parallel(x: torch.Tensor, b: torch.Tensor, c: torch.Tensor, log_a: torch.Tensor, delta: torch.Tensor,
                      b_bwd: torch.Tensor, c_bwd: torch.Tensor, log_a_bwd: torch.Tensor, shift: bool = True,
                      chunk_size: int = 64, b_scale: torch.Tensor | None = None,
                      b_bwd_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Quasiseparable product with both directions in one chunk-parallel pass (the GPU form).

    x ``(*batch, L, P)``; b, c, b_bwd, c_bwd ``(*batch, L, N)``; log_a, log_a_bwd, delta and the optional column
    scales b_scale, b_bwd_scale ``(*batch, L)`` (log-decays <= 0, not checked). Batch dims broadcast (generators
    shared by the heads are never expanded). Returns ``(*batch, L, P)`` in the promoted dtype; the entries are
    those of :class:`Quasiseparable` with generators ``b * b_scale``, ``b_bwd * b_bwd_scale``.

    The SSD algorithm (arXiv 2405.21060, Section 6) in the sequence's own order, for both directions at once:
    within each chunk of Q positions one ``Q x Q`` matrix holds the lower (forward) and upper (backward) parts,
    ``(R_f B_f^T) o E_f + (R_b B_b^T) o E_b``, and one product applies it; chunk states run left to right
    (forward) and right to left (backward), each a product with the ``(n_chunks x n_chunks)`` matrix of
    decays between chunks. The shift is folded into the row generators (``R_f[i] = c[i-1]``,
    ``R_b[i] = c_bwd[i+1]``) and the decays, so no pass is flipped or delayed afterwards. The column scales
    enter with the decays, so ``C B^T`` is formed at the generators' batch shape (once for all heads when B, C
    are shared by them), and once for both directions when they share b and c (passed as the same objects:
    the shifted Grams are then row shifts of one). Half-precision
    operands stay half in the products; decays are formed in float32 (float64 for float64 inputs).
    Cost O(L Q (N + P) + L N P + (L/Q)^2 N P) flops, O(L Q + (L/Q) N P) memory per batch element. With
    ``chunk_size >= L`` one chunk holds the sequence and no states are formed: the quadratic form, O(L^2 (N + P)).
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    gens = (b, c, b_bwd, c_bwd)
    scales = [t for t in (b_scale, b_bwd_scale) if t is not None]
    out_dtype = promote(x, *gens, log_a, log_a_bwd, delta, *scales)
    mdt = promote(x, *gens) if all(t.dtype in HALF_DTYPES for t in (x, *gens)) else compute_dtype(out_dtype)
    ddt = torch.promote_types(compute_dtype(out_dtype), compute_dtype(promote(log_a, log_a_bwd, *scales)))
    s = 1 if shift else 0
    L = x.shape[-2]
    Q = min(chunk_size, L)
    pad = (-L) % Q
    nc = (L + pad) // Q

    def rows(t, lead=0, trail=0):  # (..., L', D) -> zero-padded to whole chunks -> (..., nc, Q, D)
        t = F.pad(t.to(mdt), (0, 0, lead, trail + pad))
        return t.reshape(*t.shape[:-2], nc, Q, t.shape[-1])

    def vec(t):  # (..., L) -> (..., nc, Q) in the decay dtype; zero log-decay on the padding
        return F.pad(t.to(ddt), (0, pad)).reshape(*t.shape[:-1], nc, Q)

    def suffix_sums(lc):  # sum_{t=i..Q-1} lc_t within each chunk, as a direct (reversed) cumulative sum
        return lc.flip(-1).cumsum(-1).flip(-1)

    one_gram = b_bwd is b and c_bwd is c
    xc, bf = rows(x), rows(b)
    bb = bf if b_bwd is b else rows(b_bwd)
    # Row generators carry the shift: forward row i reads c[i-1], backward row i reads c_bwd[i+1] (across
    # chunk borders: a chunk's first forward row reads the previous chunk's last c); zero beyond the ends.
    rf = rows(c[..., :L - s, :], lead=s)
    rb = rows(c_bwd[..., s:, :], trail=s)
    lf, lb = vec(log_a), vec(log_a_bwd)
    sf = None if b_scale is None else vec(b_scale)
    sb = None if b_bwd_scale is None else vec(b_bwd_scale)

    # 1. within chunks: the lower (forward) and upper (backward) parts in one matrix, one product; the column
    #    scales ride on the decays
    e_f = causal_decays(lf, shift)
    e_b = causal_decays(lb.flip(-1), shift).flip(-1, -2)
    if sf is not None:
        e_f = e_f * sf[..., None, :]
    if sb is not None:
        e_b = e_b * sb[..., None, :]
    if one_gram:  # R_f B^T and R_b B^T are row shifts of C B^T within a chunk; the rows they lack are masked
        g = rows(c) @ bf.transpose(-1, -2)
        g_f, g_b = (F.pad(g[..., :-1, :], (0, 0, 1, 0)), F.pad(g[..., 1:, :], (0, 0, 0, 1))) if shift else (g, g)
    else:
        g_f, g_b = rf @ bf.transpose(-1, -2), rb @ bb.transpose(-1, -2)
    m = g_f * e_f + g_b * e_b
    y = m.to(mdt) @ xc                                                          # (..., nc, Q, P)
    if nc > 1:  # with one chunk holding the whole sequence the matrix above is all of M's off-diagonal part
        # 2. chunk states: forward S_k = sum_j exp(sum_{t=j+1..Q-1} l_t) b_j x_j^T (decay to the chunk's end),
        #    backward S'_k = sum_j exp(sum_{t=0..j-1} l'_t) b'_j x_j^T (decay from the chunk's start)
        pre_f, suf_f = lf.cumsum(-1), suffix_sums(lf)
        pre_b, suf_b = lb.cumsum(-1), suffix_sums(lb)
        to_end = torch.exp(F.pad(suf_f[..., 1:], (0, 1)))
        from_start = torch.exp(F.pad(pre_b[..., :-1], (1, 0)))
        if sf is not None:
            to_end = to_end * sf
        if sb is not None:
            from_start = from_start * sb
        s_f = bf.transpose(-1, -2) @ (xc * to_end[..., None].to(mdt))              # (..., nc, N, P)
        s_b = bb.transpose(-1, -2) @ (xc * from_start[..., None].to(mdt))
        # 3. the state entering each chunk: from the left (forward); from the right (backward: the same pass
        #    over the chunks in reverse order)
        h_f = passed_states(s_f, pre_f[..., -1])
        h_b = passed_states(s_b.flip(-3), pre_b[..., -1].flip(-1)).flip(-3)
        # 4. state -> output: forward row i decays by exp(sum_{t=0..i-s} l_t), backward by exp(sum_{t=i+s..Q-1} l'_t)
        out_f = torch.exp(F.pad(pre_f[..., :Q - s], (s, 0)))
        out_b = torch.exp(F.pad(suf_b[..., s:], (0, s)))
        y = y + (rf @ h_f) * out_f[..., None].to(mdt) + (rb @ h_b) * out_b[..., None].to(mdt)
    y = y.reshape(*y.shape[:-3], nc * Q, y.shape[-1])[..., :L, :]
    return (y.to(compute_dtype(out_dtype)) + delta[..., None].to(ddt) * x).to(out_dtype)


@register("quasiseparable")
class Quasiseparable(StructuredMatrix):
    """N-quasiseparable matrix of Hydra's bidirectional SSM (see the module docstring for entries).

    Parameters
    ----------
    b, c : ``(*batch, L, N)`` forward generators.
    log_a : ``(*batch, L)`` forward log-decays, <= 0.
    delta : ``(*batch, L)`` diagonal (added to the tied diagonal when shift=False).
    b_bwd, c_bwd, log_a_bwd : backward generators, same shapes; default to the forward ones (Hydra's
        quasiseparable mixer shares B, C between directions; the Hydra module does not).
    shift : True for Hydra's matrix (free diagonal), False for the addition-based bidirectional SSM.
    validate : check log_a, log_a_bwd <= 0 (ValueError otherwise); False skips the check.
    b_scale, b_bwd_scale : optional ``(*batch, L)`` column scales: the generators are ``b_j * b_scale_j`` and
        ``b'_j * b_bwd_scale_j`` (Mamba's step ``dt``: b = B dt with B shared by the heads and dt per head, so
        the GPU path forms ``C B^T`` once for all heads). ``b_bwd_scale`` defaults to ``b_scale`` when ``b_bwd``
        defaults to ``b``.

    ``order`` is N. Fast product, O(L Q (N + P) + L N P) flops, no L x L tensor: on the CPU two chunked SSD
    passes (:func:`structured.semiseparable.ssd_chunked`), the backward one on the flipped sequence, then the
    shifts and delta * x; on CUDA the fused Triton scan ``kernels.quasiseparable_matmul`` (eager), or
    :func:`qs_chunk_parallel` (under ``torch.compile``, which fuses it, or without Triton). Defining property: every
    submatrix strictly below or strictly above the diagonal has rank <= N; the diagonal is free
    (:func:`structured.properties.quasiseparable_order`).
    """

    property_name = "quasiseparable order (lower, upper) <= N, diagonal free"
    chunk_size = 64

    def __init__(self, b: torch.Tensor, c: torch.Tensor, log_a: torch.Tensor, delta: torch.Tensor,
                 b_bwd: torch.Tensor | None = None, c_bwd: torch.Tensor | None = None,
                 log_a_bwd: torch.Tensor | None = None, shift: bool = True, validate: bool = True, *,
                 b_scale: torch.Tensor | None = None, b_bwd_scale: torch.Tensor | None = None):
        if not isinstance(shift, bool):
            raise ValueError(f"shift must be a bool, got {shift!r}")
        _check_generators(b, c, log_a, validate)
        L, N = b.shape[-2:]
        for name, t in (("delta", delta), ("b_scale", b_scale), ("b_bwd_scale", b_bwd_scale)):
            if t is None and name != "delta":
                continue
            check_tensor(name, t, trailing=(None,))
            if t.shape[-1] != L:
                raise ValueError(f"{name} must have shape (*batch, L) with L={L} (from b); got shape {tuple(t.shape)}")
        shared = b_bwd is None and c_bwd is None and log_a_bwd is None and b_bwd_scale is None
        if b_bwd is None and b_bwd_scale is None:
            b_bwd_scale = b_scale  # the backward generator defaults to the forward one, scale included
        b_bwd = b if b_bwd is None else b_bwd
        c_bwd = c if c_bwd is None else c_bwd
        log_a_bwd_given = log_a_bwd is not None
        log_a_bwd = log_a if log_a_bwd is None else log_a_bwd
        _check_generators(b_bwd, c_bwd, log_a_bwd, validate and log_a_bwd_given, suffix="_bwd")
        if b_bwd.shape[-2:] != (L, N):
            raise ValueError(f"b_bwd and c_bwd must have shape (*batch, L={L}, N={N}) like b; "
                             f"got b_bwd {tuple(b_bwd.shape)}, c_bwd {tuple(c_bwd.shape)}")
        if log_a_bwd.shape[-1] != L:
            raise ValueError(f"log_a_bwd must have shape (*batch, L={L}); got shape {tuple(log_a_bwd.shape)}")
        scales = {name: (t, 1) for name, t in (("b_scale", b_scale), ("b_bwd_scale", b_bwd_scale)) if t is not None}
        batch = broadcast_batch(b=(b, 2), c=(c, 2), log_a=(log_a, 1), delta=(delta, 1), b_bwd=(b_bwd, 2),
                                c_bwd=(c_bwd, 2), log_a_bwd=(log_a_bwd, 1), **scales)
        dtype = promote(b, c, log_a, delta, b_bwd, c_bwd, log_a_bwd, *(t for t, _ in scales.values()))
        super().__init__(L, batch, dtype, b.device, N)
        self.b, self.c, self.log_a, self.delta = b, c, log_a, delta
        self.b_bwd, self.c_bwd, self.log_a_bwd = b_bwd, c_bwd, log_a_bwd
        self.b_scale, self.b_bwd_scale = b_scale, b_bwd_scale
        self.shift = shift
        self.shared = shared

    # ---------------------------------------------------------------------------------- explicit
    def to_dense(self) -> torch.Tensor:
        """Materialize from segment sums (exp of non-positive numbers only). ``(*batch, L, L)``."""
        dt = compute_dtype(self.dtype)
        b, b_bwd = _scaled(self.b, self.b_scale).to(dt), _scaled(self.b_bwd, self.b_bwd_scale).to(dt)
        lower = semiseparable_dense(b, self.c.to(dt), self.log_a.to(dt))
        # The backward SSM is a causal SSM on the flipped sequence: flip its matrix back on both axes.
        flipped = semiseparable_dense(b_bwd.flip(-2), self.c_bwd.to(dt).flip(-2), self.log_a_bwd.to(dt).flip(-1))
        if self.shift:
            # Delay both passes (row i takes row i-1); the backward one in flipped coordinates.
            lower, flipped = _delay(lower), _delay(flipped)
        M = lower + flipped.flip(-1, -2)
        return M + torch.diag_embed(self.delta.to(dt))  # broadcasts: delta may carry more batch dims

    # ---------------------------------------------------------------------------------- fast
    def _generators(self, dtype, batch):
        L, N = self.length, self.order

        vdt = compute_dtype(dtype)  # decays and the diagonal stay in (at least) float32

        def ex(t, trailing, dt=dtype):
            return t.to(dt).expand(*batch, *trailing)

        b, c, log_a = ex(_scaled(self.b, self.b_scale), (L, N)), ex(self.c, (L, N)), ex(self.log_a, (L,), vdt)
        if self.shared:
            b_bwd, c_bwd, log_a_bwd = b, c, log_a
        else:
            b_bwd, c_bwd = ex(_scaled(self.b_bwd, self.b_bwd_scale), (L, N)), ex(self.c_bwd, (L, N))
            log_a_bwd = ex(self.log_a_bwd, (L,), vdt)
        return b, c, log_a, ex(self.delta, (L,), vdt), b_bwd, c_bwd, log_a_bwd

    def _fast_dtype(self, x: torch.Tensor, out_dtype: torch.dtype) -> torch.dtype:
        gens = (self.b, self.c) if self.shared else (self.b, self.c, self.b_bwd, self.c_bwd)
        return half_kernel_dtype(x, gens, out_dtype)

    def _fast_matmul(self, x: torch.Tensor) -> torch.Tensor:
        import kernels
        if kernels.enabled(x, compile_prefers_torch=True):
            b, c, log_a, delta, b_bwd, c_bwd, log_a_bwd = self._generators(x.dtype, x.shape[:-2])
            # Shared generators are passed as the same objects (b_bwd is b), so a kernel may share C B^T.
            return kernels.quasiseparable_matmul(x, b, c, log_a, delta, b_bwd, c_bwd, log_a_bwd, self.shift)
        product = torch_algorithm(qs_chunk_parallel)
        if x.is_cuda or product is not qs_chunk_parallel or torch.compiler.is_compiling():
            # Every chunk and both directions at once: few large products, no Python loop over chunks (what
            # compile traces and fuses on any device; eager on the CPU keeps the blocked form below).
            dt, vdt = x.dtype, compute_dtype(x.dtype)  # generators in x's dtype; decays, scales, diagonal >= float32
            b, c = self.b.to(dt), self.c.to(dt)  # a generator both directions share stays one object
            b_bwd = b if self.b_bwd is self.b else self.b_bwd.to(dt)
            c_bwd = c if self.c_bwd is self.c else self.c_bwd.to(dt)
            scale = (None if t is None else t.to(vdt) for t in (self.b_scale, self.b_bwd_scale))
            return product(x, b, c, self.log_a.to(vdt), self.delta.to(vdt), b_bwd, c_bwd,
                           self.log_a_bwd.to(vdt), self.shift, self.chunk_size, *scale)
        b, c, log_a, delta, b_bwd, c_bwd, log_a_bwd = self._generators(x.dtype, x.shape[:-2])
        # On the CPU: the backward SSM is a causal SSM on the flipped sequence, each pass in cache-sized blocks
        # of chunks. (Two calls rather than one on stacked directions: stacking copies every tensor, which
        # costs more than it saves on the CPU.)
        fwd = ssd_product(x, b, c, log_a, chunk_size=self.chunk_size)
        bwd = ssd_product(x.flip(-2), b_bwd.flip(-2), c_bwd.flip(-2), log_a_bwd.flip(-1), chunk_size=self.chunk_size)
        if self.shift:
            fwd, bwd = _delay(fwd), _delay(bwd)
        return fwd + bwd.flip(-2) + delta[..., None] * x

    # ---------------------------------------------------------------------------------- property
    def check_structure(self, tol: float | None = None) -> StructureReport:
        D = self.to_dense()
        tol = P.default_tol(D.dtype) if tol is None else tol
        lower, upper = P.quasiseparable_order(D, tol)
        lo = int(lower.max()) if lower.numel() else 0
        up = int(upper.max()) if upper.numel() else 0
        return P.report(self.name, self.property_name, torch.maximum(lower, upper), self.order, tol,
                        detail=f"lower order {lo}, upper order {up} (bound {self.order} each)")

    @classmethod
    def random(cls, length, batch_shape=(), order=None, dtype=None, device=None, generator=None):
        """Hydra-like instance with separate backward generators: b, c ~ N(0, 1/N), log_a ~ -U(0, 0.5),
        delta ~ N(0, 1); shift=True."""
        L, batch, N, dtype = cls._random_args(length, batch_shape, order, dtype, default_order=4)

        def gen():
            return (randn((*batch, L, N), dtype, device, generator) / N ** 0.5,
                    randn((*batch, L, N), dtype, device, generator) / N ** 0.5,
                    -0.5 * rand((*batch, L), dtype, device, generator))

        b, c, log_a = gen()
        b_bwd, c_bwd, log_a_bwd = gen()
        delta = randn((*batch, L), dtype, device, generator)
        return cls(b, c, log_a, delta, b_bwd, c_bwd, log_a_bwd, shift=True)
