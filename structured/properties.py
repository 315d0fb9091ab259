"""Rank properties of materialized matrices (any finite dense tensor ``(*batch, m, n)``; the orders and the
Toeplitz and cosine displacements need square ones). Bad input is a ValueError naming the argument.

All measurements are made in float64 on the CPU. A *numerical rank* counts singular values above
``tol * ||M||_2`` where ``||M||_2`` is the spectral norm of the **whole** matrix under test (so tiny
corner blocks do not produce spurious ranks; Beckermann & Townsend, "Bounds on the singular values of
matrices with displacement structure", SIAM Review 61(2), 2019, define the epsilon-rank the same way).
Default tolerances (``tol=None``) follow the dtype of the input as given: 1e-10 for float64 matrices,
1e-5 for float32 ones, 4 eps for float16 (3.9e-3) and bfloat16 (3.1e-2) ones (the least precise input
decides when there are several; :func:`default_tol`).

Checks test an **upper bound** (rank <= bound), never equality: strong decay makes true ranks look
smaller. Every check can fail: a random dense matrix fails each of them.

Functions
---------
numerical_rank(M, tol)                     rank over the batch
low_rank_order(M, tol)                     = numerical_rank
displacement_rank(M, A, B, tol, sign)      rank of A M + sign * M B (Sylvester displacement)
toeplitz_displacement_rank(M, tol)         rank of Z M - M Z, Z the down-shift (<= 2 for Toeplitz)
cauchy_displacement_rank(M, x, y, tol, sign) rank of D_x M + sign * M D_y (1 for 1/(x_i -/+ y_j))
cosine_displacement_rank(M, nodes, tol)    rank of 2 D_cos(theta) M - M (Z + Z^T) (<= 2 for cos(theta_i j))
semiseparable_order(M, tol)                max rank of M[k:, :k+1]; also the size of the strict upper part
quasiseparable_order(M, tol)               (max rank of M[k+1:, :k+1], max rank of M[:k+1, k+1:])
"""
from __future__ import annotations

import torch

from .base import StructureReport


HALF_TOL_EPS = 4  # the half dtypes' default tolerance in units of their machine epsilon


def default_tol(dtype: torch.dtype) -> float:
    """The relative tolerance at which rounding to ``dtype`` stops counting as rank: 1e-10 for float64,
    1e-5 for float32 (and anything else built in lower precision), ``HALF_TOL_EPS * eps`` for float16
    (3.9e-3) and bfloat16 (3.1e-2). Rounding a matrix to a half dtype leaves singular values near
    0.2 eps of its norm (measured on rank-3 matrices of sizes 16 to 1024), far above 1e-5: a rank-3 64 x 64
    float16 matrix measured rank 42 at 1e-5. Random dense matrices keep most singular values above
    0.03 of the largest, so they still fail every check."""
    if dtype == torch.float64:
        return 1e-10
    if dtype in (torch.float16, torch.bfloat16):
        return HALF_TOL_EPS * torch.finfo(dtype).eps
    return 1e-5


def _resolve_tol(tol, *tensors) -> float:
    """``tol``, or by default the tolerance of the least precise of ``tensors`` (their dtypes as given,
    before the float64 conversion the measurements use): rounding in a float32 matrix leaves singular
    values near 1e-7 relative, which a float64 tolerance would count as rank."""
    if tol is None:
        dtypes = [t.dtype for t in tensors if isinstance(t, torch.Tensor)]
        return max((default_tol(d) for d in dtypes), default=default_tol(torch.float64))
    return _check_tol(tol)


def _f64(M: torch.Tensor, name: str = "M") -> torch.Tensor:
    """``M`` as a float64 CPU tensor; ValueError naming ``name`` unless it is a finite ``(*batch, m, n)``
    tensor (the SVDs the measurements rest on do not converge on NaN or inf)."""
    if not isinstance(M, torch.Tensor) or M.dim() < 2:
        raise ValueError(f"{name} must be a tensor of shape (*batch, m, n), got {getattr(M, 'shape', type(M))}")
    out = M.detach().to(device="cpu", dtype=torch.float64)
    bad = int((~torch.isfinite(out)).sum())
    if bad:
        raise ValueError(f"{name} must be finite, got {bad} NaN or infinite entr{'y' if bad == 1 else 'ies'} "
                         f"(shape {tuple(M.shape)})")
    return out


