"""Cauchy products (the Hydra paper's sequence-aligned Cauchy mixer) in Triton.

``y_i = sum_j m_ij x_j`` with ``m_ij = sum_d 1 / (q_id + k_jd + c)`` (Hwang et al. 2024,
arXiv 2407.09941, Table 1; ``structured.cauchy.Cauchy`` is the same matrix). Two products:

* :func:`cauchy_matmul` -- exact, tile by tile as in FlashAttention (see :mod:`kernels._matfree_tiled`):
  never an L x L tensor in device memory, O(L^2 d) reciprocals;
* :func:`cauchy_expsum_product` -- the exponential-sum expansion of ``structured.cauchy`` (approximate,
  with its stated entrywise bound) as fused feature-map GEMMs: O(L d M P) tensor-core work, no L x L
  anything, the feature maps never stored (recomputed in registers in every pass).
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from ._matfree_tiled import DOT_PRECISIONS, Term, _interpreting, _put, check_args, matfree_matmul, upcast_nodes


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



# ----------------------------------------------------------------------------------------------------
# Exponential-sum expansion: fused feature-map products
# ----------------------------------------------------------------------------------------------------
# 1/(x_i + y_j) ~= (1/a) sum_m w_m e^{-tau_m x_i/a} e^{-tau_m y_j/a} (structured.cauchy, module docstring).
# With u = x/a, v = y/a and phi_m(t) = sqrt(w_m) exp(-tau_m t) the approximate matrix is
#     M_hat = sum_d (1/a_d) Phi(u_d) Phi(v_d)^T,        Phi(t) = [phi_m(t_i)]_{i,m}  (L x F),
# a product of two *positive* feature maps, so
#     y  = sum_d Phi(u_d) Z_d,      Z_d  = (1/a_d) Phi(v_d)^T x      (F x P, "reduce" kernel)
#     dx = sum_d Phi(v_d) GZ_d,     GZ_d = (1/a_d) Phi(u_d)^T g      (the same two kernels, sides swapped)
#     du_id = -sum_m tau_m phi_m(u_id) (g_i . Z_dm),   dv_jd = -sum_m tau_m phi_m(v_jd) (x_j . GZ_dm).
# Every exponent -tau_m t is <= 0 (t > 0), so nothing overflows; the features are computed in registers
# from the O(L d) nodes in every pass (never stored), and only the (d, F, P) blocks Z, GZ reach memory.


def expsum_feature_count(n_nodes: int) -> int:
    """Features per term the kernels use for an expansion with ``n_nodes`` nodes: the next power of two
    >= max(16, n_nodes) (``tl.arange`` and ``tl.dot`` need a power of two >= 16). ``structured.cauchy``
    asks for exactly this many trapezoid nodes over the same interval (a finer step, never less accurate)
    instead of padding with zero weights."""
    if isinstance(n_nodes, bool) or not isinstance(n_nodes, int) or n_nodes < 1:
        raise ValueError(f"n_nodes must be a positive int, got {n_nodes!r}")
    return max(16, triton.next_power_of_2(n_nodes))


@triton.jit
def _exp_features(t, tau, sw, TRANSPOSED: tl.constexpr):
    # phi_m(t) = sqrt(w_m) exp(-tau_m t): t > 0, tau > 0, so the exponent is <= 0 (no overflow; underflow
    # to 0 drops a term below 2^-126 of its weight, harmless since all terms are positive)
    if TRANSPOSED:
        return sw[:, None] * tl.exp(-(tau[:, None] * t[None, :]))      # (F, BLOCK_L)
    else:
        return sw[None, :] * tl.exp(-(t[:, None] * tau[None, :]))      # (BLOCK_L, F)


@triton.jit
def _mm(a, b, DT: tl.constexpr, EMULATE: tl.constexpr, PRECISION: tl.constexpr):
    # a @ b with both operands rounded to DT (the tensor-core dtype). The CPU interpreter (EMULATE)
    # multiplies bf16 operands incorrectly and truncates float32 -> bf16 casts (triton 3.9), so there the
    # round-to-nearest-even cast of the GPU is reproduced on the float32 bit pattern and the product is
    # taken in float32 (exact for bf16 operands), so the interpreter sees the GPU's rounding.
    if EMULATE and DT == tl.bfloat16:
        return tl.dot(_round_bf16(a.to(tl.float32)), _round_bf16(b.to(tl.float32)), input_precision="ieee")
    else:
        return tl.dot(a.to(DT), b.to(DT), input_precision=PRECISION)


@triton.jit
def _cast_out(v, DT: tl.constexpr, EMULATE: tl.constexpr):
    # the store's cast to the output dtype, round-to-nearest in the interpreter too (see _mm)
    if EMULATE and DT == tl.bfloat16:
        return _round_bf16(v.to(tl.float32)).to(DT)
    else:
        return v.to(DT)


@triton.jit
def _round_bf16(v):
    # float32 -> nearest bfloat16 (ties to even), kept in float32: add 0x7FFF + lsb, clear the low 16 bits
    bits = v.to(tl.uint32, bitcast=True)
    bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _expsum_reduce_kernel(
    NT, X, INV_A, TAU, SW, Z,
    L, P, L_BUCKET,
    stride_xb, stride_xl,
    D: tl.constexpr, F: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr,
    DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    # Z[b, d] = (1/a_bd) Phi(n[b, d])^T X[b]: one program per (batch element, term), a loop over L
    pid = tl.program_id(0)
    bh = pid // D
    d = pid % D
    offs_f = tl.arange(0, F)
    offs_p = tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    tau = tl.load(TAU + offs_f)
    sw = tl.load(SW + offs_f)
    N_b = NT + (bh.to(tl.int64) * D + d) * L
    X_b = X + bh.to(tl.int64) * stride_xb
    ACC = TAU.dtype.element_ty
    acc = tl.zeros((F, BLOCK_P), dtype=ACC)
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        mask_l = offs_l < L
        t = tl.load(N_b + offs_l, mask=mask_l, other=0.0)       # padded rows: x = 0 there
        xt = tl.load(X_b + offs_l[:, None] * stride_xl + offs_p[None, :],
                     mask=mask_l[:, None] & mask_p[None, :], other=0.0)
        phi_t = _exp_features(t, tau, sw, True)
        acc += _mm(phi_t, xt, xt.dtype, DOT_F32, PRECISION).to(ACC)
    inv_a = tl.load(INV_A + bh * D + d)
    Z_b = Z + (bh.to(tl.int64) * D + d) * (F * P)
    # stored in the dot dtype: every use multiplies it on the tensor cores in that dtype anyway
    tl.store(Z_b + offs_f[:, None] * P + offs_p[None, :], _cast_out(acc * inv_a, Z.dtype.element_ty, DOT_F32),
             mask=mask_p[None, :])


@triton.jit
def _expsum_rows_kernel(
    NT, W, TAU, SW, XX, OUT, DNT,
    L, P, L_BUCKET,
    stride_xxb, stride_xxl, stride_ob, stride_ol,
    D: tl.constexpr, D_PAD: tl.constexpr, F: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr,
    WITH_OUT: tl.constexpr, WITH_GRAD: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    # One program per (batch element, row block) of
    #   OUT[rows] = sum_d Phi(n_d[rows]) W_d                                  (WITH_OUT)
    #   DN[rows, d] = -sum_m tau_m phi_m(n_d[rows]) (XX[rows] . W_dm)        (WITH_GRAD)
    # forward y: (n, W) = (u, Z); backward: (v, GZ, XX = x) gives dx and dv, (u, Z, XX = g) gives du.
    # Each feature map is needed by one of the two backward launches only: splitting them costs nothing
    # twice and keeps the registers of one program to one row tile.
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(L, BLOCK_L)
    bh = pid // n_blocks
    offs_l = (pid % n_blocks) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_l = offs_l < L
    offs_f = tl.arange(0, F)
    offs_p = tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, D_PAD)
    mask_p = offs_p < P
    mask_lp = mask_l[:, None] & mask_p[None, :]
    tau = tl.load(TAU + offs_f)
    sw = tl.load(SW + offs_f)
    N_b = NT + bh.to(tl.int64) * (D * L)
    W_b = W + bh.to(tl.int64) * (D * F * P)
    DT = W.dtype.element_ty
    ACC = TAU.dtype.element_ty
    fp = offs_f[:, None] * P + offs_p[None, :]
    acc = tl.zeros((BLOCK_L, BLOCK_P), dtype=ACC)
    dn = tl.zeros((BLOCK_L, D_PAD), dtype=ACC)
    if WITH_GRAD:
        xx = tl.load(XX + bh.to(tl.int64) * stride_xxb + offs_l[:, None] * stride_xxl + offs_p[None, :],
                     mask=mask_lp, other=0.0)
    for d in range(D):
        t = tl.load(N_b + d * L + offs_l, mask=mask_l, other=0.0)
        w = tl.load(W_b + d * (F * P) + fp, mask=mask_p[None, :], other=0.0)
        phi = _exp_features(t, tau, sw, False)
        if WITH_OUT:
            acc += _mm(phi, w, DT, DOT_F32, PRECISION).to(ACC)
        if WITH_GRAD:
            s = _mm(xx, tl.trans(w), DT, DOT_F32, PRECISION).to(ACC)     # XX_i . W_dm
            dn = _put(dn, offs_d, d, -tl.sum(phi * s * tau[None, :], axis=1))
    if WITH_OUT:
        tl.store(OUT + bh.to(tl.int64) * stride_ob + offs_l[:, None] * stride_ol + offs_p[None, :],
                 _cast_out(acc, OUT.dtype.element_ty, DOT_F32), mask=mask_lp)
    if WITH_GRAD:
        tl.store(DNT + bh.to(tl.int64) * (D * L) + offs_d[None, :] * L + offs_l[:, None], dn,
                 mask=mask_l[:, None] & (offs_d[None, :] < D))


# (BLOCK_L, num_warps, num_stages) candidates; the CPU interpreter and short sequences use the first
_EXPSUM_CONFIGS = {
    "reduce": [(64, 4, 2), (128, 8, 2), (32, 4, 3), (64, 8, 3)],
    "rows": [(64, 8, 2), (64, 4, 2), (128, 8, 2), (32, 4, 2)],
}
_EXPSUM_KERNELS = {"reduce": _expsum_reduce_kernel, "rows": _expsum_rows_kernel}
_EXPSUM_KEYS = {"reduce": ["P", "D", "F", "L_BUCKET", "PRECISION"],
                "rows": ["P", "D", "F", "L_BUCKET", "PRECISION", "WITH_OUT", "WITH_GRAD"]}
_EXPSUM_INTERPRET_BLOCK = 16
EXPSUM_AUTOTUNE_MIN_LENGTH = 1024
EXPSUM_AUTOTUNE_MAX_BUCKET = 8192


@functools.lru_cache(maxsize=None)
def _expsum_tuned(role: str):
    configs = [triton.Config({"BLOCK_L": bl}, num_warps=w, num_stages=st) for bl, w, st in _EXPSUM_CONFIGS[role]]
    return triton.autotune(configs, key=_EXPSUM_KEYS[role])(_EXPSUM_KERNELS[role])


def _expsum_launch(role, args, n_programs, L, **meta):
    """``args`` up to P (L_BUCKET is inserted), then ``meta["_strides"]``; n_programs: BLOCK_L -> grid."""
    meta["DOT_F32"] = _interpreting()
    strides = meta.pop("_strides")
    bucket = min(triton.next_power_of_2(L), EXPSUM_AUTOTUNE_MAX_BUCKET)
    if _interpreting():
        bl = _EXPSUM_INTERPRET_BLOCK
        _EXPSUM_KERNELS[role][(n_programs(bl),)](*args, bucket, *strides, BLOCK_L=bl, **meta)
    elif L < EXPSUM_AUTOTUNE_MIN_LENGTH:
        bl, w, st = _EXPSUM_CONFIGS[role][0]
        _EXPSUM_KERNELS[role][(n_programs(bl),)](*args, bucket, *strides, BLOCK_L=bl, num_warps=w, num_stages=st,
                                                 **meta)
    else:
        _expsum_tuned(role)[lambda m: (n_programs(m["BLOCK_L"]),)](*args, bucket, *strides, **meta)


def _block_p(P):
    return max(16, triton.next_power_of_2(P))


def _expsum_reduce(nt, x3, inv_a, tau, sw, precision):
    """``Z_d = (1/a_d) Phi(n_d)^T x`` for every batch element and term: (bh, D, F, P) in x3's dtype."""
    bh, L, P = x3.shape
    D, F = nt.shape[1], tau.shape[0]
    z = torch.empty((bh, D, F, P), dtype=x3.dtype, device=x3.device)
    _expsum_launch("reduce", (nt, x3, inv_a, tau, sw, z, L, P), lambda bl: bh * D, L,
                   _strides=(x3.stride(0), x3.stride(1)), D=D, F=F, BLOCK_P=_block_p(P), PRECISION=precision)
    return z


