r"""Cauchy-like matrices with positive nodes (the Hydra paper's sequence-aligned form).

    m_ij = sum_{d=1..D} 1 / (q_id + k_jd + c),      q, k > 0, c >= 0,

a sum of D Cauchy terms ``1/(x_i + y_j)`` with nodes ``x = q[..., d] + c``, ``y = k[..., d]``. Parameters
``q, k``: ``(*batch, L, D)``; products take ``x: (*batch, L, P)`` and return ``(*batch, L, P)``. Positivity is a
validated precondition (a mixer reparameterizes with exp/softplus; Hydra's code adds an unconstrained bias).
:func:`cauchy_dense` builds the general form ``1/(x_i - y_j)`` for rank tests.

Fast products (``method_fast``; none builds an L x L tensor):

* ``expsum``: the trapezoid rule for ``1/z = int exp(s - e^s z) ds`` on ``z`` scaled into ``[1, R]`` gives a
  positive rank-M factorization ``1/(x_i + y_j) ~= (U V^T)_ij``, so ``y = U (V^T x)``: O(D M L P) flops,
  O(D M L) memory, ``M ~= (ln(4R/eps) + ln ln(4/eps)) ln(1000/eps) / pi^2`` (45 at eps = 1e-6, R = 10).
  **Bound** (entrywise, values and gradients): ``|y_hat - y| <= eps (|M||x|) + rounding``,
  ``|gx_hat - gx| <= eps (|M|^T |g|) + rounding``, rounding ``<= (L + D M + 32) u (|M||x|)``. Default eps by
  the dtype of x: 1e-13 (float64), 1e-6 (float32), 1e-3 (bfloat16), 1e-4 (float16). On CUDA with Triton
  it runs as fused kernels (``kernels.cauchy``) with the nodes placed on the device (no host sync).
* ``tiled``: exact and matrix-free: row tiles of ``(T, L, D)`` denominators, recomputed in backward
  (:func:`structured.tiled.tiled_matmul`); O(L^2 (D + P)) flops, O(L T D) memory, rounding like a dense
  product. On CUDA with Triton: ``kernels.cauchy_matmul``.
* ``auto`` (default): the cheaper by :data:`COST_MODELS`; :meth:`Cauchy.plan` reports the decision.

Defining property (``check_structure``): per term, ``rank(D_x C + C D_y) <= 1``.

The derivation of the quadrature and its bound, the GPU path and the fitted cost constants (with how to
refit them) are in ``docs/algorithms.md``. References: DLMF 3.5 (trapezoid rule for analytic integrands);
Beckermann & Townsend, SIAM Review 61(2), 2019 (ranks of Cauchy matrices); Hwang et al., Hydra
(arXiv 2407.09941), Table 2.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from . import properties as P
from . import register
from .base import (
    StructuredMatrix,
    StructureReport,
    broadcast_batch,
    check_tensor,
    compute_dtype,
    expand_matrices,
    promote,
    randn,
)
from .tiled import check_method_options, check_tile, tiled_matmul

FAST_METHODS = ("auto", "expsum", "tiled")
#: Default entrywise relative accuracy of the exponential-sum expansion, per dtype of x (the product's
#: operand): below each dtype's unit roundoff (module docstring, "Default eps").
DEFAULT_EPS = {torch.float64: 1e-13, torch.float32: 1e-6, torch.bfloat16: 1e-3, torch.float16: 1e-4}
#: Accepted range of ``eps`` (below 1e-15 float64 rounding dominates; above 0.1 it is not an approximation).
EPS_RANGE = (1e-15, 0.1)


class CostModel(NamedTuple):
    """Constants of the ``method_fast="auto"`` rule (per batch element; only ratios matter):
    ``expsum ~ L r (expsum_rhs P + expsum_feature)`` with r = D M, ``tiled ~ L^2 (tiled_term D + tiled_rhs P)``."""

    expsum_feature: float   # per (row, feature): the exponentials of U and V and their scaling
    expsum_rhs: float       # per (row, feature, right-hand side): the two GEMMs
    tiled_term: float       # per (i, j, d): add, reciprocal, accumulate
    tiled_rhs: float        # per (i, j, right-hand side)


#: Cost models by backend (module docstring, "Choosing"): "torch" fitted on a 2-core CPU in float32
#: (multiply-add units); "triton" for the GPU kernels in tensor-core flop units, one exponential or
#: reciprocal counted as 100 (the H100's bf16 matmul rate over its special-function rate), with
#: fwd+bwd passes: tiled = 1.5 D reciprocal-equivalents per entry at the measured ~25% of that rate
#: (12.1 ms at L = 2048, B*H = 96, D = 16, P = 128 in ``results/bench/kernels_matfree.json``) plus 6 P,
#: expsum = 4 exponentials and 12 P flops per (row, feature). Refit both from the benchmark JSON.
COST_MODELS = {"torch": CostModel(expsum_feature=12.0, expsum_rhs=2.0, tiled_term=8.0, tiled_rhs=2.0),
               "triton": CostModel(expsum_feature=400.0, expsum_rhs=12.0, tiled_term=700.0, tiled_rhs=6.0)}


def _check_eps(eps) -> float | None:
    if eps is None:
        return None
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (EPS_RANGE[0] <= eps <= EPS_RANGE[1]):
        defaults = ", ".join(f"{v:g} for {str(k).removeprefix('torch.')}" for k, v in DEFAULT_EPS.items())
        raise ValueError(f"eps must be None (a default per dtype of x: {defaults}) or a float in "
                         f"[{EPS_RANGE[0]:g}, {EPS_RANGE[1]:g}], got {eps!r}")
    return float(eps)


# --------------------------------------------------------------------------------------------------
# Exponential sums for 1/z on [1, R]
# --------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def quadrature_constants(eps: float) -> tuple[float, float, float]:
    """``(h, s_hi, ln(eps/4))`` of the trapezoid rule for accuracy eps (module docstring): the step, the
    right end of the interval, and the left end for R = 1 (``s_lo = ln(eps/4) - ln R``). One place for the
    rule: :func:`exp_sum_nodes` and the GPU kernels (``kernels.cauchy``, which place nodes per batch element
    and term on the device) both derive their nodes from these numbers."""
    return math.pi ** 2 / math.log(1000.0 / eps), math.log(math.log(4.0 / eps)) + 0.5, math.log(eps / 4.0)


def _grid(eps: float, log_r: float) -> tuple[float, float, float, int]:
    """``(h, s_lo, s_hi, n)``: step, interval and node count ``ceil((s_hi - s_lo) / h) + 1`` for eps on
    [1, R], ``log_r = ln R``."""
    h, s_hi, log_eps4 = quadrature_constants(eps)
    s_lo = log_eps4 - log_r
    return h, s_lo, s_hi, int(math.ceil((s_hi - s_lo) / h)) + 1


def node_count(eps: float, R: float) -> int:
    """The number of trapezoid nodes for accuracy eps on [1, R] (no rounding of R)."""
    return _grid(eps, math.log(R))[3]


@functools.lru_cache(maxsize=512)
def _trapezoid_nodes_cached(eps: float, log2_r: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    h, s_lo, s_hi, n = _grid(eps, log2_r * math.log(2.0))
    if count > n:
        # the same interval [s_lo, s_hi] with a finer step: tails unchanged, discretization error smaller
        n, h = count, (s_hi - s_lo) / (count - 1)
    s = s_lo + h * torch.arange(n, dtype=torch.float64)
    tau = torch.exp(s)
    return tau, h * tau


def exp_sum_nodes(eps: float, R: float, min_count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exponents ``tau`` and weights ``w`` (float64, shape ``(M,)``) with
    ``|z sum_m w_m exp(-tau_m z) - 1| <= eps`` and ``|z^2 sum_m w_m tau_m exp(-tau_m z) - 1| <= eps``
    for every z in [1, R] (trapezoid rule on ``1/z = int e^s exp(-e^s z) ds``; DLMF 3.5(i)).

    R is rounded up to a power of two (so node sets are cached and reused across batches).
    M grows like ``ln(4R/eps) ln(1000/eps) / pi^2``. ``min_count``: at least this many nodes; when it
    exceeds the minimal M, ``min_count`` nodes spread over the same interval (a smaller step h: the tails
    are unchanged and the discretization error only shrinks, so the same bound holds). The GPU kernels
    round their counts up to a multiple of their chunk this way (on the device, from the exact R of each term).
    """
    eps = _check_eps(eps)
    if eps is None:
        raise ValueError("eps must be a float in "
                         f"[{EPS_RANGE[0]:g}, {EPS_RANGE[1]:g}] for exp_sum_nodes, got None")
    if not (isinstance(R, (int, float)) and math.isfinite(R) and R >= 1.0):
        raise ValueError(f"R must be a finite number >= 1 (the ratio of the largest to the smallest "
                         f"denominator), got {R!r}")
    if min_count is not None and (isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1):
        raise ValueError(f"min_count must be None or a positive int (number of nodes), got {min_count!r}")
    return _trapezoid_nodes_cached(eps, max(0, math.ceil(math.log2(R) - 1e-12)), min_count or 0)


