r"""Cosine-Vandermonde matrices (the Hydra paper's sequence-aligned Vandermonde form).

.. math::

    m_{ij} = \sum_{d=1}^{D} \cos(2\pi s\, q_{id}\, j) - \cos(2\pi s\, k_{jd}\, i),
    \qquad i, j = 0, \dots, L-1,

i.e. per term d a "q-term" ``A^{(d)}_{ij} = cos(theta_id j)`` (row nodes ``theta = 2 pi s q``, a
Chebyshev-Vandermonde matrix ``T_j(cos theta_i)``) minus a "k-term" ``B^{(d)}_{ij} = cos(phi_jd i)``
(column nodes ``phi = 2 pi s k``; ``B^T`` is again cosine-Vandermonde). ``s = scale``.

Notes on the paper's code (goombalab/hydra, ``hydra/modules/matrix_mixers/vandermonde.py``): the
sequence-aligned (data-dependent) mixer uses ``s = 1e-3`` ("to stabilize training"), which the bare
formula omits -- pass ``scale=1e-3`` to match it (its matrices are then nearly low rank at L = 128
since all angles satisfy ``|theta| L <~ 1``). Its fixed (non-data-dependent) branch always takes the
DFT path (``is_dft`` defaults to True and is never passed), so the learned non-DFT fixed Vandermonde
is dead code (and would be a diagonal mixer if it ran); mixerzoo's fixed Vandermonde draws q, k from a
learned table instead, and the fixed DFT matrix is the ``dft`` class.

Fast products (none builds an L x L tensor)
-------------------------------------------
``tiled`` -- exact matrix-free product.
    Rows are processed in tiles of T; for a tile only a ``(T, L, D)`` block of angles exists at a time,
    ``C_tile = sum_d cos(theta_id j) - cos(phi_jd i)``, ``y_tile = C_tile x``: O(L^2 D) cosines and
    O(L^2 P) multiply-adds per batch element, O(L T D) memory. The shared tiled product
    (:func:`structured.tiled.tiled_matmul`) saves only ``x, theta, phi`` and recomputes the tiles in
    backward, with (``G_ij = g_i . x_j``)

        dL/dx        = M^T g
        dL/dtheta_id = -sum_j G_ij j sin(theta_id j),      dL/dq = 2 pi s dL/dtheta
        dL/dphi_jd   = +sum_i G_ij i sin(phi_jd i),        dL/dk = 2 pi s dL/dphi

    Accuracy: the same arithmetic as the explicit product (identical angles ``theta_id * j``), so fast and
    explicit agree to GEMM rounding in every dtype. Against exact arithmetic a float32 angle ``theta j``
    carries a phase error ~``|theta| j u``, so float32 results (fast *and* explicit) drift from float64 by
    ~``L |theta|_max u`` per entry. On CUDA with Triton this path dispatches to ``kernels.vandermonde_matmul``.

``nufft`` -- Gaussian-gridding non-uniform FFTs (approximate, stated bound).
    Per term, the q-term ``sum_j cos(theta_i j) x_j = Re sum_j x_j e^{i j theta_i}`` is a **type-2** NUFFT
    (uniform modes j -> nonuniform points theta_i) and the k-term ``sum_j cos(phi_j i) x_j =
    Re sum_j x_j e^{i phi_j i}`` a **type-1** NUFFT (nonuniform sources phi_j -> uniform modes i); modes are
    centred (``k' = j - L//2``, phase ``e^{i (L//2) t}``), grid n = max(2L, 32), Gaussian window
    ``psi(t) = exp(-t^2/(4 tau))`` on the 2S nearest grid points, deconvolution by its transform
    ``Psi(k) = sqrt(4 pi tau) e^{-k^2 tau}`` (Dutt & Rokhlin, SISC 14(6), 1993; Greengard & Lee,
    "Accelerating the nonuniform fast Fourier transform", SIAM Review 46(3), 2004). The x-side FFT is shared
    by all D q-terms and all D k-terms spread onto one grid, so a product costs two length-n FFTs of P columns
    plus two sparse window products with ``L D 2S`` entries: O(n log n P + L D S P), memory O(L D S + n P).
    Windows are CSR matrices (one sparse-dense matmul each) built from node positions computed in float64.
    **Error bound** (exact arithmetic; :func:`nufft_plan` picks the smallest S and the best tau for it):
    for every node, ``|F_hat(t) - F(t)| <= E sum_j |a_j|`` with

        E = max_{|k'| <= L/2} sum_{m != 0} e^{-tau((k' - m n)^2 - k'^2)}
            + h / sqrt(4 pi tau) e^{(L/2)^2 tau} 2 sum_{r >= 0} e^{-((S + r) h)^2/(4 tau)},   h = 2 pi / n,

    (aliasing + window truncation, by Poisson summation), E <= eps; S = 7 for eps = 1e-6, 14 for 1e-12.
    Hence, per column p, ``|y_hat_i - y_i| <= 2 D E ||x_p||_1``; ``|gx_hat_j - gx_j| <= 2 D E ||g_p||_1``;
    ``|gq_hat_id - gq_id| <= 2 pi s E sum_p |g_ip| sum_j j |x_jp|`` and symmetrically for k. Gradients are
    analytic (again NUFFTs: ``d/dtheta sum_j a_j e^{i j theta} = sum_j i j a_j e^{i j theta}``, the form
    pytorch-finufft uses), not autograd through the window. Rounding adds ~``e^{(L/2)^2 tau} (2S + log2 n) u
    ||x||_1`` (the deconvolution factor is about e^{S pi / 12}: 39 at S = 14). Default eps: 1e-12 (float64),
    1e-6 (float32). Exponential-of-semicircle windows (Barnett, Magland & af Klinteberg, "A parallel
    non-uniform fast Fourier transform library based on an 'exponential of semicircle' kernel", SISC
    41(5), 2019) need ~half the width for the same eps; the Gaussian was chosen for its closed-form
    transform, which makes E computable exactly.

Choosing (``method_fast="auto"``): cost per batch element (multiply-add units, fitted on a 2-core CPU in
float32) ``tiled ~ L^2 (16 D + 2P)`` vs. ``nufft ~ 2 n P (5 log2 n + 40) + 24 L D S P + 2e6`` (two windows of
2 L D S entries, each applied to 2P real columns at 3 units); auto takes the smaller. Model crossover at
P = 64, float32 (S = 7): L ~ 320 (D = 2), ~ 520 (D = 16). :meth:`Vandermonde.plan`
reports the decision.

Defining property (``check_structure``): ``cos((j+1)t) + cos((j-1)t) = 2 cos t cos(jt)`` gives
``2 D_{cos theta} A - A (Z + Z^T)`` nonzero only in the first and last columns (rank <= 2) for every
q-term, and the same for ``B^T`` with nodes phi; the sum over terms breaks it, so terms are checked one
by one.

References: Hwang et al., Hydra (arXiv 2407.09941), Table 2; Kailath & Sayed, "Displacement structure",
SIAM Review 37(3), 1995 (Chebyshev-Vandermonde displacement).
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
from .base import (StructuredMatrix, StructureReport, broadcast_batch, check_tensor, compute_dtype, expand_matrices,
                   promote, randn)
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


FAST_METHODS = ("auto", "nufft", "tiled")
# Cost-model constants (multiply-add units, fitted on a 2-core CPU in float32; see the module docstring).
_COST_TILED_COS = 16.0        # one angle product + cosine + accumulate per (i, j, d) and term kind
_COST_FFT = 5.0               # per grid point, column and log2(n) of a complex FFT
_COST_GRID_PASS = 40.0        # elementwise passes over the (n, P) grid per transform
_COST_SPARSE = 3.0            # per window entry and real column (sparse matmul + phases)
_COST_OVERHEAD = 2e6          # fixed per-call overhead of the NUFFT path (index building, launches)


class VandermondePlan(NamedTuple):
    """How :meth:`Vandermonde.matmul` computes a product (see :meth:`Vandermonde.plan`)."""

    method: str           # "nufft" or "tiled"
    eps: float            # requested NUFFT accuracy (0.0 for tiled)
    bound: float          # E of nufft_plan: |y_hat_i - y_i| <= 2 D E ||x_p||_1 (0.0 for tiled)
    half_width: int       # S, window half-width of the NUFFT
    cost_nufft: float     # model cost per batch element (multiply-add units)
    cost_tiled: float


@register("vandermonde")
class Vandermonde(StructuredMatrix):
    r"""Sum of D cosine-Vandermonde term pairs, ``m_ij = sum_d cos(2 pi s q_id j) - cos(2 pi s k_jd i)``.

    Parameters
    ----------
    q, k : ``(*batch, L, D)`` real tensors (batch dims broadcast).
    scale : s > 0, the angle scale (Hydra's sequence-aligned code uses 1e-3; the paper's formula 1).
    validate : check that q, k are finite (ValueError otherwise); shapes are always checked.
    eps : accuracy target of the NUFFT path, in [1e-14, 0.1]; None = 1e-12 for float64, 1e-6 for float32.
        Must be None with ``method_fast="tiled"``.
    method_fast : ``"auto"`` (cheaper by the cost model), ``"nufft"`` or ``"tiled"``.
    tile : rows per tile of the exact matrix-free product (None = automatic). Must be None with
        ``method_fast="nufft"`` (a setting the chosen path never reads is an error, not ignored).

    ``order`` is D. ``matmul(x)``: ``nufft`` O(L S D P + L log L P) (S ~ log10(1/eps)), approximate with the
    bound ``|y_hat_i - y_i| <= 2 D E ||x_p||_1`` per column p (E <= eps, :attr:`error_eps`); ``tiled``
    exact, O(L^2 (D + P)) work and O(L tile D) memory. Both recompute in backward (module docstring).
    Defining property: per term, ``rank(2 D_{cos theta} A - A (Z + Z^T)) <= 2`` for the q-term and the
    same for the transposed k-term.
    """

    property_name = "per term: cosine displacement rank <= 2 (q-term and transposed k-term)"
    approximate = True
    error_bound = ("nufft path: |y_hat_i - y_i| <= 2 D E ||x_p||_1 per column p (+ rounding), E <= eps = 1e-12 "
                   "(float64) / 1e-6 (float32) unless given (see error_eps); the tiled path is exact")

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

    @property
    def error_eps(self) -> float:
        """The E of :attr:`error_bound` in effect (``nufft_plan(L, eps).bound`` for the parameters' compute
        dtype; 0.0 if ``method_fast="tiled"``, which is exact up to rounding)."""
        if self.method_fast == "tiled":
            return 0.0
        return nufft_plan(self.length, self._eps_for(self.dtype)).bound

    def plan(self, P: int = 1, dtype: torch.dtype | None = None) -> VandermondePlan:
        """The method ``matmul`` uses for ``P`` right-hand sides in ``dtype`` (default: the parameters'
        compute dtype), with the quantities the cost model compares."""
        dtype = compute_dtype(self.dtype if dtype is None else dtype)
        L, D = self.length, self.order
        cost_tiled = float(L) * L * (_COST_TILED_COS * D + 2.0 * P)
        if self.method_fast == "tiled":
            return VandermondePlan("tiled", 0.0, 0.0, 0, math.nan, cost_tiled)
        eps = self._eps_for(dtype)
        nplan = nufft_plan(L, eps)
        n = nplan.n
        window_entries = L * D * 2 * nplan.half_width              # per window (q-side and k-side)
        cost_nufft = (2 * n * P * (_COST_FFT * math.log2(n) + _COST_GRID_PASS)
                      + 2 * window_entries * 2 * P * _COST_SPARSE + _COST_OVERHEAD)
        method = self.method_fast
        if method == "auto":
            method = "nufft" if cost_nufft < cost_tiled else "tiled"
        if method == "tiled":
            return VandermondePlan("tiled", 0.0, 0.0, nplan.half_width, cost_nufft, cost_tiled)
        return VandermondePlan("nufft", eps, nplan.bound, nplan.half_width, cost_nufft, cost_tiled)

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
        if plan.method == "nufft":
            return vandermonde_matmul_nufft(x, q, k, self.scale, eps=plan.eps)
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


__all__ = ["Vandermonde", "VandermondePlan", "NufftPlan", "nufft_plan", "vandermonde_matmul_nufft",
           "vandermonde_matmul_tiled"]
