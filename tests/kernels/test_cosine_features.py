"""The fused cosine-feature kernel of the Vandermonde Chebyshev path (``kernels.cosine_features``) against its
torch reference (``structured.vandermonde._CosineFeatures``, itself checked against the dense formula), values
and gradients, in float64 (tight) and float32; then the whole Chebyshev product through the kernel against the
exact product, within the path's stated bound. CPU: the kernels run in Triton's interpreter."""
from __future__ import annotations

import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import kernels  # noqa: E402
from structured import vandermonde as sv  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def angles(shape, seed, scale=2 * math.pi * 1e-3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)


def dense_features(theta, nodes):
    """float64 u_ir = sum_d cos(theta_id t_r), straight from the definition."""
    return torch.cos(theta.double()[..., :, None, :] * nodes.double()[:, None]).sum(-1)


@pytest.mark.parametrize("L, D, n", [(1, 1, 1), (5, 3, 7), (37, 4, 22), (45, 16, 33)])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_matches_the_torch_reference_with_gradients(L, D, n, dtype, tol):
    theta = angles((2, 3, L, D), seed=L + n).to(DEVICE, dtype)
    nodes, _ = sv._interpolation_matrix(max(L, 2), n, dtype, DEVICE)
    g = torch.randn(2, 3, L, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(DEVICE, dtype)
    leaves = [theta.clone().requires_grad_() for _ in range(2)]
    u_k = kernels.cosine_features(leaves[0], nodes)
    u_t = sv._CosineFeatures.apply(leaves[1], nodes)
    assert u_k.dtype == dtype and u_k.shape == (2, 3, L, n)
    ref = dense_features(theta, nodes)
    scale = D                               # |u| <= D
    assert (u_k.double().cpu() - ref.cpu()).abs().max() <= tol * scale
    assert (u_t.double().cpu() - ref.cpu()).abs().max() <= tol * scale
    (gk,) = torch.autograd.grad(u_k, leaves[0], g)
    (gt,) = torch.autograd.grad(u_t, leaves[1], g)
    # |d theta| <= sum_r |g_ir| |t_r|: the sines' rounding is relative to that
    gscale = (g.abs().double() * nodes.abs().double()).sum(-1, keepdim=True).cpu()
    assert ((gk.double().cpu() - gt.double().cpu()).abs() <= 4 * tol * gscale).all()


def test_large_angles_reduced_in_turns():
    """theta t of hundreds of radians (long L): the turn reduction keeps float32 cosines at float32 accuracy of
    the rounded angle, like torch.cos of the same float32 product."""
    L, n = 16384, 342
    theta = angles((1, 1, 4, 2), seed=7, scale=2 * math.pi * 4e-3).to(DEVICE, torch.float32)
    nodes, _ = sv._interpolation_matrix(L, n, torch.float32, DEVICE)
    u = kernels.cosine_features(theta, nodes)
    ref = dense_features(theta, nodes).cpu()
    assert float((theta.abs().max() * nodes.max()).item()) > 100
    # the float32 angle theta t itself is off by ~|theta t| 2^-24: that is the whole error
    bound = 2 * (theta.double().abs()[..., None, :] * nodes.double()[:, None]).sum(-1).cpu() * 2.0 ** -24 + 1e-6
    assert ((u.double().cpu() - ref).abs() <= 2 * bound).all()


def test_chebyshev_product_through_the_kernel_within_its_bound(monkeypatch):
    monkeypatch.setenv("MIXERZOO_KERNELS", "on")
    g = torch.Generator().manual_seed(3)
    B, L, P, D, s = 2, 48, 5, 4, 1e-3
    x = torch.randn(B, L, P, generator=g, dtype=torch.float64)
    q = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    calls = []
    real = kernels.cosine_features
    monkeypatch.setattr(kernels, "cosine_features", lambda *a: calls.append(a[0].shape) or real(*a))
    eps = 1e-10
    y = sv.vandermonde_matmul_chebyshev(x.to(DEVICE), q.to(DEVICE), k.to(DEVICE), s, eps=eps).cpu()
    assert len(calls) == 2                                  # U and V
    j = torch.arange(L, dtype=torch.float64)
    M = (torch.cos(2 * math.pi * s * q[..., :, None, :] * j[None, :, None])
         - torch.cos(2 * math.pi * s * k[..., None, :, :] * j[:, None, None])).sum(-1)
    err = (y - M @ x).abs()
    assert (err <= 2 * D * eps * x.abs().sum(-2, keepdim=True) + 1e-12).all()


def test_bad_arguments():
    theta = torch.zeros(2, 3, 2, device=DEVICE)
    nodes = torch.zeros(4, device=DEVICE)
    with pytest.raises(ValueError, match="nodes must be a floating tensor"):
        kernels.cosine_features(theta, torch.zeros(4, dtype=torch.long, device=DEVICE))
    with pytest.raises(ValueError, match="theta must be"):
        kernels.cosine_features(theta[0, 0], nodes)
    with pytest.raises(ValueError, match="nonzero sizes"):
        kernels.cosine_features(theta, nodes[:0])