def _expsum_rows(nt, w, tau, sw, precision, xx=None, out=None, dnt=None):
    """The row kernel (see its comment): writes ``out`` if given and ``dnt`` if given."""
    bh, D, L = nt.shape
    F, P = w.shape[2], w.shape[3]
    xx_ = xx if xx is not None else w          # placeholders of unused pointers (never read or written)
    out_ = out if out is not None else w
    dnt_ = dnt if dnt is not None else nt
    _expsum_launch("rows", (nt, w, tau, sw, xx_, out_, dnt_, L, P), lambda bl: bh * triton.cdiv(L, bl), L,
                   _strides=(xx_.stride(0), xx_.stride(1), out_.stride(0), out_.stride(1)),
                   D=D, D_PAD=triton.next_power_of_2(D), F=F, BLOCK_P=_block_p(P),
                   WITH_OUT=out is not None, WITH_GRAD=dnt is not None, PRECISION=precision)


class _ExpSumProduct(torch.autograd.Function):
    """``y = sum_d (1/a_d) Phi(u_d) Phi(v_d)^T x`` with the scaled nodes u, v (see the comment above)."""

    @staticmethod
    def forward(ctx, x3, ut, vt, inv_a, tau, sw, precision):
        # x3 (bh, L, P) in the dot dtype; ut, vt (bh, D, L) and inv_a (bh, D), tau, sw (F,) in the
        # accumulation dtype
        z = _expsum_reduce(vt, x3, inv_a, tau, sw, precision)
        y3 = torch.empty_like(x3)
        _expsum_rows(ut, z, tau, sw, precision, out=y3)
        ctx.save_for_backward(x3, ut, vt, inv_a, tau, sw, z)
        ctx.precision = precision
        return y3

    @staticmethod
    def backward(ctx, gy):
        x3, ut, vt, inv_a, tau, sw, z = ctx.saved_tensors
        precision = ctx.precision
        g3 = gy.to(x3.dtype)
        if g3.stride(-1) != 1:
            g3 = g3.contiguous()
        gz = _expsum_reduce(ut, g3, inv_a, tau, sw, precision)
        dx = torch.empty_like(x3)
        dut = torch.empty_like(ut)
        dvt = torch.empty_like(vt)
        _expsum_rows(vt, gz, tau, sw, precision, xx=x3, out=dx, dnt=dvt)     # dx and dv: features of v
        _expsum_rows(ut, z, tau, sw, precision, xx=g3, dnt=dut)              # du: features of u
        return dx, dut, dvt, None, None, None, None


