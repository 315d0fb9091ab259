r"""Cosine-Vandermonde matrices (the Hydra paper's sequence-aligned Vandermonde form).

    m_ij = sum_{d=1..D} cos(2 pi s q_id j) - cos(2 pi s k_jd i),       i, j = 0..L-1,

per term a q-term ``cos(theta_id j)`` (row nodes ``theta = 2 pi s q``, a Chebyshev-Vandermonde matrix) minus a
k-term ``cos(phi_jd i)`` (column nodes ``phi = 2 pi s k``); ``s = scale`` (the paper's code uses 1e-3 for the
sequence-aligned mixer). Parameters ``q, k``: ``(*batch, L, D)``; products take ``x: (*batch, L, P)`` and return
``(*batch, L, P)``.

Fast products (``method_fast``; none builds an L x L tensor):

* ``tiled``: exact and matrix-free: row tiles of ``(T, L, D)`` angles, recomputed in backward; O(L^2 (D + P))
  work, O(L T D) memory; agrees with the explicit product to GEMM rounding. On CUDA with Triton:
  ``kernels.vandermonde_matmul``.
* ``nufft``: type-2 (q-terms) and type-1 (k-terms) Gaussian-gridding non-uniform FFTs on a grid of
  n = max(2L, 32), window half-width S; O(n log n P + L D S P). **Bound**: per column p,
  ``|y_hat_i - y_i| <= 2 D E ||x_p||_1`` with E <= eps computed exactly by :func:`nufft_plan`
  (S = 7 at eps = 1e-6). Default eps: 1e-12 (float64), 1e-6 (float32).
* ``chebyshev``: interpolation of ``cos(theta j)`` in the index j at n Chebyshev points, one rank-n
  factorization for all D terms; O(L D n + L n P), memory O(L (n + P)). **Bound**:
  ``|m_hat_ij - m_ij| <= 2 D E``, ``E = min_rho 4 cosh(Omega (rho - 1/rho)/2) rho^(1-n) / (rho - 1)``,
  ``Omega = s pi (L-1) max(|q|, |k|)`` (:func:`chebyshev_plan`); n grows like Omega + O(log 1/eps), so the
  path pays only for small angles (Hydra's s = 1e-3) and is unavailable when n > L. On CUDA with Triton it
  runs fused in ``kernels.chebyshev`` with n chosen per batch element on the device.
* ``auto`` (default): the cheapest by a cost model; :meth:`Vandermonde.plan` reports the decision.

Defining property (``check_structure``): per term, ``2 D_{cos theta} A - A (Z + Z^T)`` has rank <= 2.

Derivations, gradient bounds, rounding terms, the paper code's quirks and the fitted cost constants (with how
to refit them) are in ``docs/algorithms.md``. References: Dutt & Rokhlin, SISC 14(6), 1993 and Greengard &
Lee, SIAM Review 46(3), 2004 (NUFFT); Trefethen, Approximation Theory and Approximation Practice (SIAM 2013),
Thms 8.2, 15.2; Berrut & Trefethen, SIAM Review 46(3), 2004 (barycentric interpolation); Hwang et al., Hydra
(arXiv 2407.09941), Table 2.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from . import properties as P
from . import register
from .base import (StructuredMatrix, StructureReport, block_slices, broadcast_batch, check_tensor, compute_dtype,
                   expand_matrices, promote, randn)
from .tiled import check_method_options, check_tile, tiled_matmul


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite positive number (angle scale s; Hydra's code uses 1e-3), "
                         f"got {scale!r}")
    return float(scale)


class _VandermondeTiles:
    """:class:`structured.tiled.TileSpec` of ``m_ij = sum_d cos(theta_id j) - cos(phi_jd i)``; a tile holds the
    angle blocks ``theta_id * j`` and ``phi_jd * i``, each ``(*b, T, L, D)`` (the same products ``to_dense``
    forms, so fast and explicit round identically), and the row and column indices."""

    @staticmethod
    def tile(rows, theta, phi):
        idx = torch.arange(theta.shape[-2], dtype=theta.dtype, device=theta.device)
        ang_q = theta[..., rows, None, :] * idx[:, None]
        ang_k = phi[..., None, :, :] * idx[rows, None, None]
        return ang_q, ang_k, idx[rows], idx

    @staticmethod
    def matrix(tile):
        ang_q, ang_k = tile[:2]
        return (torch.cos(ang_q) - torch.cos(ang_k)).sum(-1)

    @staticmethod
    def add_param_grads(tile, G, rows, grads, theta, phi):
        ang_q, ang_k, row_idx, col_idx = tile
        gt, gp = grads
        if gt is not None:      # d cos(theta_i j)/d theta_i = -j sin(theta_i j)
            gt[..., rows, :] -= ((G * col_idx)[..., None] * torch.sin(ang_q)).sum(-2)
        if gp is not None:      # d(-cos(phi_j i))/d phi_j = i sin(phi_j i)
            gp += ((G * row_idx[:, None])[..., None] * torch.sin(ang_k)).sum(-3)


def vandermonde_matmul_tiled(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float = 1.0,
                             tile: int | None = None) -> torch.Tensor:
    """Exact ``M x`` with ``m_ij = sum_d cos(2 pi s q_id j) - cos(2 pi s k_jd i)``, matrix-free.

    x: ``(*batch, L, P)``; q, k: ``(*batch, L, D)`` (batch dims broadcast); scale s > 0. Rows are processed
    ``tile`` at a time (default: about ``structured.base.BLOCK_ELEMENTS`` elements per angle block on the CPU):
    O(batch tile L D) memory in forward and backward (recomputed in backward, :func:`structured.tiled.tiled_matmul`),
    O(L^2 (D + P)) work per batch element.
    Differentiable in x, q, k.
    """
    scale = _check_scale(scale)
    tile = check_tile(tile)
    x, q, k = expand_matrices(x, q, k)
    theta, phi = (2 * math.pi * scale) * q, (2 * math.pi * scale) * k
    return tiled_matmul(_VandermondeTiles, x, theta, phi, inner=2 * q.shape[-1], tile=tile)


# --------------------------------------------------------------------------------------------------
# Sub-quadratic path: Gaussian-gridding NUFFT (types 1 and 2) in pure torch
# --------------------------------------------------------------------------------------------------
#: Default accuracy (bound E below) of the NUFFT path per compute dtype, and the accepted range.
NUFFT_DEFAULT_EPS = {torch.float64: 1e-12, torch.float32: 1e-6}
NUFFT_EPS_RANGE = (1e-14, 0.1)


class NufftPlan(NamedTuple):
    """Gaussian-gridding parameters for L uniform modes (see :func:`nufft_plan`)."""

    length: int        # L (modes 0..L-1, centred as k' = j - L//2)
    n: int             # periodic grid size (oversampling 2)
    half_width: int    # S: each node touches the 2S nearest grid points
    tau: float         # Gaussian psi(t) = exp(-t^2 / (4 tau))
    bound: float       # E: |F_hat(t) - F(t)| <= E sum_j |a_j| for every node t (exact arithmetic)


def _check_nufft_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (
            NUFFT_EPS_RANGE[0] <= eps <= NUFFT_EPS_RANGE[1]):
        raise ValueError(f"eps must be None (per-dtype default {NUFFT_DEFAULT_EPS[torch.float64]:g} for float64, "
                         f"{NUFFT_DEFAULT_EPS[torch.float32]:g} for float32) or a float in "
                         f"[{NUFFT_EPS_RANGE[0]:g}, {NUFFT_EPS_RANGE[1]:g}], got {eps!r}")
    return float(eps)


@functools.lru_cache(maxsize=256)
def nufft_plan(length: int, eps: float) -> NufftPlan:
    r"""Smallest Gaussian-gridding half-width S (and the best tau for it) whose error bound is <= eps.

    With grid spacing ``h = 2 pi / n``, modes ``|k'| <= K = L // 2`` and ``Psi(k) = sqrt(4 pi tau) e^{-k^2 tau}``
    (the Fourier transform of psi), Poisson summation gives for a type-2 evaluation
    ``F(t) = sum_j a_j e^{i j t}`` (and, by the same identity, for the adjoint type-1 spreading)

        |F_hat(t) - F(t)| <= E sum_j |a_j|,
        E = max_{|k'|<=K} sum_{m != 0} e^{-tau((k' - m n)^2 - k'^2)}           (aliasing)
            + h / sqrt(4 pi tau) e^{K^2 tau} 2 sum_{r>=0} e^{-((S + r) h)^2 / (4 tau)}   (window truncation)

    evaluated here in float64 (|m| <= 8, r < 40; the omitted terms are below 1e-300). Dutt & Rokhlin (1993),
    Greengard & Lee, "Accelerating the nonuniform fast Fourier transform", SIAM Review 46(3), 2004.
    Typical S: 7 for eps = 1e-6, 14 for 1e-12 (independent of L once L >= 32).
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    eps = _check_nufft_eps(eps)
    K = length // 2
    n = max(2 * length, 32)
    h = 2 * math.pi / n
    m = torch.tensor([v for v in range(-8, 9) if v], dtype=torch.float64)
    r = torch.arange(40, dtype=torch.float64)
    for S in range(1, n // 2 + 1):
        taus = (S * h / n) * torch.logspace(-2, 2, 400, dtype=torch.float64)
        alias = torch.exp(-taus[:, None] * ((K - m * n) ** 2 - K ** 2)).sum(-1)
        trunc = 2 * torch.exp(-((S + r) * h) ** 2 / (4 * taus[:, None])).sum(-1)
        E = alias + h / torch.sqrt(4 * math.pi * taus) * torch.exp(K ** 2 * taus) * trunc
        best = int(E.argmin())
        if float(E[best]) <= eps:
            return NufftPlan(length, n, S, float(taus[best]), float(E[best]))
    raise ValueError(f"eps={eps!r} is not reachable by Gaussian gridding at length {length}")  # pragma: no cover


def _deconvolution(plan: NufftPlan, dtype, device) -> torch.Tensor:
    """``h / Psi(k')`` for k' = j - L//2, j = 0..L-1 (float64 formula, cast)."""
    kp = torch.arange(plan.length, dtype=torch.float64) - plan.length // 2
    h = 2 * math.pi / plan.n
    return (h / math.sqrt(4 * math.pi * plan.tau) * torch.exp(kp ** 2 * plan.tau)).to(dtype=dtype, device=device)


class _Window:
    """The 2S-point Gaussian window of every node of a batch, as sparse matrices over the flattened batch:
    ``interp`` ``(nb*N*D, nb*n)`` (grid -> nodes, type 2) and ``spread`` = its transpose (nodes -> grid,
    type 1), built as CSR so each product is one sparse-dense matmul (no per-offset gathers)."""

    def __init__(self, t: torch.Tensor, plan: NufftPlan):
        h = 2 * math.pi / plan.n
        self.plan, self.dtype = plan, t.dtype
        self.batch, self.nodes = t.shape[:-2], t.shape[-2:]
        nb = self.batch.numel()
        self.n_rows = nb * t.shape[-2] * t.shape[-1]
        # Node-side arithmetic in float64 (O(L D S) work): folding and the centring phase c*t would otherwise
        # cost a phase error ~ pi L u in float32; the given nodes are used exactly.
        t64 = t.to(torch.float64)
        self.tf = torch.remainder(t64, 2 * math.pi)                          # e^{i j t} is 2 pi periodic
        W = 2 * plan.half_width
        offsets = torch.arange(1 - plan.half_width, plan.half_width + 1, dtype=torch.float64, device=t.device)
        grid = torch.floor(self.tf / h)[..., None] + offsets                  # (*B, N, D, W)
        weights = torch.exp(-(self.tf[..., None] - grid * h) ** 2 / (4 * plan.tau))
        base = (torch.arange(nb, device=t.device) * plan.n).reshape(*self.batch, 1, 1, 1)
        self.index = (torch.remainder(grid, plan.n).long() + base).reshape(-1)
        self.weights = weights.reshape(-1).to(t.dtype)
        self.W = W
        self._interp = self._spread = None

    def phase(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the centring phase ``(L//2) t``, ``(*B, N, D, 1)`` in the nodes' dtype."""
        ct = (self.plan.length // 2) * self.tf[..., None]
        return torch.cos(ct).to(self.dtype), torch.sin(ct).to(self.dtype)

    @property
    def interp(self) -> torch.Tensor:
        if self._interp is None:
            crow = torch.arange(0, self.n_rows * self.W + 1, self.W, device=self.index.device)
            self._interp = _csr(crow, self.index, self.weights, (self.n_rows, self.batch.numel() * self.plan.n))
        return self._interp

    @property
    def spread(self) -> torch.Tensor:
        if self._spread is None:
            n_grid = self.batch.numel() * self.plan.n
            perm = torch.argsort(self.index)
            counts = torch.bincount(self.index, minlength=n_grid)
            crow = torch.zeros(n_grid + 1, dtype=torch.long, device=self.index.device)
            crow[1:] = torch.cumsum(counts, 0)
            cols = torch.div(perm, self.W, rounding_mode="floor")
            self._spread = _csr(crow, cols, self.weights[perm], (n_grid, self.n_rows))
        return self._spread


def _csr(crow, col, values, size):
    with warnings.catch_warnings():     # torch flags sparse CSR as beta; the products used here are stable
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def _type2(a: torch.Tensor, win: _Window):
    """``F_d(t_id) = sum_j a_j e^{i j t_id}``, j = 0..L-1: a ``(*B, L, P)`` real, nodes of ``win``
    ``(*B, N, D)`` -> (Re, Im), each ``(*B, N, D, P)``. One length-n FFT, one sparse interpolation (type 2)."""
    plan = win.plan
    L, n, P = plan.length, plan.n, a.shape[-1]
    c = L // 2
    cplx = torch.complex128 if a.dtype == torch.float64 else torch.complex64
    coeff = torch.zeros(*a.shape[:-2], n, P, dtype=cplx, device=a.device)
    pos = torch.remainder(torch.arange(L, device=a.device) - c, n)
    coeff[..., pos, :] = (a * _deconvolution(plan, a.dtype, a.device)[:, None]).to(cplx)
    u = torch.fft.ifft(coeff, dim=-2, norm="forward")                     # u_l = sum_k coeff_k e^{2 pi i k l / n}
    u = torch.cat([u.real, u.imag], -1).reshape(-1, 2 * P)                 # (nb * n, 2P)
    acc = (win.interp @ u).reshape(*win.batch, *win.nodes, 2 * P)
    re, im = acc[..., :P], acc[..., P:]
    cos, sin = win.phase()                                                 # centring phase e^{i c t}
    return cos * re - sin * im, sin * re + cos * im


def _type1_re(win: _Window, s: torch.Tensor) -> torch.Tensor:
    """``Re sum_{d, j} s_j e^{i m t_jd}`` for m = 0..L-1: nodes of ``win`` ``(*B, N, D)``, s ``(*B, N, P)`` real
    -> ``(*B, L, P)``. One sparse spreading onto the grid, one length-n FFT (type 1, the adjoint of type 2)."""
    plan = win.plan
    L, n, P = plan.length, plan.n, s.shape[-1]
    c = L // 2
    cos, sin = win.phase()
    strength = torch.cat([s[..., None, :] * cos, s[..., None, :] * sin], -1)  # (*B, N, D, 2P)
    grid = (win.spread @ strength.reshape(-1, 2 * P)).reshape(*win.batch, n, 2 * P)
    v = torch.fft.ifft(torch.complex(grid[..., :P], grid[..., P:]), dim=-2, norm="forward")
    pos = torch.remainder(torch.arange(L, device=s.device) - c, n)
    return v[..., pos, :].real * _deconvolution(plan, s.dtype, s.device)[:, None]


class _VandermondeNufftProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, theta, phi, plan):
        ctx.save_for_backward(x, theta, phi)
        ctx.plan = plan
        x = x.contiguous()
        return _type2(x, _Window(theta, plan))[0].sum(-2) - _type1_re(_Window(phi, plan), x)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, theta, phi = ctx.saved_tensors
        plan = ctx.plan
        x, g = x.contiguous(), g.contiguous()
        need_x, need_t, need_p = ctx.needs_input_grad[:3]
        ramp = torch.arange(plan.length, dtype=x.dtype, device=x.device)[:, None]
        win_t, win_p = _Window(theta, plan), _Window(phi, plan)   # recomputed: O(L D S) each
        gx = gt = gp = None
        if need_x:
            gx = _type1_re(win_t, g) - _type2(g, win_p)[0].sum(-2)
        if need_t:   # d/dtheta Re sum_j x_j e^{i j theta} = -Im sum_j j x_j e^{i j theta}
            gt = -(_type2(ramp * x, win_t)[1] * g[..., :, None, :]).sum(-1)
        if need_p:   # d/dphi_j of -x_j cos(phi_j i), summed against g_i: x_j Im sum_i i g_i e^{i phi_j i}
            gp = (_type2(ramp * g, win_p)[1] * x[..., :, None, :]).sum(-1)
        return gx, gt, gp, None


def vandermonde_matmul_nufft(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float = 1.0,
                             eps: float | None = None) -> torch.Tensor:
    """Approximate ``M x`` with ``m_ij = sum_d cos(2 pi s q_id j) - cos(2 pi s k_jd i)`` by NUFFTs.

    x: ``(*batch, L, P)``; q, k: ``(*batch, L, D)`` (batch dims broadcast). Per column p of x:
    ``|y_hat_i - y_i| <= 2 D E ||x_p||_1`` (+ rounding), E = ``nufft_plan(L, eps).bound <= eps``; the gradients
    obey the analogous bounds (module docstring). Cost O(L S D P + n log n P), n = 2L, S ~ log10(1/eps).
    """
    scale = _check_scale(scale)
    eps = NUFFT_DEFAULT_EPS.get(x.dtype, NUFFT_DEFAULT_EPS[torch.float32]) if eps is None else _check_nufft_eps(eps)
    x, q, k = expand_matrices(x, q, k)
    theta, phi = (2 * math.pi * scale) * q, (2 * math.pi * scale) * k
    return _VandermondeNufftProduct.apply(x, theta, phi, nufft_plan(x.shape[-2], eps))


# --------------------------------------------------------------------------------------------------
# Sub-quadratic path for small angles: Chebyshev interpolation in the index
# --------------------------------------------------------------------------------------------------
#: Grid of u = log(rho) on which the Bernstein-ellipse bounds are minimized (any rho gives a valid bound;
#: the grid reaches u ~ sqrt(2 (n - Omega)/Omega), the optimum for Omega up to ~1e7).
_LOG_RHO_GRID = torch.logspace(-7, 1.5, 3000, dtype=torch.float64)
#: Omega is rounded up to 2^(k/64) (<= 1.1% larger: the bound grows with Omega, so it stays valid) so that
#: plans are cached across calls with slightly different data.
_OMEGA_STEPS_PER_OCTAVE = 64


class ChebyshevPlan(NamedTuple):
    """Chebyshev interpolation of ``j -> cos(theta j)`` on [0, L-1] (see :func:`chebyshev_plan`)."""

    length: int        # L
    n: int             # number of Chebyshev points (interpolant of degree n - 1)
    omega: float       # Omega the bounds hold for (the given one rounded up by <= 1.1%)
    bound: float       # E: |cos(theta j) - interpolant(j)| <= E for all |theta| (L-1)/2 <= Omega (exact arithmetic)
    grad_bound: float  # E': the same for d/dtheta, i.e. for -j sin(theta j)


def _log_cosh(a: torch.Tensor) -> torch.Tensor:
    return a + torch.log1p(torch.exp(-2 * a)) - math.log(2.0)


def _log_ellipse_bounds(n: int, omega: float, length: int) -> tuple[float, float]:
    """log E and log E' of the module docstring for n points (minimum over the rho grid)."""
    u = _LOG_RHO_GRID
    common = math.log(4.0) + _log_cosh(omega * torch.sinh(u)) - (n - 1) * u - torch.log(torch.expm1(u))
    log_e = float(common.min())
    if length == 1:      # the only index is j = 0, where -j sin(theta j) = 0 exactly
        return log_e, -math.inf
    log_g = common + math.log((length - 1) / 2) + torch.log(torch.cosh(u) + 1)
    return log_e, float(log_g.min())


@functools.lru_cache(maxsize=512)
def _chebyshev_plan_cached(length: int, omega_step: int, eps: float) -> ChebyshevPlan:
    omega = 2.0 ** (omega_step / _OMEGA_STEPS_PER_OCTAVE) if omega_step > -10 ** 9 else 0.0
    if omega == 0.0:     # constant functions: one point is exact
        return ChebyshevPlan(length, 1, 0.0, 0.0, 0.0)
    log_eps = math.log(eps)
    ok = lambda n: _log_ellipse_bounds(n, omega, length)[0] <= log_eps
    hi = 1
    while not ok(hi):    # the bound decreases in n for every rho: double, then bisect
        hi *= 2
    lo = hi // 2         # ok(lo) is False (or lo == 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    log_e, log_g = _log_ellipse_bounds(hi, omega, length)
    return ChebyshevPlan(length, hi, omega, math.exp(log_e), math.exp(log_g))


def chebyshev_plan(length: int, omega: float, eps: float) -> ChebyshevPlan:
    r"""Smallest number n of Chebyshev points whose interpolant of ``cos(omega t + c)``, |omega| <= Omega, on
    [-1, 1] is within eps (ATAP Thm 8.2, see the module docstring):

        E(n) = min_{rho > 1} 4 cosh(Omega (rho - 1/rho)/2) rho^(1-n) / (rho - 1) <= eps,

    and the derivative bound E'(n) for the same n. ``omega``: Omega = max |theta| (L-1)/2 over all nodes,
    rounded up here by at most 1.1% (plans are cached). Work: O(log n) scans of a 3000-point rho grid in
    float64. n ~ Omega + O(log(1/eps)) (Chebyshev coefficients of cos(omega t) are Bessel values J_k(omega),
    negligible once k > Omega).
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    if isinstance(omega, bool) or not isinstance(omega, (int, float)) or not (0 <= omega < math.inf):
        raise ValueError(f"omega must be a finite number >= 0 (max |theta| (L-1)/2), got {omega!r}")
    eps = _check_nufft_eps(eps)
    step = (math.ceil(math.log2(omega) * _OMEGA_STEPS_PER_OCTAVE - 1e-9) if omega > 0 else -10 ** 9 - 1)
    return _chebyshev_plan_cached(length, step, eps)


#: Safety factor on the Omega limits of :func:`chebyshev_omega_limits`, which invert the bound in closed form:
#: it absorbs their rounding, so the bound evaluated at the limit stays <= eps.
_OMEGA_LIMIT_MARGIN = 1.0 - 1e-9


@functools.lru_cache(maxsize=64)
def _omega_limits_cached(n_max: int, eps: float) -> tuple[float, ...]:
    u = _LOG_RHO_GRID
    n = torch.arange(1, n_max + 1, dtype=torch.float64)[:, None]
    # log E(n, Omega, u) <= log eps  <=>  log cosh(Omega sinh u) <= c  <=>  Omega <= acosh(e^c) / sinh u  (c >= 0)
    c = math.log(eps) - math.log(4.0) + (n - 1) * u + torch.log(torch.expm1(u))
    acosh_ec = c + torch.log1p(torch.sqrt(-torch.expm1(-2 * c.clamp(min=0))))
    omega = torch.where(c >= 0, acosh_ec / torch.sinh(u), torch.full_like(c, -math.inf))
    return tuple((omega.amax(-1) * _OMEGA_LIMIT_MARGIN).tolist())


def chebyshev_omega_limits(n_max: int, eps: float) -> tuple[float, ...]:
    r"""The largest Omega each number of points covers: entry n-1 is ``sup {Omega : E(n, Omega) <= eps}`` (less a
    relative 1e-9) for n = 1 .. n_max, with E the Bernstein-ellipse bound of :func:`chebyshev_plan` (the same rho
    grid). E grows with Omega and falls with n, so the entries increase and the fewest points for a given Omega
    are ``1 + #{limits < Omega}``: a lookup the GPU kernels do per batch element, without a host sync
    (``kernels.chebyshev``). For each grid point u = log rho the condition
    ``log 4 + log cosh(Omega sinh u) - (n-1) u - log(e^u - 1) <= log eps`` inverts in closed form,
    ``Omega <= acosh(e^c) / sinh u`` with c the rest moved right (no Omega where c < 0), and the limit is the largest
    over the grid. Work O(n_max * 3000) in float64, cached.
    """
    if isinstance(n_max, bool) or not isinstance(n_max, int) or n_max < 1:
        raise ValueError(f"n_max must be a positive int, got {n_max!r}")
    return _omega_limits_cached(n_max, _check_nufft_eps(eps))


def chebyshev_omega(q: torch.Tensor, k: torch.Tensor, scale: float) -> float:
    """Omega = pi s (L-1) max(|q|, |k|) (one host synchronization), the half-range of the angles."""
    L = q.shape[-2]
    top = torch.stack([q.detach().abs().amax(), k.detach().abs().amax()]).double().amax().item()
    return math.pi * scale * (L - 1) * top


@functools.lru_cache(maxsize=8)
def _interpolation_matrix(length: int, n: int, dtype: torch.dtype, device: torch.device):
    """Chebyshev indices ``j_r`` (n,) and the Lagrange basis ``Lam_jr = l_r(j)`` (L, n) for j = 0..L-1, by the
    second barycentric formula in float64, then cast. Weights ``(-1)^r`` halved at the ends (second-kind
    points; the affine map t -> j rescales all weights alike, which the formula cancels)."""
    if n == 1:
        nodes = torch.full((1,), (length - 1) / 2, dtype=torch.float64, device=device)
        return nodes.to(dtype), torch.ones(length, 1, dtype=dtype, device=device)
    r = torch.arange(n, dtype=torch.float64, device=device)
    nodes = (torch.cos(math.pi * r / (n - 1)) + 1) * ((length - 1) / 2)
    w = (1 - 2 * (r % 2))
    w[0], w[-1] = w[0] / 2, w[-1] / 2
    j = torch.arange(length, dtype=torch.float64, device=device)
    diff = j[:, None] - nodes
    hit = diff == 0                  # an index on a node: l_r(j) = delta
    terms = w / torch.where(hit, torch.ones_like(diff), diff)
    lam = terms / terms.sum(-1, keepdim=True)
    on_node = hit.any(-1, keepdim=True)
    lam = torch.where(on_node, hit.to(lam.dtype), lam)
    return nodes.to(dtype), lam.to(dtype)


class _CosineFeatures(torch.autograd.Function):
    """``u_ir = sum_d cos(theta_id nodes_r)``: theta ``(*b, L, D)``, nodes ``(n,)`` -> ``(*b, L, n)``, rows in
    blocks of ~``BLOCK_ELEMENTS`` angles; saves only theta and recomputes the angles in backward
    (``du_ir/dtheta_id = -nodes_r sin(theta_id nodes_r)``). Angle blocks are laid out ``(T, n, D)`` so the
    sum over terms is a contiguous innermost reduction (several times faster on the CPU than over a
    middle dim)."""

    @staticmethod
    def forward(ctx, theta, nodes):
        ctx.save_for_backward(theta, nodes)
        out = theta.new_empty(*theta.shape[:-1], nodes.numel())
        per_row = theta.shape[:-2].numel() * theta.shape[-1] * nodes.numel()
        for rows in block_slices(theta.shape[-2], per_row, device=theta.device):
            out[..., rows, :] = torch.cos(theta[..., rows, None, :] * nodes[:, None]).sum(-1)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, G):
        theta, nodes = ctx.saved_tensors
        gt = torch.empty_like(theta)
        per_row = theta.shape[:-2].numel() * theta.shape[-1] * nodes.numel()
        for rows in block_slices(theta.shape[-2], per_row, device=theta.device):
            sin = torch.sin(theta[..., rows, None, :] * nodes[:, None])                # (*b, T, n, D)
            weight = (G[..., rows, :] * nodes)[..., None, :]                          # (*b, T, 1, n)
            gt[..., rows, :] = -(weight @ sin).squeeze(-2)
        return gt, None


def _chebyshev_product(x: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor, n: int) -> torch.Tensor:
    """``U (Lam^T x) - Lam (V^T x)`` with n points (x, theta, phi expanded to one batch shape)."""
    nodes, lam = _interpolation_matrix(x.shape[-2], n, x.dtype, x.device)
    U = _CosineFeatures.apply(theta, nodes)
    V = _CosineFeatures.apply(phi, nodes)
    return U @ (lam.transpose(0, 1) @ x) - lam @ (V.transpose(-1, -2) @ x)


def _check_chebyshev_feasible(cplan: ChebyshevPlan, eps: float) -> None:
    if cplan.n > cplan.length:
        raise ValueError(
            f"the 'chebyshev' path needs n = {cplan.n} points for eps = {eps:g} at Omega = max|theta| (L-1)/2 = "
            f"{cplan.omega:.6g}, more than L = {cplan.length} (it only pays when n << L: small angles, e.g. "
            f"scale 1e-3); use method_fast='nufft' (any angles, O(L log L)), 'tiled' (exact) or 'auto'")


def vandermonde_matmul_chebyshev(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float = 1.0,
                                 eps: float | None = None) -> torch.Tensor:
    """Approximate ``M x`` with ``m_ij = sum_d cos(2 pi s q_id j) - cos(2 pi s k_jd i)`` by Chebyshev
    interpolation in the index (module docstring, ``chebyshev``).

    x: ``(*batch, L, P)``; q, k: ``(*batch, L, D)`` (batch dims broadcast). n = ``chebyshev_plan(L, Omega,
    eps).n`` points, Omega = pi s (L-1) max(|q|, |k|) over the whole batch. Per column p:
    ``|y_hat_i - y_i| <= 2 D E ||x_p||_1`` (+ rounding), E <= eps; gradients (autograd through the
    approximant) within the E' bounds of the module docstring. Cost O(L n (D + P)), memory O(L (n + P)).
    Raises ValueError when n > L (large angles: use the nufft or tiled path). Where :func:`kernels.enabled`
    (CUDA): ``kernels.vandermonde_chebyshev_product``, fused and without a host sync, n per batch element on the
    device (its own Omega, so within the same bound), NaN outputs for an element needing more than
    ``min(L, 1024)`` points instead of the ValueError.
    """
    scale = _check_scale(scale)
    eps = NUFFT_DEFAULT_EPS.get(x.dtype, NUFFT_DEFAULT_EPS[torch.float32]) if eps is None else _check_nufft_eps(eps)
    return _chebyshev_matmul(x, q, k, scale, eps)


def _chebyshev_matmul(x, q, k, scale: float, eps: float, n: int | None = None) -> torch.Tensor:
    """The Chebyshev product, n points for the batch (None: from its Omega, read on the host). Where
    :func:`kernels.enabled`: the fused kernels, no host sync, n per batch element on the device, capped at n + 1
    (None: at min(L, 1024); NaN past the cap)."""
    import kernels
    if kernels.enabled(x):
        from kernels.chebyshev import points_cap
        n_cap = points_cap(x.shape[-2], None if n is None else n + 1)
        return kernels.vandermonde_chebyshev_product(x, q, k, scale, chebyshev_omega_limits(n_cap, eps))
    x, q, k = expand_matrices(x, q, k)
    if n is None:
        cplan = chebyshev_plan(x.shape[-2], chebyshev_omega(q, k, scale), eps)
        _check_chebyshev_feasible(cplan, eps)
        n = cplan.n
    theta, phi = (2 * math.pi * scale) * q, (2 * math.pi * scale) * k
    return _chebyshev_product(x, theta, phi, n)


FAST_METHODS = ("auto", "nufft", "chebyshev", "tiled")
#: The approximate paths (eps applies to them; the first one names the path in option errors).
APPROXIMATE_METHODS = ("nufft", "chebyshev")
# Cost-model constants (multiply-add units, fitted on a 2-core CPU in float32; see the module docstring).
_COST_TILED_COS = 16.0        # one angle product + cosine + accumulate per (i, j, d) and term kind
_COST_FFT = 5.0               # per grid point, column and log2(n) of a complex FFT
_COST_GRID_PASS = 40.0        # elementwise passes over the (n, P) grid per transform
_COST_SPARSE = 3.0            # per window entry and real column (sparse matmul + phases)
_COST_OVERHEAD = 2e6          # fixed per-call overhead of the NUFFT path (index building, launches)
_COST_CHEB_COS = 8.0          # one angle product + cosine + accumulate per (i, r, d) and term kind
_COST_CHEB_RHS = 4.0          # four (L x n) x (n x P) GEMM passes per (i, r, right-hand side)
_COST_CHEB_OVERHEAD = 2e5     # fixed per-call overhead of the Chebyshev path (plan, Omega synchronization)


class VandermondePlan(NamedTuple):
    """How :meth:`Vandermonde.matmul` computes a product (see :meth:`Vandermonde.plan`)."""

    method: str           # "nufft", "chebyshev" or "tiled"
    eps: float            # requested accuracy of the chosen approximate path (0.0 for tiled)
    bound: float          # E of the chosen path: |y_hat_i - y_i| <= 2 D E ||x_p||_1 (0.0 for tiled)
    half_width: int       # S, window half-width of the NUFFT (0 where nufft was not a candidate)
    cost_nufft: float     # model cost per batch element (multiply-add units; nan where not a candidate)
    cost_tiled: float
    n_points: int = 0     # Chebyshev points n (0 where chebyshev was not a candidate)
    omega: float = math.nan           # Omega = max |theta| (L-1)/2 the Chebyshev bound holds for
    cost_chebyshev: float = math.nan  # inf where n > L (the path is unavailable)


class _Assessment(NamedTuple):
    cost: float
    bound: float
    fields: dict          # VandermondePlan fields this path fills in


def _assess_nufft(L: int, D: int, P: int, eps: float, q, k, scale) -> _Assessment:
    nplan = nufft_plan(L, eps)
    n = nplan.n
    window_entries = L * D * 2 * nplan.half_width              # per window (q-side and k-side)
    cost = (2 * n * P * (_COST_FFT * math.log2(n) + _COST_GRID_PASS)
            + 2 * window_entries * 2 * P * _COST_SPARSE + _COST_OVERHEAD)
    return _Assessment(cost, nplan.bound, {"half_width": nplan.half_width, "cost_nufft": cost})


def _assess_chebyshev(L: int, D: int, P: int, eps: float, q, k, scale) -> _Assessment:
    cplan = chebyshev_plan(L, chebyshev_omega(q, k, scale), eps)
    cost = (L * cplan.n * (2 * _COST_CHEB_COS * D + _COST_CHEB_RHS * P) + _COST_CHEB_OVERHEAD
            if cplan.n <= L else math.inf)
    return _Assessment(cost, cplan.bound, {"n_points": cplan.n, "omega": cplan.omega, "cost_chebyshev": cost})


def _product_nufft(x, q, k, scale, plan: VandermondePlan) -> torch.Tensor:
    return vandermonde_matmul_nufft(x, q, k, scale, eps=plan.eps)


def _product_chebyshev(x, q, k, scale, plan: VandermondePlan) -> torch.Tensor:
    return _chebyshev_matmul(x, q, k, scale, plan.eps, plan.n_points)


#: The approximate paths: how each is costed (with its bound and plan fields) and run.
_APPROXIMATE = {"nufft": (_assess_nufft, _product_nufft), "chebyshev": (_assess_chebyshev, _product_chebyshev)}


@register("vandermonde")
class Vandermonde(StructuredMatrix):
    r"""Sum of D cosine-Vandermonde term pairs, ``m_ij = sum_d cos(2 pi s q_id j) - cos(2 pi s k_jd i)``.

    Parameters
    ----------
    q, k : ``(*batch, L, D)`` real tensors (batch dims broadcast).
    scale : s > 0, the angle scale (Hydra's sequence-aligned code uses 1e-3; the paper's formula 1).
    validate : check that q, k are finite (ValueError otherwise); shapes are always checked.
    eps : accuracy target E of the approximate paths (nufft, chebyshev), in [1e-14, 0.1]; None = 1e-12 for
        float64, 1e-6 for float32. Must be None with ``method_fast="tiled"``.
    method_fast : ``"auto"`` (cheapest by the cost model), ``"nufft"``, ``"chebyshev"`` or ``"tiled"``.
    tile : rows per tile of the exact matrix-free product (None = automatic). Must be None with an
        approximate ``method_fast`` (a setting the chosen path never reads is an error, not ignored).

    ``order`` is D. ``matmul(x)``: ``nufft`` O(L S D P + L log L P) (S ~ log10(1/eps)) and ``chebyshev``
    O(L n (D + P)) (n ~ Omega + log(1/eps) points, Omega = pi s (L-1) max(|q|, |k|); only for small angles),
    both approximate with the bound ``|y_hat_i - y_i| <= 2 D E ||x_p||_1`` per column p (E <= eps,
    :attr:`error_eps`); ``tiled`` exact, O(L^2 (D + P)) work and O(L tile D) memory. All recompute their
    angle blocks in backward (module docstring).
    Defining property: per term, ``rank(2 D_{cos theta} A - A (Z + Z^T)) <= 2`` for the q-term and the
    same for the transposed k-term.
    """

    property_name = "per term: cosine displacement rank <= 2 (q-term and transposed k-term)"
    approximate = True
    error_bound = ("nufft and chebyshev paths: |y_hat_i - y_i| <= 2 D E ||x_p||_1 per column p (+ rounding), "
                   "E <= eps = 1e-12 (float64) / 1e-6 (float32) unless given (see error_eps); the tiled path is "
                   "exact")

    def __init__(self, q: torch.Tensor, k: torch.Tensor, scale: float = 1.0, validate: bool = True,
                 eps: float | None = None, method_fast: str = "auto", tile: int | None = None):
        check_tensor("q", q, trailing=(None, None))
        check_tensor("k", k, trailing=(None, None))
        if q.shape[-2:] != k.shape[-2:]:
            raise ValueError(f"q and k must both have shape (*batch, L, D) with the same L and D; got q "
                             f"{tuple(q.shape)}, k {tuple(k.shape)}")
        self.scale = _check_scale(scale)
        self.tile = check_tile(tile)
        self.eps = None if eps is None else _check_nufft_eps(eps)
        check_method_options(method_fast, FAST_METHODS, eps, tile)
        if validate:
            for name, t in (("q", q), ("k", k)):
                if not bool(torch.isfinite(t).all()):
                    raise ValueError(f"{name} must be finite everywhere, got {int((~torch.isfinite(t)).sum())} "
                                     f"non-finite entries")
        batch = broadcast_batch(q=(q, 2), k=(k, 2))
        super().__init__(q.shape[-2], batch, promote(q, k), q.device, q.shape[-1])
        self.q, self.k = q, k
        self.method_fast = method_fast
        if method_fast == "tiled":
            self.approximate = False
            self.error_bound = None

    def _eps_for(self, dtype: torch.dtype) -> float:
        if self.eps is not None:
            return self.eps
        return NUFFT_DEFAULT_EPS.get(compute_dtype(dtype), NUFFT_DEFAULT_EPS[torch.float32])

    def _candidates(self) -> tuple[str, ...]:
        return APPROXIMATE_METHODS if self.method_fast == "auto" else tuple(
            m for m in APPROXIMATE_METHODS if m == self.method_fast)

    def _assess(self, name: str, P: int, dtype: torch.dtype) -> _Assessment:
        return _APPROXIMATE[name][0](self.length, self.order, P, self._eps_for(dtype), self.q, self.k, self.scale)

    @property
    def error_eps(self) -> float:
        """The E of :attr:`error_bound` in effect for the parameters' compute dtype: the largest bound of the
        approximate paths the product may take (``nufft_plan(L, eps).bound``, ``chebyshev_plan(L, Omega,
        eps).bound`` where n <= L); 0.0 if ``method_fast="tiled"``, which is exact up to rounding."""
        bounds = [a.bound for a in (self._assess(m, 1, self.dtype) for m in self._candidates())
                  if math.isfinite(a.cost)]
        return max(bounds, default=0.0)

    def plan(self, P: int = 1, dtype: torch.dtype | None = None) -> VandermondePlan:
        """The method ``matmul`` uses for ``P`` right-hand sides in ``dtype`` (default: the parameters'
        compute dtype), with the quantities the cost model compares. Raises ValueError if
        ``method_fast="chebyshev"`` needs more Chebyshev points than L (angles too large for it)."""
        dtype = compute_dtype(self.dtype if dtype is None else dtype)
        L, D = self.length, self.order
        cost_tiled = float(L) * L * (_COST_TILED_COS * D + 2.0 * P)
        costs, bounds = {"tiled": cost_tiled}, {"tiled": 0.0}
        fields = {"half_width": 0, "cost_nufft": math.nan}
        for name in self._candidates():       # only these are costed (chebyshev reads Omega off the data)
            a = self._assess(name, P, dtype)
            costs[name], bounds[name] = a.cost, a.bound
            fields.update(a.fields)
        method = min(costs, key=costs.get) if self.method_fast == "auto" else self.method_fast
        if not math.isfinite(costs[method]):  # only a forced chebyshev can be unavailable (n > L)
            eps = self._eps_for(dtype)
            _check_chebyshev_feasible(chebyshev_plan(L, chebyshev_omega(self.q, self.k, self.scale), eps), eps)
        eps = 0.0 if method == "tiled" else self._eps_for(dtype)
        return VandermondePlan(method, eps, bounds[method], cost_tiled=cost_tiled, **fields)

    def _angles(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        w = 2 * math.pi * self.scale
        return w * self.q.to(dtype), w * self.k.to(dtype)

    def term_matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B), each ``(*batch, D, L, L)`` in the compute dtype: ``A[d]_ij = cos(theta_id j)`` (q-terms)
        and ``B[d]_ij = cos(phi_jd i)`` (k-terms); ``M = sum_d A[d] - B[d]``."""
        dt = compute_dtype(self.dtype)
        theta, phi = self._angles(dt)
        idx = torch.arange(self.length, dtype=dt, device=theta.device)
        theta, phi = theta.transpose(-1, -2), phi.transpose(-1, -2)           # (*b, D, L)
        A = torch.cos(theta[..., :, None] * idx)
        B = torch.cos(phi[..., None, :] * idx[:, None])
        return A, B

    def to_dense(self) -> torch.Tensor:
        dt = compute_dtype(self.dtype)
        theta, phi = self._angles(dt)
        idx = torch.arange(self.length, dtype=dt, device=theta.device)
        out = None
        for d in range(self.order):          # one L x L term at a time; same angle products as the fast path
            term = (torch.cos(theta[..., :, None, d] * idx) -
                    torch.cos(phi[..., None, :, d] * idx[:, None]))
            out = term if out is None else out + term
        return out.expand(*self.batch_shape, self.length, self.length)

    def _fast_matmul(self, x: torch.Tensor) -> torch.Tensor:
        plan = self.plan(x.shape[-1], x.dtype)
        q, k = self.q.to(x.dtype), self.k.to(x.dtype)
        if plan.method in _APPROXIMATE:
            return _APPROXIMATE[plan.method][1](x, q, k, self.scale, plan)
        import kernels
        if kernels.enabled(x):
            batch = x.shape[:-2]
            return kernels.vandermonde_matmul(x, q.expand(*batch, *q.shape[-2:]), k.expand(*batch, *k.shape[-2:]),
                                              self.scale)
        return vandermonde_matmul_tiled(x, q, k, self.scale, tile=self.tile)

    def check_structure(self, tol: float | None = None) -> StructureReport:
        A, B = self.term_matrices()
        tol = P.default_tol(A.dtype) if tol is None else tol
        theta, phi = self._angles(A.dtype)
        rq = P.cosine_displacement_rank(A, theta.transpose(-1, -2), tol).reshape(-1, self.order)
        rk = P.cosine_displacement_rank(B.transpose(-1, -2), phi.transpose(-1, -2), tol).reshape(-1, self.order)
        parts = []
        for d in range(self.order):
            parts.append(P.report(self.name, f"term {d} q-term cos(theta_i j): rank(2 D_cos A - A (Z + Z^T))",
                                  rq[:, d], 2, tol))
            parts.append(P.report(self.name, f"term {d} k-term cos(phi_j i), transposed", rk[:, d], 2, tol))
        return P.report(self.name, self.property_name, torch.cat([rq, rk], -1), 2, tol,
                        detail=f"{2 * self.order} terms checked separately (the sum over terms has a larger "
                               f"displacement rank)", parts=tuple(parts))

    @classmethod
    def random(cls, length, batch_shape=(), order=None, dtype=None, device=None, generator=None):
        """q, k standard normal, scale 1 (angles spread over many periods: a generic, far from low-rank
        instance; Hydra's trained regime is scale = 1e-3)."""
        L, batch, D, dtype = cls._random_args(length, batch_shape, order, dtype, default_order=2)
        q = randn((*batch, L, D), dtype, device, generator)
        k = randn((*batch, L, D), dtype, device, generator)
        return cls(q, k)


__all__ = ["ChebyshevPlan", "Vandermonde", "VandermondePlan", "NufftPlan", "chebyshev_omega", "chebyshev_omega_limits",
           "chebyshev_plan", "nufft_plan", "vandermonde_matmul_chebyshev", "vandermonde_matmul_nufft",
           "vandermonde_matmul_tiled"]