def _vector(v: torch.Tensor, name: str) -> torch.Tensor:
    """A finite ``(*batch, n)`` tensor as float64 on the CPU (nodes of a displacement operator)."""
    if not isinstance(v, torch.Tensor) or v.dim() < 1:
        raise ValueError(f"{name} must be a tensor of shape (*batch, n), got {getattr(v, 'shape', type(v))}")
    return _f64(v[..., None], name)[..., 0]


def _square(M: torch.Tensor, what: str) -> torch.Tensor:
    """``M`` (float64, from :func:`_f64`) if it is square; ValueError naming ``what`` needs it."""
    if M.shape[-1] != M.shape[-2]:
        raise ValueError(f"M must be square, (*batch, n, n), for {what}; got shape {tuple(M.shape)}")
    return M


def _check_tol(tol: float) -> float:
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"tol must be a float in (0, 1), got {tol!r}")
    return float(tol)


def spectral_norm(M: torch.Tensor) -> torch.Tensor:
    """||M||_2 per matrix of the batch, float64, shape ``batch``."""
    return torch.linalg.matrix_norm(_f64(M), ord=2)


def _rank_against(block: torch.Tensor, ref: torch.Tensor, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Number of singular values of each block above ``tol * ref`` and the largest such ratio."""
    s = torch.linalg.svdvals(block)                      # (*batch, min(m, n))
    ratio = s / ref.clamp_min(torch.finfo(torch.float64).tiny)[..., None]
    return (ratio > tol).sum(-1), ratio


def numerical_rank(M: torch.Tensor, tol: float | None = None, ref_norm: torch.Tensor | None = None) -> torch.Tensor:
    """Number of singular values above ``tol * ||M||_2`` (or ``tol * ref_norm``), per matrix.

    M: ``(*batch, m, n)``. Returns a long tensor of shape ``batch``. Cost O(mn min(m, n)).
    """
    tol = _resolve_tol(tol, M)
    M = _f64(M)
    ref = spectral_norm(M) if ref_norm is None else ref_norm.to(torch.float64)
    if M.shape[-1] == 0 or M.shape[-2] == 0:
        return torch.zeros(M.shape[:-2], dtype=torch.long)
    return _rank_against(M, ref, tol)[0]


low_rank_order = numerical_rank


def shift_matrix(n: int, dtype=torch.float64) -> torch.Tensor:
    """Down-shift Z (Z[i, i-1] = 1)."""
    return torch.diag(torch.ones(n - 1, dtype=dtype), -1) if n > 1 else torch.zeros(1, 1, dtype=dtype)


def displacement_rank(M: torch.Tensor, A: torch.Tensor, B: torch.Tensor, tol: float | None = None,
                      sign: float = -1.0) -> torch.Tensor:
    """Numerical rank of the Sylvester displacement ``A M + sign * M B`` (default ``A M - M B``).

    The tolerance is relative to ``||A|| ||M|| + ||M|| ||B||`` (the size of the terms that cancel).
    M: ``(*batch, n, n)``; A, B: ``(n, n)`` or ``(*batch, n, n)``.
    """
    tol = _resolve_tol(tol, M, A, B)
    M = _f64(M)
    A, B = _f64(A, "A"), _f64(B, "B")
    m, n = M.shape[-2:]
    if A.shape[-2:] != (m, m) or B.shape[-2:] != (n, n):
        raise ValueError(f"A must be (*batch, {m}, {m}) and B (*batch, {n}, {n}) for M of shape {tuple(M.shape)}; "
                         f"got A {tuple(A.shape)}, B {tuple(B.shape)}")
    try:
        D = A @ M + sign * (M @ B)
    except RuntimeError:
        raise ValueError(f"the batch shapes of M {tuple(M.shape)}, A {tuple(A.shape)} and B {tuple(B.shape)} do "
                         f"not broadcast") from None
    ref = spectral_norm(M) * (spectral_norm(A) + spectral_norm(B))
    return numerical_rank(D, tol, ref_norm=ref)


def toeplitz_displacement_rank(M: torch.Tensor, tol: float | None = None) -> torch.Tensor:
    """rank(Z M - M Z): at most 2 for a Toeplitz matrix (Kailath, Kung & Morf 1979)."""
    tol = _resolve_tol(tol, M)
    Z = shift_matrix(_square(_f64(M), "the Toeplitz displacement Z M - M Z").shape[-1])
    return displacement_rank(M, Z, Z, tol)


def cauchy_displacement_rank(M: torch.Tensor, x: torch.Tensor, y: torch.Tensor, tol: float | None = None,
                             sign: float = -1.0) -> torch.Tensor:
    """rank(D_x M + sign * M D_y): 1 for ``m_ij = 1/(x_i - y_j)`` with sign -1 (D_x C - C D_y = 1 1^T)
    and for ``m_ij = 1/(x_i + y_j)`` with sign +1. x: ``(*batch, m)``, y: ``(*batch, n)``."""
    tol = _resolve_tol(tol, M, x, y)
    x, y = _vector(x, "x"), _vector(y, "y")
    m, n = _f64(M).shape[-2:]
    if x.shape[-1] != m or y.shape[-1] != n:
        raise ValueError(f"x must be (*batch, {m}) and y (*batch, {n}) for M of shape {tuple(M.shape)}; got x "
                         f"{tuple(x.shape)}, y {tuple(y.shape)}")
    return displacement_rank(M, torch.diag_embed(x), torch.diag_embed(y), tol, sign=sign)


def cosine_displacement_rank(M: torch.Tensor, theta: torch.Tensor, tol: float | None = None) -> torch.Tensor:
    """rank(2 D_{cos theta} M - M (Z + Z^T)) for ``m_ij = cos(theta_i j)``: at most 2 (only the first
    and last columns survive, from cos((j+1)t) + cos((j-1)t) = 2 cos(t) cos(jt)). theta: ``(*batch, n)``."""
    tol = _resolve_tol(tol, M, theta)
    n = _square(_f64(M), "the cosine displacement").shape[-1]
    Z = shift_matrix(n)
    theta = _vector(theta, "theta")
    if theta.shape[-1] != n:
        raise ValueError(f"theta must be (*batch, {n}) for M of shape {tuple(M.shape)}, got {tuple(theta.shape)}")
    c = torch.cos(theta)
    return displacement_rank(M, 2 * torch.diag_embed(c), Z + Z.T, tol)


def semiseparable_order(M: torch.Tensor, tol: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Semiseparable order: max over k of rank(M[k:, :k+1]) (every submatrix on or below the diagonal lies
    in one of these maximal blocks), and the largest |entry| of the strict upper triangle relative to
    ||M||_2 (zero for a semiseparable matrix). Returns (order, upper_ratio), each of shape ``batch``.
    Cost O(L^4) (L SVDs); intended for L up to a few hundred."""
    tol = _resolve_tol(tol, M)
    M = _square(_f64(M), "the semiseparable order")
    L = M.shape[-1]
    ref = spectral_norm(M)
    order = torch.zeros(M.shape[:-2], dtype=torch.long)
    for k in range(L):
        r, _ = _rank_against(M[..., k:, : k + 1], ref, tol)
        order = torch.maximum(order, r)
    upper = torch.triu(M, 1).abs().amax(dim=(-1, -2)) / ref.clamp_min(torch.finfo(torch.float64).tiny)
    return order, upper


def quasiseparable_order(M: torch.Tensor, tol: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quasiseparable orders (lower, upper): max over k of rank(M[k+1:, :k+1]) and of rank(M[:k+1, k+1:]);
    the diagonal is unconstrained (Pernet & Storjohann, arXiv 1701.00396). Each of shape ``batch``.
    Cost O(L^4) (2(L-1) SVDs); intended for L up to a few hundred."""
    tol = _resolve_tol(tol, M)
    M = _square(_f64(M), "the quasiseparable orders")
    L = M.shape[-1]
    ref = spectral_norm(M)
    lower = torch.zeros(M.shape[:-2], dtype=torch.long)
    upper = torch.zeros(M.shape[:-2], dtype=torch.long)
    for k in range(L - 1):
        lower = torch.maximum(lower, _rank_against(M[..., k + 1:, : k + 1], ref, tol)[0])
        upper = torch.maximum(upper, _rank_against(M[..., : k + 1, k + 1:], ref, tol)[0])
    return lower, upper


def report(cls: str, prop: str, measured: torch.Tensor | int, bound: int, tol: float, detail: str = "",
           extra_ok: bool = True, parts: tuple = ()) -> StructureReport:
    """Build a :class:`StructureReport` from a measured rank tensor (worst over the batch)."""
    worst = int(torch.as_tensor(measured).max()) if torch.as_tensor(measured).numel() else 0
    ok = worst <= bound and extra_ok and all(p.ok for p in parts)
    return StructureReport(cls=cls, property=prop, ok=ok, measured=worst, bound=bound, tol=tol, detail=detail,
                           parts=tuple(parts))