_DEVICE_NODES: dict = {}


def _device_nodes(tau, w, dtype, device):
    """``tau`` and ``sqrt(w)`` zero-padded to ``expsum_feature_count`` terms (zero weights) on the device,
    cached by value (the node sets are few and reused every step; a host-to-device copy per call would not be)."""
    tau64 = tau.detach().to("cpu", torch.float64)
    w64 = w.detach().to("cpu", torch.float64)
    key = (tau64.numpy().tobytes(), w64.numpy().tobytes(), dtype, str(device))
    hit = _DEVICE_NODES.get(key)
    if hit is None:
        if not (bool((tau64 > 0).all()) and bool((w64 > 0).all())):
            raise ValueError(f"cauchy_expsum_product: tau and w must be positive (exponents and weights of the "
                             f"exponential sum), got min tau {float(tau64.min()):.6g}, min w {float(w64.min()):.6g}")
        if float(w64.min().sqrt()) < torch.finfo(dtype).tiny * 2.0 ** 24:
            # the smallest feature values sqrt(w_m) exp(-tau_m t) must not flush to zero in dtype:
            # only an absurd node spread R (above ~1e60 in float32) gets here
            raise ValueError(f"cauchy_expsum_product: the smallest weight {float(w64.min()):.3g} is below the "
                             f"range of {dtype}; the node spread R is too large for the expansion in this dtype "
                             f"(use the exact cauchy_matmul)")
        F = expsum_feature_count(tau64.numel())
        tau_p = torch.zeros(F, dtype=torch.float64)
        sw = torch.zeros(F, dtype=torch.float64)
        tau_p[:tau64.numel()] = tau64
        sw[:w64.numel()] = w64.sqrt()
        if len(_DEVICE_NODES) >= 256:
            _DEVICE_NODES.clear()
        hit = _DEVICE_NODES[key] = (tau_p.to(device, dtype), sw.to(device, dtype))
    return hit


