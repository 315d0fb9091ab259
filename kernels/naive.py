"""Exact torch references of the kernels, one per entry point and with its signature: each builds the L x L
matrix the kernel applies, explicitly and in float64 (O(L^2) memory), multiplies, and returns x's dtype.
Short and obviously right rather than fast; the tests compare the kernels with them (as ``fla/ops/<op>/naive.py``
sits beside ``chunk.py`` and mamba's ``ssd_minimal.py`` beside its kernels). Differentiable through autograd.

Launch options (``chunk_size``, ``precision``) are accepted and ignored: they reorganize the kernels' arithmetic,
not the product. The approximate products (:func:`cauchy_expsum_product`, :func:`vandermonde_chebyshev_product`)
are given as the exact product of the approximant the kernels evaluate, with the per-batch-element choices
(scaling, node count, points) that their device code makes.
"""
from __future__ import annotations

import math

import torch

_F64 = torch.float64


def _decay(log_a: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``exp(sum_{t=lo..hi} log_a_t)`` in float64 for index grids lo, hi of shape (L, L); an empty span gives 1
    (the callers mask the entries outside their triangle)."""
    L = log_a.shape[-1]
    pre = torch.nn.functional.pad(log_a.to(_F64).cumsum(-1), (1, 0))        # pre[k] = sum_{t < k}
    lo_c, hi_c = lo.clamp(0, L), (hi + 1).clamp(0, L)
    span = torch.where(hi >= lo, pre[..., hi_c] - pre[..., lo_c], torch.zeros((), dtype=_F64))
    return torch.exp(span)


def _grid(L: int, device):
    i = torch.arange(L, device=device)
    return i[:, None].expand(L, L), i[None, :].expand(L, L)


def semiseparable_matmul(x, b, c, log_a, chunk_size: int = 64):
    """``y = M x``, ``m_ij = c_i . b_j exp(sum_{t=j+1..i} log_a_t)`` for i >= j, else 0."""
    i, j = _grid(x.shape[-2], x.device)
    M = torch.where(i >= j, (c.to(_F64) @ b.to(_F64).transpose(-1, -2)) * _decay(log_a, j + 1, i), 0.0)
    return (M @ x.to(_F64)).to(x.dtype)


def quasiseparable_matmul(x, b, c, log_a, delta, b_bwd=None, c_bwd=None, log_a_bwd=None, shift: bool = True,
                          chunk_size: int = 64):
    """Hydra's product: with ``shift`` ``m_ij = c_{i-1}.b_j exp(sum_{t=j+1..i-1} log_a_t)`` (i > j),
    ``m_ii = delta_i``, ``m_ij = c'_{i+1}.b'_j exp(sum_{t=i+1..j-1} log_a'_t)`` (i < j); without,
    ``c_i.b_j exp(sum_{t=j+1..i} log_a_t)`` (i >= j) plus ``c'_i.b'_j exp(sum_{t=i..j-1} log_a'_t)`` (i <= j) plus
    ``delta_i`` on the diagonal. ``b_bwd``, ``c_bwd``, ``log_a_bwd`` default to the forward ones."""
    b_bwd = b if b_bwd is None else b_bwd
    c_bwd = c if c_bwd is None else c_bwd
    log_a_bwd = log_a if log_a_bwd is None else log_a_bwd
    i, j = _grid(x.shape[-2], x.device)
    c, cb = c.to(_F64), c_bwd.to(_F64)
    if shift:
        zero = torch.zeros_like(c[..., :1, :])
        c = torch.cat([zero, c[..., :-1, :]], -2)                               # row i reads c_{i-1}
        cb = torch.cat([cb[..., 1:, :], zero.expand_as(cb[..., :1, :])], -2)    # row i reads c'_{i+1}
        lower = torch.where(i > j, (c @ b.to(_F64).transpose(-1, -2)) * _decay(log_a, j + 1, i - 1), 0.0)
        upper = torch.where(i < j, (cb @ b_bwd.to(_F64).transpose(-1, -2)) * _decay(log_a_bwd, i + 1, j - 1), 0.0)
    else:
        lower = torch.where(i >= j, (c @ b.to(_F64).transpose(-1, -2)) * _decay(log_a, j + 1, i), 0.0)
        upper = torch.where(i <= j, (cb @ b_bwd.to(_F64).transpose(-1, -2)) * _decay(log_a_bwd, i, j - 1), 0.0)
    M = lower + upper + torch.diag_embed(delta.to(_F64))
    return (M @ x.to(_F64)).to(x.dtype)


def cauchy_matmul(x, q, k, c=0.0, *, precision: str = "ieee"):
    """``m_ij = sum_d 1 / (q_id + k_jd + c)``."""
    M = (1.0 / (q.to(_F64)[..., :, None, :] + k.to(_F64)[..., None, :, :] + c)).sum(-1)
    return (M @ x.to(_F64)).to(x.dtype)


def vandermonde_matmul(x, q, k, scale=1.0, *, precision: str = "ieee"):
    """``m_ij = sum_d cos(2 pi s q_id j) - cos(2 pi s k_jd i)``, ``s = scale``."""
    idx = torch.arange(x.shape[-2], dtype=_F64, device=x.device)
    q, k = q.to(_F64) * scale, k.to(_F64) * scale
    M = (torch.cos(2 * math.pi * q[..., :, None, :] * idx[None, :, None])
         - torch.cos(2 * math.pi * k[..., None, :, :] * idx[:, None, None])).sum(-1)
    return (M @ x.to(_F64)).to(x.dtype)


def cauchy_expsum_product(x, xn, yn, quadrature, *, precision: str = "ieee"):
    """The exponential-sum approximant ``M_hat_ij = sum_d (1/a) sum_m w_m exp(-tau_m xn_id / a) exp(-tau_m yn_jd / a)``
    with, per batch element and term, ``a = min xn + min yn``, ``R = (max xn + max yn) / a`` and the trapezoid rule
    ``quadrature = (h, s_hi, s_lo1)`` on ``[s_lo1 - ln R, s_hi]``, its node count rounded up to whole chunks of the
    kernels (``kernels.cauchy.expsum_features``) by a finer step."""
    from .cauchy import expsum_features
    batch = torch.broadcast_shapes(x.shape[:-2], xn.shape[:-2], yn.shape[:-2])
    xe = x.expand(*batch, *x.shape[-2:]).to(_F64)
    u_all = xn.expand(*batch, *xn.shape[-2:]).to(_F64)
    v_all = yn.expand(*batch, *yn.shape[-2:]).to(_F64)
    h0, s_hi, s_lo1 = quadrature
    L, D = u_all.shape[-2:]
    flat = [t.reshape(-1, *t.shape[-2:]) for t in (xe, u_all, v_all)]
    ys = []
    for xb, ub, vb in zip(*flat):
        M = torch.zeros(L, L, dtype=_F64, device=x.device)
        for d in range(D):
            u, v = ub[:, d], vb[:, d]
            a = (u.min() + v.min()).detach()      # a constant of the expansion, as in the kernels: not differentiated
            R = max(float((u.max() + v.max()) / a), 1.0)
            n = expsum_features(tuple(quadrature), R)
            s_lo = s_lo1 - math.log(R)
            step = (s_hi - s_lo) / (n - 1)
            tau = torch.exp(s_lo + step * torch.arange(n, dtype=_F64, device=x.device))
            M = M + ((step * tau) * torch.exp(-(u / a)[:, None, None] * tau) * torch.exp(-(v / a)[None, :, None] * tau)
                     ).sum(-1) / a
        ys.append(M @ xb)
    return torch.stack(ys).reshape(xe.shape).to(x.dtype)


def vandermonde_chebyshev_product(x, q, k, scale, omega_limits, *, precision: str = "ieee"):
    """The Chebyshev approximant ``M_hat = U Lam^T - Lam V^T`` with, per batch element, n points (the fewest whose
    Omega limit covers ``Omega = pi s (L-1) max(|q|, |k|)``, rounded up to the kernels' chunk, at most
    ``len(omega_limits)``; NaN beyond), ``t_r = (cos(pi r / (n-1)) + 1) (L-1)/2``, ``U_ir = sum_d cos(2 pi s q_id t_r)``,
    ``V_jr = sum_d cos(2 pi s k_jd t_r)`` and the Lagrange basis ``Lam_jr = l_r(j)`` of the points."""
    from .chebyshev import device_points
    batch = torch.broadcast_shapes(x.shape[:-2], q.shape[:-2], k.shape[:-2])
    flat = [t.expand(*batch, *t.shape[-2:]).to(_F64).reshape(-1, *t.shape[-2:]) for t in (x, q, k)]
    L = x.shape[-2]
    j = torch.arange(L, dtype=_F64, device=x.device)
    ys = []
    for xb, qb, kb in zip(*flat):
        omega = math.pi * scale * (L - 1) * max(qb.detach().abs().max().item(), kb.detach().abs().max().item())
        n = device_points(omega, omega_limits)
        if n is None:
            ys.append(torch.full_like(xb, math.nan))
            continue
        r = torch.arange(n, dtype=_F64, device=x.device)
        t = (torch.cos(math.pi * r / (n - 1)) + 1) * ((L - 1) / 2)          # n >= 16: whole chunks of points
        w = 1.0 - 2.0 * (r % 2)
        w[0], w[-1] = w[0] / 2, w[-1] / 2
        diff = j[:, None] - t[None, :]
        hit = diff == 0
        terms = w / torch.where(hit, torch.ones_like(diff), diff)
        lam = torch.where(hit.any(-1, keepdim=True), hit.to(_F64), terms / terms.sum(-1, keepdim=True))
        U = torch.cos(2 * math.pi * scale * qb[:, None, :] * t[None, :, None]).sum(-1)      # (L, n)
        V = torch.cos(2 * math.pi * scale * kb[:, None, :] * t[None, :, None]).sum(-1)
        ys.append((U @ lam.T - lam @ V.T) @ xb)
    return torch.stack(ys).reshape(*batch, *x.shape[-2:]).to(x.dtype)
