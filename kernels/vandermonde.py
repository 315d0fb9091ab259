"""Matrix-free Vandermonde (cosine) product (the Hydra paper's sequence-aligned Vandermonde mixer) in Triton.

``y_i = sum_j m_ij x_j`` with ``m_ij = sum_d cos(2 pi s q_id j) - cos(2 pi s k_jd i)`` (Hwang et al. 2024,
arXiv 2407.09941, Table 1; Hydra's code uses s = 1e-3; ``structured.vandermonde.Vandermonde`` is the same
matrix), computed tile by tile as in FlashAttention (see :mod:`kernels._matfree_tiled`): never an
L x L tensor in device memory, exact up to floating-point rounding.

The angles are handled in *turns* (``t = s q_id j``, angle ``2 pi t``): the integer part of ``t`` is
removed before the cosine, so the hardware's fast cosine, accurate to ~1e-6 absolute on
``[-pi, pi]``, stays accurate for any ``j`` (``|2 pi s q j|`` reaches 1e2 to 1e4 at long L).
The remaining error is the float32 rounding of ``t`` itself (phase error ~ ``2 pi |t| 2^-24``), which any
float32 evaluation of ``cos(2 pi s q j)`` shares.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._matfree_tiled import Term, check_args, matfree_matmul, register_term, upcast_nodes

try:  # triton >= 3.1
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - older triton
    from triton.language.extra.cuda import libdevice

@triton.jit
def _reduce_turns(t):
    # t minus an integer n nearest to it: the same point on the circle, in [-1/2, 1/2]
    if t.dtype == tl.float32:
        # n from full-rate adds instead of floor (FRND is a conversion, a quarter of the FMA rate on
        # sm_80/90 like the cosines, and the SASS of the tiles had one FRND per MUFU.COS). With
        # b = sign(t) 1.5 2^23 (0x4B400000 with t's sign bit) and |t| < 2^22, t + b lies where the
        # float32 spacing is 1, so the add rounds t to the nearest integer and subtracting b back is
        # exact (|r| <= 1/2); for larger |t| the spacing there is >= 1, so n is still an integer
        # (|r| <= 1) and cos(2 pi (t - n)) = cos(2 pi t) for every t.
        b = ((t.to(tl.uint32, bitcast=True) & 0x80000000) | 0x4B400000).to(tl.float32, bitcast=True)
        return t - ((t + b) - b)
    else:
        return t - tl.floor(t + 0.5)


@triton.jit
def _cos_turns(r, FAST: tl.constexpr):
    if FAST and r.dtype == tl.float32:
        return libdevice.fast_cosf(6.283185307179586 * r)
    else:
        return tl.cos(6.283185307179586 * r)


@triton.jit
def _sin_turns(r, FAST: tl.constexpr):
    if FAST and r.dtype == tl.float32:
        return libdevice.fast_sinf(6.283185307179586 * r)
    else:
        return tl.sin(6.283185307179586 * r)


@triton.jit
def _vandermonde_value(qd, kd, rows, cols, FAST: tl.constexpr):
    # qd, kd are nodes already multiplied by s (turns per position)
    rq = _reduce_turns(qd[:, None] * cols[None, :])
    rk = _reduce_turns(kd[None, :] * rows[:, None])
    return _cos_turns(rq, FAST) - _cos_turns(rk, FAST)


@triton.jit
def _vandermonde_terms(qd, kd, rows, cols, FAST: tl.constexpr):
    rq = _reduce_turns(qd[:, None] * cols[None, :])
    rk = _reduce_turns(kd[None, :] * rows[:, None])
    f = _cos_turns(rq, FAST) - _cos_turns(rk, FAST)
    # d/da cos(2 pi a j) = -2 pi j sin(2 pi a j); d/db [-cos(2 pi b i)] = 2 pi i sin(2 pi b i)
    dfdq = (-6.283185307179586 * cols[None, :]) * _sin_turns(rq, FAST)
    dfdk = (6.283185307179586 * rows[:, None]) * _sin_turns(rk, FAST)
    return f, dfdq, dfdk


@triton.jit
def _vandermonde_value2(qa, ka, qb, kb, rows, cols, FAST: tl.constexpr):
    # nothing to share between two cosine terms
    return _vandermonde_value(qa, ka, rows, cols, FAST) + _vandermonde_value(qb, kb, rows, cols, FAST)


@triton.jit
def _vandermonde_terms2(qa, ka, qb, kb, rows, cols, FAST: tl.constexpr):
    fa, dqa, dka = _vandermonde_terms(qa, ka, rows, cols, FAST)
    fb, dqb, dkb = _vandermonde_terms(qb, kb, rows, cols, FAST)
    return fa + fb, dqa, dka, dqb, dkb


VANDERMONDE = register_term(Term("vandermonde_matmul", _vandermonde_value, _vandermonde_terms,
                                 _vandermonde_value2, _vandermonde_terms2))


def vandermonde_matmul(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale=1.0, *,
                       precision: str = "ieee"):
    """Multiply by the sequence-aligned Vandermonde (cosine) matrix without forming it.

    ``y_i = sum_j sum_d [cos(2 pi s q_id j) - cos(2 pi s k_jd i)] x_j``, ``s = scale``.

    Parameters
    ----------
    x : (*batch, L, P) tensor, float64/float32/bfloat16/float16.
    q, k : (*batch, L, d) tensors (batch dims broadcast with x's); any real values.
    scale : float or tensor broadcastable to q (differentiable), the angle scale s.
    precision : "ieee" (default, exact float32 products) or "tf32": ``tl.dot`` precision for float32 x.

    Returns
    -------
    y : (*batch, L, P) in x's dtype. Differentiable in x, q, k (and scale if it is a tensor).

    Notes
    -----
    Arithmetic: float32 for float32/bfloat16/float16 inputs (bf16/fp16 ``x`` multiplies the M tile
    rounded to its dtype on the tensor cores, accumulating in float32); float64 inputs run the same
    kernels in float64 with accurate cosines. Cost per batch element: 2 L^2 d cosines (4 L^2 d
    sines/cosines in the backward pass) and 2 L^2 P multiply-adds per pass; memory O(L (P + d)).
    Measured on an H100 (``results/bench/kernels_matfree.json``): bf16, B=8, H=12, P=128,
    d=16, L=2048: 7.0 ms forward, 28.8 ms forward+backward (8.3 / 25.7 ms before the turn reduction
    used two full-rate adds instead of a floor, :func:`_reduce_turns`: the forward gained, the backward,
    with its sines and the per-term reductions, did not). Bound by the quarter-rate pipe of the
    sines/cosines.
    Backward: ``dx = M^T g``, ``dq_id = -2 pi s sum_j (g_i . x_j) j sin(2 pi s q_id j)``,
    ``dk_jd = 2 pi s sum_i (g_i . x_j) i sin(2 pi s k_jd i)``.
    Reference: FlashAttention's tiling (Dao et al. 2022, arXiv 2205.14135); the NUFFT (type 1/2) view
    of the two terms is in ``notes/fast-algorithms.md`` section 2.6 (an approximate alternative).
    """
    x, q, k = check_args("vandermonde_matmul", x, q, k)
    q, k = upcast_nodes(q, k)
    if isinstance(scale, torch.Tensor) or scale != 1.0:
        q = q * scale
        k = k * scale
    return matfree_matmul(x, q, k, VANDERMONDE, precision)
