"""Float64 references and random draws shared by the Vandermonde tests (test_vandermonde.py: tiled and NUFFT
paths; test_vandermonde_chebyshev.py). Not a test module: imported by name (pytest puts this folder on sys.path)."""
from __future__ import annotations

import math

import torch

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def draw(g, L, D=3, P=2):
    """q, k ``(2, L, D)`` and x ``(2, L, P)`` in float64 with gradients, and an output cotangent ``(2, L, P)``."""
    q = torch.randn(2, L, D, dtype=F64, generator=g, requires_grad=True)
    k = torch.randn(2, L, D, dtype=F64, generator=g, requires_grad=True)
    x = torch.randn(2, L, P, dtype=F64, generator=g, requires_grad=True)
    gout = torch.randn(2, L, P, dtype=F64, generator=g)
    return q, k, x, gout


def draw_broadcast(g, L):
    """q ``(2, 1, L, 2)``, k ``(1, 3, L, 2)`` and x ``(3, L, 4)`` in float64: batch dims that broadcast to (2, 3)."""
    return (torch.randn(2, 1, L, 2, dtype=F64, generator=g), torch.randn(1, 3, L, 2, dtype=F64, generator=g),
            torch.randn(3, L, 4, dtype=F64, generator=g))


def dense(theta, phi):
    """m_ij = sum_d cos(theta_id j) - cos(phi_jd i) for given angles (one L x L per batch), differentiable."""
    theta, phi = torch.broadcast_tensors(theta, phi)
    jj = torch.arange(theta.shape[-2], dtype=theta.dtype)
    return (torch.cos(theta[..., :, None, :] * jj[:, None]) - torch.cos(phi[..., None, :, :] * jj[:, None, None])).sum(-1)


def exact_matrix(theta, phi):
    """:func:`dense` of the detached angles in float64."""
    return dense(theta.detach().double(), phi.detach().double())


def explicit_grads(q, k, x, gout, scale):
    """Exact float64 gradients of sum(gout * (M x)) w.r.t. x, q, k, by autograd through the dense formula."""
    q, k, x = (t.detach().double().requires_grad_() for t in (q, k, x))
    w = 2 * math.pi * scale
    return torch.autograd.grad(((dense(w * q, w * k) @ x) * gout.double()).sum(), (x, q, k))
