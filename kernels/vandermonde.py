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

from ._matfree_tiled import Term, _cdiv, _interpreting, _next_pow2, _put, check_args, matfree_matmul, upcast_nodes

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


VANDERMONDE = Term("vandermonde_matmul", _vandermonde_value, _vandermonde_terms,
                   _vandermonde_value2, _vandermonde_terms2)


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
    Measured on an H100 (``results/bench/kernels_matfree.json``, session 6): bf16, B=8, H=12, P=128,
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


# ----------------------------------------------------------------------------------------------------
# Cosine features of the Chebyshev path (structured.vandermonde.vandermonde_matmul_chebyshev)
# ----------------------------------------------------------------------------------------------------
# u_ir = sum_d cos(theta_id t_r) (theta in radians, t_r the Chebyshev points in index space) and its
# backward g_theta_id = -sum_r G_ir t_r sin(theta_id t_r), without the (L, n, D) tensor of angles that the
# torch reference (structured.vandermonde._CosineFeatures) builds block by block. Angles are formed in turns
# (theta t / 2 pi) and reduced to [-1/2, 1/2] before an accurate cosine (_reduce_turns), as in the exact
# kernel above; the cosines are libdevice's accurate ones (not the fast ones): these kernels evaluate
# only L n D of them, and the path's error bound (2 D E ||x||_1) should not gain a 1e-6 term per cosine.