def cauchy_expsum_product(x: torch.Tensor, xn: torch.Tensor, yn: torch.Tensor, a: torch.Tensor,
                          tau: torch.Tensor, w: torch.Tensor, *, precision: str = "ieee") -> torch.Tensor:
    """The exponential-sum approximation of ``y_i = sum_j sum_d x_j / (xn_id + yn_jd)``, fused on the GPU.

    ``M_hat_ij = sum_d (1/a_d) sum_m w_m exp(-tau_m xn_id / a_d) exp(-tau_m yn_jd / a_d)``, the rank-(d M)
    expansion of ``structured.cauchy`` (its module docstring states the quadrature and the bound
    ``|M_hat_ij - m_ij| <= eps m_ij``, derivatives likewise, for ``(xn_id + yn_jd)/a_d`` in ``[1, R]``);
    this function only evaluates it. Use ``structured.cauchy.cauchy_matmul_expsum`` (which picks a, tau, w
    from eps and the nodes) rather than calling it directly.

    Parameters
    ----------
    x : (*batch, L, P) float64/float32/bfloat16/float16.
    xn, yn : (*batch, L, d) positive nodes (row nodes with the shift c folded in, column nodes), same batch.
    a : (*batch, 1, d) positive scaling per batch element and term, treated as a constant (no gradient).
    tau, w : (M,) positive exponents and weights of the exponential sum (float64 is fine; cast here).
    precision : ``tl.dot`` precision for float32 operands, "ieee" (default) or "tf32".

    Returns
    -------
    y : (*batch, L, P) in x's dtype; differentiable in x, xn, yn.

    Notes
    -----
    Two kernels per product, ``Z_d = (1/a_d) Phi(v_d)^T x`` (one program per batch element and term,
    looping over L) and ``y = sum_d Phi(u_d) Z_d`` (one program per row block), with
    ``Phi(t)_im = sqrt(w_m) exp(-tau_m t_i)``, ``u = xn/a``, ``v = yn/a``; the backward runs the first
    on g (``GZ``) and the second twice: on (v, GZ, x) for dx and dv, on (u, Z, g) for du. Cost per batch
    element: 2 d F L P multiply-adds and d F L exponentials per kernel launch on the tensor cores
    (``F = expsum_feature_count(M)``; 2 launches forward, 3 backward, the dx/dv one doing two GEMMs);
    memory O(L (P + d) + d F P): no L x L or L x dF tensor is ever stored.
    Arithmetic: float32 accumulation (float64 for float64 inputs). bfloat16 ``x`` keeps the tensor cores
    in bfloat16: the feature values and Z are rounded to bfloat16 (relative 2^-8 each, all factors
    positive), which adds at most ``3 u_bf16 (|M| |x|)`` to the error bound, like the exact kernel's rounding
    of its M tile; float16 ``x`` runs in float32 (float16's exponent range would flush small features).
    References: Beylkin & Monzon, "Approximation by exponential sums revisited", ACHA 28(2), 2010 (the
    sum-of-exponentials separation); FlashAttention's fused tiling (Dao et al. 2022, arXiv 2205.14135).
    """
    if precision not in DOT_PRECISIONS:
        raise ValueError(f"precision must be one of {DOT_PRECISIONS}, got {precision!r}")
    if not (x.is_cuda or _interpreting()):
        raise ValueError(f"cauchy_expsum_product: the Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1 "
                         f"set before triton is imported); got a tensor on {x.device}")
    for name, t in (("tau", tau), ("w", w)):
        if t.dim() != 1 or t.numel() == 0:
            raise ValueError(f"cauchy_expsum_product: {name} must be a non-empty 1-D tensor, "
                             f"got shape {tuple(t.shape)}")
    if tau.shape != w.shape:
        raise ValueError(f"cauchy_expsum_product: tau and w must have one length, got {tuple(tau.shape)} and "
                         f"{tuple(w.shape)}")
    x, xn, yn = check_args("cauchy_expsum_product", x, xn, yn)
    batch, L, P = x.shape[:-2], x.shape[-2], x.shape[-1]
    D = xn.shape[-1]
    if a.shape[-2:] != (1, D):
        raise ValueError(f"cauchy_expsum_product: a must have shape (*batch, 1, d={D}), got {tuple(a.shape)}")
    acc = torch.float64 if torch.float64 in (x.dtype, xn.dtype, yn.dtype) else torch.float32
    # the dot dtype: bf16 stays on the tensor cores; fp16 goes to fp32 (its exponent range is too narrow
    # for features spanning ~R e^-tau); float64 nodes force float64
    dot = torch.float64 if acc == torch.float64 else (torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32)
    inv_a = a.detach().to(acc).reciprocal().expand(*batch, 1, D)
    # the scaled nodes u = xn/a, v = yn/a, transposed to (2, bh, d, L) in one copy (each term's column
    # contiguous for the kernels; few launches: at L ~ 512 the host side is a visible part of a call);
    # gradients reach xn, yn through the stack and the scaling
    uvt = (torch.stack((xn, yn)).to(acc) * inv_a).reshape(2, -1, L, D).transpose(-1, -2).contiguous()
    ut, vt = uvt[0], uvt[1]
    inv_a = inv_a.reshape(-1, D).contiguous()
    tau_p, sw = _device_nodes(tau, w, acc, x.device)
    x3 = x.reshape(-1, L, P).to(dot)
    if x3.stride(-1) != 1:
        x3 = x3.contiguous()
    y3 = _ExpSumProduct.apply(x3, ut, vt, inv_a, tau_p, sw, precision)
    return y3.reshape(*batch, L, P).to(x.dtype)