def _node_scaling(xn: torch.Tensor, yn: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Per (batch, term) scaling ``a`` (shape ``(*batch, 1, D)``, detached, in the compute dtype) and the
    worst ratio R."""
    xn, yn = xn.detach(), yn.detach()
    if not xn.numel():
        return xn.sum(-2, keepdim=True), 1.0
    # extremes are exact in any dtype; their sums are formed in the compute dtype (float32 for halves),
    # so a = min x + min y is not rounded up past the smallest denominator by a bf16 addition
    cd = compute_dtype(torch.promote_types(xn.dtype, yn.dtype))
    x_lo, x_hi = torch.aminmax(xn, dim=-2, keepdim=True)
    y_lo, y_hi = torch.aminmax(yn, dim=-2, keepdim=True)
    lo, hi = x_lo.to(cd) + y_lo.to(cd), x_hi.to(cd) + y_hi.to(cd)
    # one device synchronization for both numbers (the node count depends on R)
    lo_min, R = torch.stack([lo.amin().double(), (hi.double() / lo.double()).amax()]).tolist()
    if not lo_min > 0:
        raise ValueError(f"the exponential-sum path needs positive denominators q + c + k (Cauchy(validate=False) "
                         f"skipped the check); got min(q + c) + min(k) = {lo_min:.6g}")
    return lo, max(R, 1.0)


def cauchy_matmul_expsum(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, c=0.0,
                         eps: float | None = None) -> torch.Tensor:
    """Approximate ``M x`` with ``m_ij = sum_d 1/(q_id + k_jd + c)`` by the exponential-sum expansion.

    x: ``(*batch, L, P)``; q, k: ``(*batch, L, D)`` with ``q + c + k > 0``; c a float or 0-dim tensor; batch
    dims broadcast. Returns ``(*batch, L, P)`` in x's dtype. Error bound (module docstring):
    ``|y_hat - y| <= eps (|M||x|) + rounding``, entrywise, and likewise for the gradients with respect to
    x, q, k, c (autograd through the expansion). Cost O(D M L P), M = number of nodes.
    On CUDA with Triton (:func:`kernels.enabled`) the expansion runs as fused feature-map kernels
    (``kernels.cauchy.cauchy_expsum_product``): the scaling and the nodes are chosen on the device for
    each batch element and term (no host synchronization), the node count rounded up to a multiple of the chunk
    by a finer step, and no ``(L, D M)`` factor is ever stored; a non-positive denominator, or a spread R
    beyond ``kernels.cauchy.R_MAX``, gives NaN there instead of the ValueError of the torch path.
    Elsewhere it runs as the torch GEMMs ``U (V^T x)`` with one node set for the whole batch.
    """
    eps = _check_eps(eps)
    if eps is None:
        eps = DEFAULT_EPS.get(x.dtype, DEFAULT_EPS[torch.float32])
    x, q, k = expand_matrices(x, q, k)
    xn, yn = (q, k) if isinstance(c, float) and c == 0.0 else (q + c, k)
    kc = _expsum_kernels(x)
    if kc is not None:
        return kc.cauchy_expsum_product(x, xn, yn, quadrature_constants(eps))
    a, R = _node_scaling(xn, yn)
    tau, w = exp_sum_nodes(eps, R)
    return _expsum_product(x, xn, yn, a.to(xn.dtype), tau.to(x.device, x.dtype), w.to(x.device, x.dtype))


def _expsum_kernels(t: torch.Tensor):
    """``kernels.cauchy`` if products on ``t`` run the Triton kernels (:func:`kernels.enabled`), else None."""
    import kernels
    if not kernels.enabled(t):
        return None
    from kernels import cauchy as kc
    return kc


def _expsum_product(x, xn, yn, a, tau, w):
    # exponents -tau x/a are <= 0: U, V in (0, w/a] and (0, 1]; contract V^T x first (rank r << L).
    inv_a = (1.0 / a)[..., None]                                    # (*b, 1, D, 1)
    U = (w * inv_a) * torch.exp(-(xn[..., None] * inv_a) * tau)     # (*b, L, D, M)
    V = torch.exp(-(yn[..., None] * inv_a) * tau)
    U = U.flatten(-2)
    V = V.flatten(-2)
    return U @ (V.transpose(-1, -2) @ x)


# --------------------------------------------------------------------------------------------------
# Exact tiled product with recomputation in backward
# --------------------------------------------------------------------------------------------------
class _CauchyTiles:
    """:class:`structured.tiled.TileSpec` of ``m_ij = sum_d 1/(xn_id + yn_jd)``; a tile holds the reciprocal
    denominators ``(*b, T, L, D)``."""

    @staticmethod
    def tile(rows, xn, yn):
        return torch.reciprocal(xn[..., rows, None, :] + yn[..., None, :, :])

    @staticmethod
    def matrix(inv):
        return inv.sum(-1)

    @staticmethod
    def add_param_grads(inv, G, rows, grads, xn, yn):
        # d(1/den)/d xn_id = d(1/den)/d yn_jd = -1/den^2
        W = G[..., None] * inv.square_()                              # (*b, T, L, D)
        gxn, gyn = grads
        if gxn is not None:
            gxn[..., rows, :] -= W.sum(-2)
        if gyn is not None:
            gyn -= W.sum(-3)


def cauchy_matmul_tiled(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, c=0.0,
                        tile: int | None = None) -> torch.Tensor:
    """Exact ``M x`` with ``m_ij = sum_d 1/(q_id + k_jd + c)``, matrix-free (:func:`structured.tiled.tiled_matmul`).

    x: ``(*batch, L, P)``; q, k: ``(*batch, L, D)``; c float or 0-dim tensor; batch dims broadcast.
    Rows are processed ``tile`` at a time (default: about ``structured.base.BLOCK_ELEMENTS`` elements per
    ``(batch, tile, L, D)`` block on the CPU), so memory is
    O(batch * tile * L * D) in forward and backward (tiles are recomputed in backward; autograd saves
    only x, q + c, k). Cost O(L^2 (D + P)) per batch element. Differentiable in x, q, k, c.
    """
    tile = check_tile(tile)
    x, q, k = expand_matrices(x, q, k)
    return tiled_matmul(_CauchyTiles, x, q + c, k, inner=q.shape[-1], tile=tile)


# --------------------------------------------------------------------------------------------------
# General Cauchy matrix (test matrix for rank properties)
# --------------------------------------------------------------------------------------------------
def cauchy_dense(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The general Cauchy matrix ``C_ij = 1/(x_i - y_j)``.

    x: ``(*batch, m)``, y: ``(*batch, n)`` (batch dims broadcast) -> ``(*batch, m, n)``. It satisfies
    ``D_x C - C D_y = 1 1^T`` (displacement rank 1). Raises ValueError if some ``x_i == y_j``.
    """
    check_tensor("x", x, trailing=(None,))
    check_tensor("y", y, trailing=(None,))
    broadcast_batch(x=(x, 1), y=(y, 1))
    diff = x[..., :, None] - y[..., None, :]
    if bool((diff == 0).any()):
        idx = torch.nonzero(diff == 0)[0].tolist()
        raise ValueError(f"x and y must not share a value (1/(x_i - y_j) would be infinite); "
                         f"x_i == y_j at index {tuple(idx)}")
    return torch.reciprocal(diff)


# --------------------------------------------------------------------------------------------------
# The class
# --------------------------------------------------------------------------------------------------
class CauchyPlan(NamedTuple):
    """How :meth:`Cauchy.matmul` computes a product (see :meth:`Cauchy.plan`)."""

    method: str          # "expsum" or "tiled"
    eps: float           # entrywise relative accuracy of the expansion (0.0 for tiled)
    R: float             # worst denominator ratio max/min over the batch and terms (nan if tiled is forced)
    n_nodes: int         # exponential-sum nodes per term (M; 0 if tiled is forced)
    rank: int            # D * M
    cost_expsum: float   # model cost per batch element (units of COST_MODELS[backend])
    cost_tiled: float
    backend: str = "torch"   # "triton" when the product runs the GPU kernels (kernels.enabled), else "torch"


def _check_c(c):
    if isinstance(c, torch.Tensor):
        if c.dim() != 0 or not c.is_floating_point():
            raise ValueError(f"c must be a non-negative float or a 0-dim floating tensor, got a tensor of shape "
                             f"{tuple(c.shape)} and dtype {c.dtype}")
        return c
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
        raise ValueError(f"c must be a finite non-negative float (or a 0-dim tensor), got {c!r}")
    return float(c)


@register("cauchy")
class Cauchy(StructuredMatrix):
    r"""Sum of D positive Cauchy terms, ``m_ij = sum_d 1/(q_id + k_jd + c)``.

    Parameters
    ----------
    q, k : ``(*batch, L, D)`` tensors, all entries > 0 (batch dims broadcast).
    c : float or 0-dim tensor, >= 0 (a shift shared by all denominators; differentiable if a tensor).
    validate : check ``q, k > 0`` and ``c >= 0`` (ValueError naming the argument otherwise), and on the GPU
        expansion the nodes' spread at each product (one device synchronization each). Pass False in hot
        loops whose parameters are positive by construction (shapes are always checked); the GPU kernels
        then run without any synchronization and give NaN where the expansion's range is left.
    eps : entrywise relative accuracy of the ``expsum`` fast path, in [1e-15, 0.1]; None = 1e-13 for
        float64, 1e-6 for float32, 1e-3 for bfloat16 and 1e-4 for float16 (the dtype of x in a product; of
        the parameters for :attr:`error_eps`). Must be None with ``method_fast="tiled"``.
    method_fast : ``"auto"`` (cheaper of the two by the cost model), ``"expsum"`` or ``"tiled"``.
    tile : rows per tile of the tiled path (None = automatic, ~``structured.base.BLOCK_ELEMENTS`` elements
        per block on the CPU, ``DEVICE_BLOCK_ELEMENTS`` on accelerators). Must be None with
        ``method_fast="expsum"`` (a setting the chosen path never reads is an error, not ignored).

    ``order`` is D. ``matmul(x)`` cost: ``expsum`` O(D M L P) (approximate, componentwise bound
    ``|y_hat - y| <= eps (|M| |x|)`` plus rounding, gradients likewise), ``tiled`` O(L^2 (D + P)) exact with
    O(L tile D) memory; see the module docstring for formulas, bounds and the crossover.
    Defining property (``check_structure``): each term satisfies ``D_{q_d + c} C + C D_{k_d} = 1 1^T``,
    displacement rank 1 (a sum of terms does not, so each term is checked).
    """

    property_name = "per term: rank(D_{q+c} C + C D_k) <= 1"
    approximate = True
    error_bound = ("expsum path: entrywise |y_hat - y| <= eps (|M| |x|) + (L + D M + 32) u (|M| |x|), gradients "
                   "likewise; eps = 1e-13 / 1e-6 / 1e-3 / 1e-4 for float64 / float32 / bfloat16 / float16 x "
                   "unless given (see error_eps); the tiled path is exact")

    def __init__(self, q: torch.Tensor, k: torch.Tensor, c=0.0, validate: bool = True, eps: float | None = None,
                 method_fast: str = "auto", tile: int | None = None):
        check_tensor("q", q, trailing=(None, None))
        check_tensor("k", k, trailing=(None, None))
        if q.shape[-2:] != k.shape[-2:]:
            raise ValueError(f"q and k must both have shape (*batch, L, D) with the same L and D; got q "
                             f"{tuple(q.shape)}, k {tuple(k.shape)}")
        c = _check_c(c)
        self.eps = _check_eps(eps)
        self.tile = check_tile(tile)
        check_method_options(method_fast, FAST_METHODS, eps, tile)
        if validate:
            for name, t in (("q", q), ("k", k)):
                if not bool((t > 0).all()):
                    raise ValueError(f"{name} must be > 0 everywhere (Cauchy nodes; reparameterize with exp or "
                                     f"softplus), got min {t.detach().min().item():.6g}")
            if not bool(torch.as_tensor(c >= 0)):
                raise ValueError(f"c must be >= 0, got {float(c):.6g}")
        batch = broadcast_batch(q=(q, 2), k=(k, 2))
        super().__init__(q.shape[-2], batch, promote(q, k), q.device, q.shape[-1])
        self.q, self.k, self.c = q, k, c
        self.validate = validate
        self.method_fast = method_fast
        if method_fast == "tiled":
            self.approximate = False
            self.error_bound = None

    # --------------------------------------------------------------------------------- helpers
    def _nodes(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.c.to(dtype) if isinstance(self.c, torch.Tensor) else self.c
        return self.q.to(dtype) + c, self.k.to(dtype)

    def _eps_for(self, dtype: torch.dtype) -> float:
        if self.eps is not None:
            return self.eps
        return DEFAULT_EPS.get(dtype, DEFAULT_EPS[torch.float32])

    @property
    def error_eps(self) -> float:
        """The eps of :attr:`error_bound` in effect for x of the parameters' dtype (0.0 if
        ``method_fast="tiled"``; the tiled path is exact up to rounding)."""
        return 0.0 if self.method_fast == "tiled" else self._eps_for(self.dtype)

    def plan(self, P: int = 1, dtype: torch.dtype | None = None) -> CauchyPlan:
        """The method ``matmul`` uses for ``P`` right-hand sides of x in ``dtype`` (default: the parameters'
        dtype; it sets the default eps, the nodes are taken in its compute dtype), with the quantities the
        cost model compares. The backend (Triton kernels or torch, by :func:`kernels.enabled` on the
        parameters' device) picks the cost model. On the kernels, ``n_nodes`` is the largest count over
        batch elements and terms (a multiple of the chunk), and the choice between the paths is made
        without the data: ``cost_expsum`` is taken at the kernels' largest feature count
        (``kernels.cauchy.expsum_max_features``), so that :meth:`matmul` decides it the same way without a
        device synchronization. Computing R here synchronizes (it is a report)."""
        eps = self._eps_for(self.dtype if dtype is None else dtype)
        dtype = compute_dtype(self.dtype if dtype is None else dtype)
        L, D = self.length, self.order
        kc = _expsum_kernels(self.q)
        backend = "torch" if kc is None else "triton"
        cm = COST_MODELS[backend]
        cost_tiled = self._cost_tiled(P, cm)
        if self.method_fast == "tiled":
            return CauchyPlan("tiled", 0.0, math.nan, 0, 0, math.nan, cost_tiled, backend)
        xn, yn = self._nodes(dtype)
        _, R = _node_scaling(xn, yn)
        if kc is None:
            n_nodes = len(exp_sum_nodes(eps, R)[0])
            n_cost = n_nodes
        else:
            n_nodes = kc.expsum_features(quadrature_constants(eps), R)
            n_cost = kc.expsum_max_features(quadrature_constants(eps))
        method, cost_expsum = self._choose(P, n_cost, cm, cost_tiled)
        return CauchyPlan(method, eps if method == "expsum" else 0.0, R, n_nodes, D * n_nodes, cost_expsum,
                          cost_tiled, backend)

    def _cost_tiled(self, P: int, cm: CostModel) -> float:
        return float(self.length) * self.length * (cm.tiled_term * self.order + cm.tiled_rhs * P)

    def _choose(self, P: int, n_nodes: int, cm: CostModel, cost_tiled: float) -> tuple[str, float]:
        cost_expsum = self.length * self.order * n_nodes * (cm.expsum_rhs * P + cm.expsum_feature)
        if self.method_fast == "auto":
            return ("expsum" if cost_expsum < cost_tiled else "tiled"), cost_expsum
        return self.method_fast, cost_expsum

    def _kernel_method(self, kc, P: int, dtype: torch.dtype) -> tuple[str, float]:
        """(method, eps) on the kernels, decided without the data (see :meth:`plan`); with ``validate=True``
        the expansion's range is checked here (one synchronization, like the validation itself)."""
        if self.method_fast == "tiled":
            return "tiled", 0.0
        cm = COST_MODELS["triton"]
        eps = self._eps_for(dtype)
        dtype = compute_dtype(dtype)
        method, _ = self._choose(P, kc.expsum_max_features(quadrature_constants(eps)), cm, self._cost_tiled(P, cm))
        if method == "expsum" and self.validate:
            _, R = _node_scaling(*self._nodes(dtype))
            if R > kc.R_MAX:
                raise ValueError(f"the nodes spread R = (max(q + c) + max k) / (min(q + c) + min k) = {R:.4g} "
                                 f"exceeds the GPU expansion's R_MAX = {kc.R_MAX:.4g} (2^40); use "
                                 f"method_fast='tiled' (exact), or run on the CPU")
        return method, (eps if method == "expsum" else 0.0)

    # --------------------------------------------------------------------------------- interface
    def to_dense(self) -> torch.Tensor:
        dt = compute_dtype(self.dtype)
        xn, yn = self._nodes(dt)
        out = None
        for d in range(self.order):           # one L x L term at a time, never (L, L, D)
            term = torch.reciprocal(xn[..., :, None, d] + yn[..., None, :, d])
            out = term if out is None else out + term
        return out.expand(*self.batch_shape, self.length, self.length)

    def term_matrices(self) -> torch.Tensor:
        """The D terms ``C^(d)_ij = 1/(q_id + c + k_jd)`` stacked: ``(*batch, D, L, L)``, compute dtype."""
        xn, yn = self._nodes(compute_dtype(self.dtype))
        xn, yn = xn.transpose(-1, -2), yn.transpose(-1, -2)             # (*b, D, L)
        return torch.reciprocal(xn[..., :, None] + yn[..., None, :])

    def _fast_matmul(self, x: torch.Tensor) -> torch.Tensor:
        kc = _expsum_kernels(self.q)
        if kc is None:
            plan = self.plan(x.shape[-1], x.dtype)
            method, eps = plan.method, plan.eps
        else:
            method, eps = self._kernel_method(kc, x.shape[-1], x.dtype)
        # Every path takes the shift folded into the row nodes (xn = q + c, differentiable in c if a tensor).
        xn, yn = self._nodes(x.dtype)
        if method == "expsum":
            return cauchy_matmul_expsum(x, xn, yn, eps=eps)
        import kernels
        if kernels.enabled(x):
            batch = x.shape[:-2]
            return kernels.cauchy_matmul(x, xn.expand(*batch, *xn.shape[-2:]), yn.expand(*batch, *yn.shape[-2:]), 0.0)
        return cauchy_matmul_tiled(x, xn, yn, tile=self.tile)

    def check_structure(self, tol: float | None = None) -> StructureReport:
        terms = self.term_matrices()                                      # (*b, D, L, L)
        tol = P.default_tol(terms.dtype) if tol is None else tol
        xn, yn = self._nodes(terms.dtype)
        ranks = P.cauchy_displacement_rank(terms, xn.transpose(-1, -2), yn.transpose(-1, -2), tol, sign=+1.0)
        ranks = ranks.reshape(-1, self.order)                             # (batch, D)
        parts = tuple(P.report(self.name, f"term {d}: rank(D_x C + C D_y), x = q[..., {d}] + c, y = k[..., {d}]",
                               ranks[:, d], 1, tol) for d in range(self.order))
        return P.report(self.name, self.property_name, ranks, 1, tol,
                        detail=f"{self.order} term(s) checked separately (a sum of Cauchy terms has full "
                               f"displacement rank for any single node pair)", parts=parts)

    @classmethod
    def random(cls, length, batch_shape=(), order=None, dtype=None, device=None, generator=None):
        """Nodes ``exp(0.5 g) + 0.5`` (g standard normal), like the paper's ``exp(q) + b`` with b = 0.5,
        c = 0: denominators in roughly [1.3, 15] (R ~ 10) at L in the thousands, so the expansion's rank
        stays ~45 D in float32."""
        L, batch, D, dtype = cls._random_args(length, batch_shape, order, dtype, default_order=2)
        q = torch.exp(0.5 * randn((*batch, L, D), torch.float64, None, generator)) + 0.5
        k = torch.exp(0.5 * randn((*batch, L, D), torch.float64, None, generator)) + 0.5
        return cls(q.to(dtype=dtype, device=device), k.to(dtype=dtype, device=device))


__all__ = ["COST_MODELS", "Cauchy", "CauchyPlan", "CostModel", "cauchy_dense", "cauchy_matmul_expsum",
           "cauchy_matmul_tiled", "exp_sum_nodes"]