@triton.jit
def _cos_features_fwd_kernel(
    TH, NODES, OUT, L, N,
    stride_tb, stride_tl, stride_td, stride_ob, stride_ol,
    D: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # one program per (batch element, row block, point block)
    pid = tl.program_id(0)
    n_row_blocks = tl.cdiv(L, BLOCK_L)
    bh = pid // n_row_blocks
    offs_l = (pid % n_row_blocks) * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_l = offs_l < L
    mask_n = offs_n < N
    ACC = NODES.dtype.element_ty
    t = tl.load(NODES + offs_n, mask=mask_n, other=0.0)
    TH_b = TH + bh.to(tl.int64) * stride_tb + offs_l * stride_tl
    acc = tl.zeros((BLOCK_L, BLOCK_N), dtype=ACC)
    for d in range(D):
        turns = tl.load(TH_b + d * stride_td, mask=mask_l, other=0.0).to(ACC) * 0.15915494309189535  # 1/(2 pi)
        acc += _cos_turns(_reduce_turns(turns[:, None] * t[None, :]), False)
    tl.store(OUT + bh.to(tl.int64) * stride_ob + offs_l[:, None] * stride_ol + offs_n[None, :],
             acc.to(OUT.dtype.element_ty), mask=mask_l[:, None] & mask_n[None, :])


@triton.jit
def _cos_features_bwd_kernel(
    TH, NODES, G, GT, L, N,
    stride_tb, stride_tl, stride_td, stride_gb, stride_gl, stride_gtb, stride_gtl, stride_gtd,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # one program per (batch element, row block): g_theta_id = -sum_r G_ir t_r sin(theta_id t_r)
    pid = tl.program_id(0)
    n_row_blocks = tl.cdiv(L, BLOCK_L)
    bh = pid // n_row_blocks
    offs_l = (pid % n_row_blocks) * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = tl.arange(0, D_PAD)
    mask_l = offs_l < L
    ACC = NODES.dtype.element_ty
    TH_b = TH + bh.to(tl.int64) * stride_tb + offs_l * stride_tl
    G_b = G + bh.to(tl.int64) * stride_gb + offs_l[:, None] * stride_gl
    gth = tl.zeros((BLOCK_L, D_PAD), dtype=ACC)
    for d in range(D):
        turns = tl.load(TH_b + d * stride_td, mask=mask_l, other=0.0).to(ACC) * 0.15915494309189535
        part = tl.zeros((BLOCK_L, BLOCK_N), dtype=ACC)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            t = tl.load(NODES + offs_n, mask=mask_n, other=0.0)
            g = tl.load(G_b + offs_n[None, :], mask=mask_l[:, None] & mask_n[None, :], other=0.0).to(ACC)
            part += g * t[None, :] * _sin_turns(_reduce_turns(turns[:, None] * t[None, :]), False)
        gth = _put(gth, offs_d, d, -tl.sum(part, axis=1))
    tl.store(GT + bh.to(tl.int64) * stride_gtb + offs_l[:, None] * stride_gtl + offs_d[None, :] * stride_gtd,
             gth.to(GT.dtype.element_ty), mask=mask_l[:, None] & (offs_d[None, :] < D))


# (BLOCK_L, BLOCK_N, num_warps); 8 warps keep the float32 64 x 64 tiles of angles in registers (sm_90,
# triton 3.6: 4 warps spilled in the backward)
_COS_BLOCK = {"interpret": (16, 16, 4), "gpu": (64, 64, 8)}


def _cos_blocks():
    return _COS_BLOCK["interpret" if _interpreting() else "gpu"]


class _CosineFeaturesKernel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta3, nodes):
        bh, L, D = theta3.shape
        N = nodes.shape[0]
        out = torch.empty((bh, L, N), dtype=theta3.dtype, device=theta3.device)
        bl, bn, warps = _cos_blocks()
        _cos_features_fwd_kernel[(bh * _cdiv(L, bl), _cdiv(N, bn))](
            theta3, nodes, out, L, N, *theta3.stride(), out.stride(0), out.stride(1), D=D, BLOCK_L=bl, BLOCK_N=bn,
            num_warps=warps)
        ctx.save_for_backward(theta3, nodes)
        return out

    @staticmethod
    def backward(ctx, g):
        theta3, nodes = ctx.saved_tensors
        bh, L, D = theta3.shape
        N = nodes.shape[0]
        if g.stride(-1) != 1:
            g = g.contiguous()
        gt = torch.empty_like(theta3)
        bl, bn, warps = _cos_blocks()
        _cos_features_bwd_kernel[(bh * _cdiv(L, bl),)](
            theta3, nodes, g, gt, L, N, *theta3.stride(), g.stride(0), g.stride(1), *gt.stride(), D=D,
            D_PAD=_next_pow2(D), BLOCK_L=bl, BLOCK_N=bn, num_warps=warps)
        return gt, None


def cosine_features(theta: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """``u_ir = sum_d cos(theta_id nodes_r)`` on the GPU, differentiable in theta.

    theta: ``(*batch, L, D)`` angles in radians (float64/float32; halves are computed in float32);
    nodes: ``(n,)`` real points (here the Chebyshev points in index space, constants). Returns
    ``(*batch, L, n)`` in theta's dtype. The same function as the torch reference
    ``structured.vandermonde._CosineFeatures`` (which it replaces on CUDA), without its ``(L, n, D)`` block of
    angles: L n D accurate cosines forward and sines backward, computed in registers after reducing the
    angle to [-pi, pi] in turns; memory O(L (n + D)).
    """
    for name, t, dims in (("theta", theta, "(*batch, L, D)"), ("nodes", nodes, "(n,)")):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"cosine_features: {name} must be a floating tensor {dims}, got {t!r:.80}")
    if theta.dim() < 2 or nodes.dim() != 1 or 0 in theta.shape[-2:] or nodes.numel() == 0:
        raise ValueError(f"cosine_features: theta must be (*batch, L, D) and nodes (n,) with nonzero sizes; got "
                         f"{tuple(theta.shape)} and {tuple(nodes.shape)}")
    if not (theta.is_cuda or _interpreting()) or nodes.device != theta.device:
        raise ValueError(f"cosine_features: the Triton kernels need theta and nodes on one CUDA device (or "
                         f"TRITON_INTERPRET=1); got {theta.device} and {nodes.device}")
    acc = torch.float64 if theta.dtype == torch.float64 else torch.float32
    batch, L, D = theta.shape[:-2], theta.shape[-2], theta.shape[-1]
    out = _CosineFeaturesKernel.apply(theta.to(acc).reshape(-1, L, D), nodes.to(acc))
    return out.reshape(*batch, L, nodes.numel()).to(theta.dtype)
