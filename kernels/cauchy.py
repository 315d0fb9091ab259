"""Matrix-free Cauchy product (the Hydra paper's sequence-aligned Cauchy mixer) in Triton.

``y_i = sum_j m_ij x_j`` with ``m_ij = sum_d 1 / (q_id + k_jd + c)`` (Hwang et al. 2024,
arXiv 2407.09941, Table 1; ``structured.cauchy.Cauchy`` is the same matrix), computed tile by tile as
in FlashAttention (see :mod:`kernels._matfree_tiled`): never an L x L tensor in device memory, exact
up to floating-point rounding (no low-rank approximation; the exponential-sum path of
``structured.cauchy`` is the approximate alternative).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._matfree_tiled import Term, check_args, matfree_matmul, upcast_nodes


@triton.jit
def _reciprocal(z, FAST: tl.constexpr):
    if z.dtype == tl.float64:
        return 1.0 / z
    elif FAST:
        # the hardware reciprocal (MUFU.RCP, <= 1 ulp, denormals flushed): the kernels are bound by
        # these evaluations, and IEEE division costs several instructions more. The entries are sums of
        # positive terms, so a relative error per term stays relative in the product (no cancellation).
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [z], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return 1.0 / z


@triton.jit
def _cauchy_value(qd, kd, rows, cols, FAST: tl.constexpr):
    return _reciprocal(qd[:, None] + kd[None, :], FAST)


@triton.jit
def _cauchy_terms(qd, kd, rows, cols, FAST: tl.constexpr):
    r = _reciprocal(qd[:, None] + kd[None, :], FAST)
    slope = -(r * r)  # d/dq 1/(q + k) = d/dk 1/(q + k) = -1/(q + k)^2
    return r, slope, slope


@triton.jit
def _cauchy_value2(qa, ka, qb, kb, rows, cols, FAST: tl.constexpr):
    # 1/a + 1/b = (a + b) / (a b): one reciprocal for two terms (the kernels are bound by reciprocals)
    a = qa[:, None] + ka[None, :]
    b = qb[:, None] + kb[None, :]
    return (a + b) * _reciprocal(a * b, FAST)


@triton.jit
def _cauchy_terms2(qa, ka, qb, kb, rows, cols, FAST: tl.constexpr):
    a = qa[:, None] + ka[None, :]
    b = qb[:, None] + kb[None, :]
    r = _reciprocal(a * b, FAST)
    ra = b * r   # 1/a
    rb = a * r   # 1/b
    slope_a = -(ra * ra)
    slope_b = -(rb * rb)
    return ra + rb, slope_a, slope_a, slope_b, slope_b


def _pair_ok(qt, kt):
    # a b must stay a normal number: every denominator q + k (c folded into q) within
    # [2^-(e/2 - 1), 2^(e/2 - 1)], e = the exponent range of the dtype (float32: about [2e-19, 5e18])
    half = int(math.log2(torch.finfo(qt.dtype).max)) // 2 - 1
    lo, hi = 2.0 ** -half, 2.0 ** half
    qmin, qmax = torch.aminmax(qt)
    kmin, kmax = torch.aminmax(kt)
    return ((qmin + kmin) >= lo) & ((qmax + kmax) <= hi)


CAUCHY = Term("cauchy_matmul", _cauchy_value, _cauchy_terms, _cauchy_value2, _cauchy_terms2, _pair_ok)


def cauchy_matmul(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, c=0.0, *, precision: str = "ieee"):
    """Multiply by the sequence-aligned Cauchy matrix without forming it.

    ``y_i = sum_j sum_d x_j / (q_id + k_jd + c)``.

    Parameters
    ----------
    x : (*batch, L, P) tensor, float64/float32/bfloat16/float16.
    q, k : (*batch, L, d) tensors (batch dims broadcast with x's). The nodes are not checked here
        (that would need a device sync): ``structured.cauchy.Cauchy`` validates q, k > 0, c >= 0.
        Any q, k, c without a zero denominator give the formula's value.
    c : float or tensor broadcastable to q (differentiable), the shift of every denominator.
    precision : "ieee" (default, exact float32 products) or "tf32": ``tl.dot`` precision for float32 x.

    Returns
    -------
    y : (*batch, L, P) in x's dtype. Differentiable in x, q, k (and c if it is a tensor).

    Notes
    -----
    Arithmetic: float32 for float32/bfloat16/float16 inputs (a bf16/fp16 ``x`` multiplies the tile of
    M rounded to its dtype on the tensor cores, accumulating in float32, as FlashAttention does);
    float64 inputs run the same kernels in float64. Terms are taken in pairs with one reciprocal each,
    ``1/a + 1/b = (a + b) / (a b)`` (the kernels are bound by reciprocals), using the hardware reciprocal
    (``rcp.approx.ftz.f32``, <= 1 ulp) in float32 on the GPU; this needs ``a b`` to stay a normal number,
    so when some denominator ``q + k + c`` lies outside ``[2^-62, 2^62]`` (float64: ``[2^-510, 2^510]``),
    detected on the device without a synchronization, the kernels evaluate the terms one by one instead.
    Cost per batch element: L^2 d / 2 reciprocals and 2 L^2 P multiply-adds per pass (forward; the
    backward makes two passes that recompute the tiles), memory O(L (P + d)). Backward:
    ``dx = M^T g``, ``dq_id = -sum_j (g_i . x_j) / (q_id + k_jd + c)^2``, ``dk_jd`` likewise over i.
    Measured on an H100 (``results/bench/kernels_matfree.json``): bf16, B=8, H=12, P=128, d=16,
    L=2048: 2.1 ms forward, 12.1 ms forward+backward.
    Reference: the tiling of FlashAttention (Dao et al. 2022, arXiv 2205.14135); recomputing the
    matrix in the backward pass as in KeOps' reductions (Charlier et al., JMLR 22(74), 2021).
    """
    x, q, k = check_args("cauchy_matmul", x, q, k)
    q, k = upcast_nodes(q, k)
    if isinstance(c, torch.Tensor) or c != 0:
        q = q + c
    return matfree_matmul(x, q, k, CAUCHY, precision)
