"""Semiseparable matrices (the matrix a causal SSM with scalar decay computes; Mamba-2's SSD).

    m_ij = c_i . b_j * exp(sum_{t=j+1..i} log_a_t)   for i >= j,      m_ij = 0   for i < j.

Module functions (same signature, fla-style):

* :func:`ssd_scan` -- the sequential recurrence h_t = a_t h_{t-1} + b_t x_t^T, y_t = h_t^T c_t.
  O(L N P) flops, depth L. The short exact reference.
* :func:`ssd_chunked` -- the chunked SSD algorithm (Dao & Gu, "Transformers are SSMs", arXiv 2405.21060,
  Listing 1 / Section 6): intra-chunk masked ``C B^T`` products, chunk states, a recurrence over
  chunk states, state-to-output. O(L Q (N + P) + L N P) flops, cache-sized blocks of chunks,
  never an L x L tensor. Used by :class:`Semiseparable` as its fast product.

Numerics: only non-positive numbers are ever exponentiated, and segment sums are formed directly
(masked cumulative sums), never as differences of one long cumulative sum: such differences lose
absolute precision and can round to slightly positive values (state-spaces/mamba PR #713). The
tempting split exp(cumsum_i) * exp(-cumsum_j) overflows once |sum log_a| > ~88 in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import properties as P
from . import register
from .base import (HALF_DTYPES, StructuredMatrix, StructureReport, block_slices, broadcast_batch, check_tensor, compute_dtype,
                   promote, rand, randn, torch_algorithm)


def segsum(log_a: torch.Tensor) -> torch.Tensor:
    """Segment sums ``S[..., i, j] = sum_{t=j+1..i} log_a[..., t]`` for i >= j, 0 above the diagonal.

    log_a: ``(*batch, L)`` -> ``(*batch, L, L)``. Each entry is a masked cumulative sum of the
    original values (not a difference of cumulative sums), so for log_a <= 0 every entry is <= 0
    exactly in floating point. O(L^2) memory: used on chunks and in the explicit references.
    """
    L = log_a.shape[-1]
    strict_upper = torch.ones(L, L, dtype=torch.bool, device=log_a.device).triu(1)
    # rep[..., j, t] = log_a_t where t > j, else 0; its cumulative sum over t (the contiguous dim) at t = i
    # is the segment sum S[i, j].
    rep = log_a[..., None, :].expand(*log_a.shape[:-1], L, L).masked_fill(~strict_upper, 0)
    return rep.cumsum(dim=-1).transpose(-1, -2)


def causal_decays(log_a: torch.Tensor, shift: bool = False) -> torch.Tensor:
    """``E[..., i, j] = exp(sum_{t=j+1..i-s} log_a_t)`` for j <= i - s, else 0 (s = 1 with ``shift``: the decays
    of the one-step-delayed causal pass). ``(*batch, L)`` -> ``(*batch, L, L)``, from segment sums (no exp of a
    positive number, so strong decay gives exact zeros, not inf * 0)."""
    seg = segsum(log_a)
    L = log_a.shape[-1]
    if shift:  # row i takes the sums of row i - 1
        seg = F.pad(seg[..., :-1, :], (0, 0, 1, 0))
    keep = torch.ones(L, L, dtype=torch.bool, device=log_a.device).tril(-1 if shift else 0)
    return torch.exp(seg).masked_fill(~keep, 0)


def passed_states(states: torch.Tensor, totals: torch.Tensor) -> torch.Tensor:
    """The state entering each chunk from the left, ``H_k = sum_{k' < k} exp(sum totals_{k'+1..k-1}) S_k'``: one
    product with the ``(n_chunks x n_chunks)`` matrix of decays between chunks. states ``(..., nc, N, P)``,
    totals ``(..., nc)`` (each chunk's summed log-decay) -> ``(..., nc, N, P)`` in the dtype of ``states``."""
    nc, N, P = states.shape[-3:]
    between = causal_decays(totals).to(states.dtype)
    passed = between @ states.reshape(*states.shape[:-2], N * P)  # the state after chunk k
    return F.pad(passed[..., :-1, :], (0, 0, 1, 0)).reshape(states.shape)


def _check_ssd_args(x, b, c, log_a) -> torch.Size:
    """Validate shapes for the SSD functions; returns the broadcast batch shape."""
    check_tensor("x", x, trailing=(None, None))
    check_tensor("b", b, trailing=(None, None))
    check_tensor("c", c, trailing=(None, None))
    check_tensor("log_a", log_a, trailing=(None,))
    L = x.shape[-2]
    for name, t, got in (("b", b, b.shape[-2]), ("c", c, c.shape[-2]), ("log_a", log_a, log_a.shape[-1])):
        if got != L:
            raise ValueError(f"{name} has length {got} (shape {tuple(t.shape)}) but x has length L={L}; "
                             f"expected b, c (*batch, L, N), log_a (*batch, L)")
    if b.shape[-1] != c.shape[-1]:
        raise ValueError(f"b and c must have the same state size N; got b {tuple(b.shape)}, c {tuple(c.shape)}")
    return broadcast_batch(x=(x, 2), b=(b, 2), c=(c, 2), log_a=(log_a, 1))


def _prepare(x, b, c, log_a):
    """Broadcast to a common batch shape and cast to the compute dtype (half -> float32)."""
    batch = _check_ssd_args(x, b, c, log_a)
    out_dtype = promote(x, b, c, log_a)
    cdt = compute_dtype(out_dtype)
    L, N, Pdim = x.shape[-2], b.shape[-1], x.shape[-1]
    x = x.to(cdt).expand(*batch, L, Pdim)
    b = b.to(cdt).expand(*batch, L, N)
    c = c.to(cdt).expand(*batch, L, N)
    log_a = log_a.to(cdt).expand(*batch, L)
    return x, b, c, log_a, out_dtype


def ssd_scan(x: torch.Tensor, b: torch.Tensor, c: torch.Tensor, log_a: torch.Tensor) -> torch.Tensor:
    """Semiseparable product by the sequential recurrence (reference).

    h_t = exp(log_a_t) h_{t-1} + b_t x_t^T  (h is N x P),   y_t = h_t^T c_t.

    x: ``(*batch, L, P)``; b, c: ``(*batch, L, N)``; log_a: ``(*batch, L)`` (<= 0 for a stable
    recurrence; not checked here). Batch dims broadcast. Returns ``(*batch, L, P)`` in the promoted
    dtype (half precision accumulates in float32). O(L N P) flops, O(N P) state, L sequential steps.
    """
    x, b, c, log_a, out_dtype = _prepare(x, b, c, log_a)
    a = torch.exp(log_a)
    h = x.new_zeros(*x.shape[:-2], b.shape[-1], x.shape[-1])
    ys = []
    for t in range(x.shape[-2]):
        h = a[..., t, None, None] * h + b[..., t, :, None] * x[..., t, None, :]
        ys.append((c[..., t, :, None] * h).sum(-2))
    return torch.stack(ys, dim=-2).to(out_dtype)


def _ssd_chunks(x, b, c, log_a, h, Q: int):
    """Chunked SSD on a span of whole chunks (length a multiple of Q) entered with state ``h`` (N x P).

    Returns the span's outputs and the state after it. See :func:`ssd_chunked` for the steps.
    """
    batch = x.shape[:-2]
    n_chunks = x.shape[-2] // Q
    xc = x.reshape(*batch, n_chunks, Q, x.shape[-1])
    bc = b.reshape(*batch, n_chunks, Q, b.shape[-1])
    cc = c.reshape(*batch, n_chunks, Q, c.shape[-1])
    lc = log_a.reshape(*batch, n_chunks, Q)

    decay = causal_decays(lc)                                   # (..., nc, Q, Q)

    # 1. diagonal blocks
    y = ((cc @ bc.transpose(-1, -2)) * decay) @ xc               # (..., nc, Q, P)

    # 2. chunk states; the last row of decay holds exp(sum_{u=s+1..Q-1} log_a_u)
    to_end = decay[..., Q - 1, :]                               # (..., nc, Q)
    states = (bc * to_end[..., None]).transpose(-1, -2) @ xc    # (..., nc, N, P)

    # 3. recurrence over chunk states: carried[k] is the state entering chunk k
    chunk_decay = torch.exp(lc.sum(-1))                         # (..., nc), <= 1
    carried = [h]
    for k in range(n_chunks):
        carried.append(chunk_decay[..., k, None, None] * carried[-1] + states[..., k, :, :])
    h_prev = torch.stack(carried[:-1], dim=-3)                  # (..., nc, N, P)

    # 4. state -> output, with exp(sum_{u=0..t} log_a_u) from the chunk start
    from_start = torch.exp(lc.cumsum(-1))                       # (..., nc, Q), <= 1
    y = y + (cc @ h_prev) * from_start[..., None]
    return y.reshape(*batch, n_chunks * Q, x.shape[-1]), carried[-1]


def ssd_chunked(x: torch.Tensor, b: torch.Tensor, c: torch.Tensor, log_a: torch.Tensor,
                chunk_size: int = 64) -> torch.Tensor:
    """Semiseparable product by the chunked SSD algorithm (Mamba-2; arXiv 2405.21060, Section 6).

    x: ``(*batch, L, P)``; b, c: ``(*batch, L, N)``; log_a: ``(*batch, L)`` (<= 0; not checked here).
    Batch dims broadcast. Returns ``(*batch, L, P)`` in the promoted dtype (half precision
    accumulates in float32). Any L: a ragged last chunk is padded with x = 0, log_a = 0, which leaves
    the outputs of the real positions unchanged.

    Steps, with Q = chunk_size and per-chunk cumulative sums l_t of log_a:
    1. intra-chunk: Y_diag = (exp(segsum) o C B^T) X on each Q x Q diagonal block;
    2. chunk states: S_c = sum_s exp(sum_{u=s+1..end} log_a_u) b_s x_s^T;
    3. recurrence over chunks: H_c = exp(sum of log_a over chunk c) H_{c-1} + S_c;
    4. state to output: Y_off[t] = exp(l_t) c_t^T H_{c-1}.
    Cost O(L Q (N + P) + L N P) flops; L/Q sequential steps in (3). The chunks are processed in
    blocks of about ``structured.base.BLOCK_ELEMENTS / (batch * Q)`` positions, the state carried from
    block to block, so temporaries take O(block * Q) memory whatever L (plus the O(L P) output).
    Only exponentials of non-positive numbers are taken.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    x, b, c, log_a, out_dtype = _prepare(x, b, c, log_a)
    L = x.shape[-2]
    Q = min(chunk_size, L)
    pad = (-L) % Q
    if pad:
        # Zero inputs and zero log-decay on the padded tail: they add nothing to real outputs.
        x = F.pad(x, (0, 0, 0, pad))
        b = F.pad(b, (0, 0, 0, pad))
        c = F.pad(c, (0, 0, 0, pad))
        log_a = F.pad(log_a, (0, pad))
    # Blocks of whole chunks keep the (chunks, Q, Q) temporaries cache-sized: time ~ linear in L and
    # extra memory independent of L; the state carried between blocks makes the result identical.
    batch = x.shape[:-2]
    per_position = max(1, batch.numel()) * Q
    h = x.new_zeros(*batch, b.shape[-1], x.shape[-1])
    ys = []
    for blk in block_slices(L + pad, per_position, multiple=Q, device=x.device):
        y_blk, h = _ssd_chunks(x[..., blk, :], b[..., blk, :], c[..., blk, :], log_a[..., blk], h, Q)
        ys.append(y_blk)
    y = torch.cat(ys, dim=-2)[..., :L, :]
    return y.to(out_dtype)


def ssd_chunk_parallel(x: torch.Tensor, b: torch.Tensor, c: torch.Tensor, log_a: torch.Tensor,
                       chunk_size: int = 64) -> torch.Tensor:
    """Semiseparable product by the chunked SSD algorithm with every chunk in parallel (the GPU form).

    Same signature and result as :func:`ssd_chunked`; the four steps run on all chunks at once, and the
    recurrence over chunk states (step 3) is one product with the ``(n_chunks x n_chunks)`` matrix of
    decays between chunks, ``exp(segsum(chunk totals))``, as in Mamba-2's minimal SSD. Batch dims broadcast
    in the products (a ``c`` shared by all heads is never expanded). Half-precision ``x``, ``b``, ``c``
    stay half in the products (tensor cores, float32 accumulation); decays are formed in float32 (float64
    for float64 inputs) and rounded to the operand dtype where they enter a product. Cost O(L Q (N + P) +
    L N P + (L/Q)^2 N P) flops, O(L Q + (L/Q) N P) memory per batch element; depth O(1) in L.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    _check_ssd_args(x, b, c, log_a)
    out_dtype = promote(x, b, c, log_a)
    half = all(t.dtype in HALF_DTYPES for t in (x, b, c))
    mdt = torch.promote_types(torch.promote_types(x.dtype, b.dtype), c.dtype) if half else compute_dtype(out_dtype)
    ddt = torch.promote_types(compute_dtype(out_dtype), compute_dtype(log_a.dtype))
    L = x.shape[-2]
    Q = min(chunk_size, L)
    pad = (-L) % Q
    if pad:  # zero inputs and zero log-decay on the padded tail add nothing to the real outputs
        x, b, c, log_a = F.pad(x, (0, 0, 0, pad)), F.pad(b, (0, 0, 0, pad)), F.pad(c, (0, 0, 0, pad)), \
            F.pad(log_a, (0, pad))
    nc = (L + pad) // Q

    def chunks(t, trailing):
        return t.reshape(*t.shape[:-1 - len(trailing)], nc, Q, *trailing)

    xc = chunks(x.to(mdt), (x.shape[-1],))
    bc, cc = chunks(b.to(mdt), (b.shape[-1],)), chunks(c.to(mdt), (c.shape[-1],))
    lc = log_a.to(ddt).reshape(*log_a.shape[:-1], nc, Q)
    decay = causal_decays(lc)                                                  # (..., nc, Q, Q), ddt
    # 1. diagonal blocks
    y = ((cc @ bc.transpose(-1, -2)) * decay).to(mdt) @ xc                    # (..., nc, Q, P)
    # 2. chunk states S_k = sum_s exp(sum_{u=s+1..end} log_a_u) b_s x_s^T
    states = (bc * decay[..., Q - 1, :, None]).to(mdt).transpose(-1, -2) @ xc  # (..., nc, N, P)
    # 3. the state entering chunk k
    entering = passed_states(states, lc.sum(-1))
    # 4. state -> output with exp(sum_{u=0..t} log_a_u) from the chunk start
    y = y + (cc @ entering) * torch.exp(lc.cumsum(-1))[..., None].to(mdt)
    y = y.reshape(*y.shape[:-3], nc * Q, y.shape[-1])[..., :L, :]
    return y.to(out_dtype)


def ssd_product(x: torch.Tensor, b: torch.Tensor, c: torch.Tensor, log_a: torch.Tensor,
                chunk_size: int = 64) -> torch.Tensor:
    """The torch fast path of the SSD product: :func:`ssd_chunk_parallel` on a GPU (every chunk at once, few
    large products), :func:`ssd_chunked` on the CPU (cache-sized blocks of chunks, bounded memory); the former,
    compiled on its own, on any device in the kernels' ``compiled`` mode (:func:`structured.base.torch_algorithm`)."""
    product = torch_algorithm(ssd_chunk_parallel)
    if x.is_cuda or product is not ssd_chunk_parallel:
        return product(x, b, c, log_a, chunk_size)
    return ssd_chunked(x, b, c, log_a, chunk_size)


def semiseparable_dense(b: torch.Tensor, c: torch.Tensor, log_a: torch.Tensor) -> torch.Tensor:
    """Materialize ``m_ij = c_i . b_j exp(sum_{t=j+1..i} log_a_t)`` (i >= j), 0 above the diagonal.

    b, c: ``(*batch, L, N)``; log_a: ``(*batch, L)`` -> ``(*batch, L, L)``. Built from segment sums
    (no exp of a positive number, so strong decay gives exact zeros, not inf * 0). O(L^2 (N + 1)).
    """
    return (c @ b.transpose(-1, -2)) * causal_decays(log_a)


def _check_generators(b, c, log_a, validate: bool, suffix: str = "") -> None:
    check_tensor("b" + suffix, b, trailing=(None, None))
    check_tensor("c" + suffix, c, trailing=(None, None))
    check_tensor("log_a" + suffix, log_a, trailing=(None,))
    L, N = b.shape[-2], b.shape[-1]
    if c.shape[-2:] != (L, N):
        raise ValueError(f"b{suffix} and c{suffix} must both have shape (*batch, L, N); "
                         f"got b{suffix} {tuple(b.shape)}, c{suffix} {tuple(c.shape)}")
    if log_a.shape[-1] != L:
        raise ValueError(f"log_a{suffix} must have shape (*batch, L) with L={L} (from b{suffix}); "
                         f"got shape {tuple(log_a.shape)}")
    if validate:
        bad = ~(log_a <= 0)
        if bool(bad.any()):
            worst = log_a.detach()[bad].flatten()[0].item()
            raise ValueError(f"log_a{suffix} must be <= 0 everywhere (decays a_t = exp(log_a_t) <= 1), found "
                             f"{worst!r}; pass validate=False only if this holds by construction")


def half_kernel_dtype(x: torch.Tensor, generators, out_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the SSD products' operands: on a GPU (Triton kernels or :func:`ssd_chunk_parallel`), when
    x and the row/column generators are all half precision (as under bf16 autocast, even where the decays
    are float32), half -- the products run on tensor cores and accumulate in float32, and the result is
    returned in ``out_dtype``; otherwise the compute dtype of ``out_dtype``."""
    dt = x.dtype
    for g in generators:
        dt = torch.promote_types(dt, g.dtype)
    if dt in HALF_DTYPES:
        import kernels
        if x.is_cuda or kernels.enabled(x):
            return dt
    return compute_dtype(out_dtype)


@register("semiseparable")
class Semiseparable(StructuredMatrix):
    """N-semiseparable matrix of a causal scalar-decay SSM (SSD, Mamba-2).

    ``m_ij = c_i . b_j * exp(sum_{t=j+1..i} log_a_t)`` for i >= j, 0 for i < j.

    Parameters
    ----------
    b, c : ``(*batch, L, N)`` input and output generators (for Mamba-2: b = B * dt, c = C).
    log_a : ``(*batch, L)`` log-decays, must be <= 0 (for Mamba-2: A * dt with A < 0).
    validate : check log_a <= 0 (ValueError otherwise); False skips the check for hot loops
        whose decays are non-positive by construction.

    Batch dims of the parameters broadcast (e.g. b of shape (B, 1, L, N) shared by all heads).
    ``order`` is N. Fast product: :func:`ssd_chunked` (or the Triton kernel on CUDA; see
    :mod:`kernels`), O(L Q (N + P) + L N P). Defining property: every submatrix on or below the
    diagonal has rank <= N and the strict upper triangle is zero
    (:func:`structured.properties.semiseparable_order`).

    Reference: Dao & Gu, "Transformers are SSMs", ICML 2024 (arXiv 2405.21060), Definition 3.1 and
    Section 6.
    """

    property_name = "semiseparable order <= N, strict upper part zero"
    chunk_size = 64

    def __init__(self, b: torch.Tensor, c: torch.Tensor, log_a: torch.Tensor, validate: bool = True):
        _check_generators(b, c, log_a, validate)
        batch = broadcast_batch(b=(b, 2), c=(c, 2), log_a=(log_a, 1))
        super().__init__(b.shape[-2], batch, promote(b, c, log_a), b.device, b.shape[-1])
        self.b, self.c, self.log_a = b, c, log_a

    def to_dense(self) -> torch.Tensor:
        dt = compute_dtype(self.dtype)
        return semiseparable_dense(self.b.to(dt), self.c.to(dt), self.log_a.to(dt))

    def _fast_dtype(self, x: torch.Tensor, out_dtype: torch.dtype) -> torch.dtype:
        return half_kernel_dtype(x, (self.b, self.c), out_dtype)

    def _fast_matmul(self, x: torch.Tensor) -> torch.Tensor:
        batch, L, N = x.shape[:-2], self.length, self.order
        b = self.b.to(x.dtype).expand(*batch, L, N)
        c = self.c.to(x.dtype).expand(*batch, L, N)
        # Decays stay in (at least) float32: the kernels sum them along the sequence.
        log_a = self.log_a.to(compute_dtype(x.dtype)).expand(*batch, L)
        import kernels
        if kernels.enabled(x, compile_prefers_torch=True):
            return kernels.semiseparable_matmul(x, b, c, log_a)
        return ssd_product(x, b, c, log_a, chunk_size=self.chunk_size)

    def check_structure(self, tol: float | None = None) -> StructureReport:
        D = self.to_dense()
        tol = P.default_tol(D.dtype) if tol is None else tol
        order, upper = P.semiseparable_order(D, tol)
        worst_upper = float(upper.max()) if upper.numel() else 0.0
        return P.report(self.name, self.property_name, order, self.order, tol,
                        detail=f"max |strict upper entry| / ||M||_2 = {worst_upper:.1e}",
                        extra_ok=worst_upper <= tol)

    @classmethod
    def random(cls, length, batch_shape=(), order=None, dtype=None, device=None, generator=None):
        """b, c ~ N(0, 1/N); log_a ~ -U(0, 0.5) (decays in [0.61, 1], a few dozen steps of memory)."""
        L, batch, N, dtype = cls._random_args(length, batch_shape, order, dtype, default_order=4)
        b = randn((*batch, L, N), dtype, device, generator) / N ** 0.5
        c = randn((*batch, L, N), dtype, device, generator) / N ** 0.5
        log_a = -0.5 * rand((*batch, L), dtype, device, generator)
        return cls(b, c, log_a)
