"""The fused Chebyshev kernels of the Vandermonde product (``kernels.chebyshev``) against their torch reference
(``kernels.naive.vandermonde_chebyshev_product``: the approximant with the point count the device rule picks per batch
element, itself checked against ``structured.vandermonde._chebyshev_product``),
values and gradients, in float64 (tight) and float32, and against the exact product within the stated bound.
CPU: the kernels run in Triton's interpreter."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

import kernels  # noqa: E402
from kernels import chebyshev as kc, naive  # noqa: E402
from structured import vandermonde as sv  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def inputs(B, L, P, D, seed, dtype=torch.float64, q_batch=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, P, generator=g, dtype=torch.float64)
    q = torch.randn(q_batch or B, L, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    q[0] *= 3                      # batch elements with different Omega, hence different point counts
    return [t.to(DEVICE, dtype) for t in (x, q, k)]


def omega_of(q, k, s):
    L = q.shape[-2]
    return math.pi * s * (L - 1) * max(q.abs().max().item(), k.abs().max().item())


def limits(L, eps, max_points=None):
    """The Omega limits structured passes to the kernels: one per point count up to the points cap."""
    return sv.chebyshev_omega_limits(kc.points_cap(L, max_points), eps)


def reference(x, q, k, s, eps, n_cap):
    """kernels.naive's approximant with the device rule's n per batch element (float64 on the CPU)."""
    return naive.vandermonde_chebyshev_product(x, q, k, s, sv.chebyshev_omega_limits(n_cap, eps))


def test_reference_matches_structured_approximant():
    """kernels.naive's Chebyshev approximant is structured's (``_chebyshev_product``) at the same points."""
    x, q, k = (t.cpu() for t in inputs(2, 30, 3, 2, seed=14))
    s, eps, n_cap = 1e-2, 1e-10, kc.points_cap(30)
    ref = reference(x, q, k, s, eps, n_cap)
    for b in range(2):
        n = kc.device_points(omega_of(q[b], k[b], s), sv.chebyshev_omega_limits(n_cap, eps))
        want = sv._chebyshev_product(x[b], 2 * math.pi * s * q[b], 2 * math.pi * s * k[b], n)
        torch.testing.assert_close(ref[b], want, rtol=1e-12, atol=1e-12)


def exact(x, q, k, s):
    L = x.shape[-2]
    j = torch.arange(L, dtype=torch.float64)
    M = (torch.cos(2 * math.pi * s * q.double()[..., :, None, :] * j[None, :, None])
         - torch.cos(2 * math.pi * s * k.double()[..., None, :, :] * j[:, None, None])).sum(-1)
    return M @ x.double()


@pytest.mark.parametrize("B, L, P, D, s, q_batch", [
    (2, 1, 16, 2, 1e-3, None),        # L = 1: every point sits on j = 0 (M = 0)
    (3, 37, 5, 3, 1e-2, None),        # odd L and P, counts 16 and 32 (two chunks)
    (2, 64, 20, 1, 2e-2, 1),          # q broadcast over the batch; up to 48 points
])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_matches_the_torch_reference_with_gradients(B, L, P, D, s, q_batch, dtype, tol):
    x, q, k = inputs(B, L, P, D, seed=L + P, dtype=dtype, q_batch=q_batch)
    eps = 1e-12 if dtype == torch.float64 else 1e-6
    leaves = [t.clone().requires_grad_() for t in (x, q, k)]
    y = kc.vandermonde_chebyshev_product(*leaves, s, limits(L, eps))
    assert y.dtype == dtype and y.shape == x.shape
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(DEVICE, dtype)
    y.backward(gy)
    ref_leaves = [t.detach().cpu().double().requires_grad_() for t in (x, q, k)]
    y_ref = reference(*ref_leaves, s, eps, kc.points_cap(L))
    y_ref.backward(gy.cpu().double())
    for mine, ref in zip((y, *(t.grad for t in leaves)), (y_ref, *(t.grad for t in ref_leaves))):
        assert mine.dtype == dtype
        scale = ref.abs().max().item() + (1.0 if L == 1 else 0.0)      # L = 1: everything is exactly 0
        assert (mine.double().cpu() - ref).abs().max().item() <= tol * scale


def test_device_rule_counts_per_batch_element():
    """The prep kernel's point counts are the host rule's (device_points) for each batch element, and the fewest
    whose bound holds (rounded up to a chunk)."""
    x, q, k = inputs(4, 300, 4, 2, seed=5, dtype=torch.float32)
    q[1] *= 0.01
    k[2] *= 4
    s, eps = 2e-3, 1e-6
    n_cap = kc.points_cap(300)
    tab, _, _ = kc._prep(q, k, kc._params(limits(300, eps), s, 300, q.device), n_cap, torch.float32, 4)
    npts, nodes, invs = kc.unpack_table(tab, n_cap)
    want = [kc.device_points(omega_of(q[b], k[b], s), limits(300, eps)) for b in range(4)]
    assert npts.tolist() == want and len(set(want)) > 1
    for b, n in enumerate(want):
        omega = omega_of(q[b], k[b], s)
        assert sv.chebyshev_plan(300, omega, eps).n <= n < sv.chebyshev_plan(300, omega, eps).n + kc.CHUNK + 1
        t = nodes[b, :n].cpu().double()
        assert t[0] == 299 and t[-1] == 0 and (t[:-1] > t[1:]).all()


def test_within_the_stated_bound_bf16_inputs():
    """bf16 x, q, k (Hydra's training dtype) are read as they are and computed in float32: the error against the
    exact product of the same bf16 values is the bound 2 D E ||x_p||_1 plus float32 rounding."""
    x, q, k = inputs(2, 96, 8, 4, seed=11, dtype=torch.bfloat16)
    s, eps = 1e-3, 1e-6
    y = kc.vandermonde_chebyshev_product(x, q, k, s, limits(96, eps))
    assert y.dtype == torch.bfloat16
    ref = exact(x.cpu(), q.cpu(), k.cpu(), s)
    bound = 2 * 4 * eps * x.cpu().double().abs().sum(-2, keepdim=True)
    rounding = 2.0 ** -8 * ref.abs() + 1e-5 * ref.abs().max()           # the output's bf16 rounding, float32 sums
    assert ((y.cpu().double() - ref).abs() <= bound + rounding).all()


def test_more_points_than_the_cap_give_nan_only_there():
    x, q, k = inputs(2, 40, 4, 2, seed=2)
    s = 3e-3                                   # batch element 0 (q * 3) needs more than 16 points, element 1 fewer
    n0 = kc.device_points(omega_of(q[0], k[0], s), limits(40, 1e-12, 64))
    n1 = kc.device_points(omega_of(q[1], k[1], s), limits(40, 1e-12, 64))
    assert n0 > 16 and n1 == 16
    y = kc.vandermonde_chebyshev_product(x, q, k, s, limits(40, 1e-12, 16))
    assert torch.isnan(y[0]).all() and torch.isfinite(y[1]).all()


def test_structured_paths_dispatch_here(kernels_mode, monkeypatch):
    """With kernels on, vandermonde_matmul_chebyshev (no host sync) and Vandermonde(method_fast='chebyshev') (cap =
    its host plan's count) both run the fused kernels, within the stated bound of the exact product."""
    kernels_mode("on")
    calls = []
    real = kernels.vandermonde_chebyshev_product
    monkeypatch.setattr(kernels, "vandermonde_chebyshev_product", lambda *a, **kw: calls.append(a[4]) or real(*a, **kw))
    x, q, k = inputs(2, 48, 5, 4, seed=3)
    s, eps = 1e-3, 1e-10
    y1 = sv.vandermonde_matmul_chebyshev(x, q, k, s, eps=eps)
    M = sv.Vandermonde(q, k, scale=s, eps=eps, method_fast="chebyshev")
    y2 = M.matmul(x)
    assert calls == [limits(48, eps), limits(48, eps, M.plan(5).n_points + 1)]
    bound = 2 * 4 * eps * x.cpu().abs().sum(-2, keepdim=True) + 1e-12
    ref = exact(x.cpu(), q.cpu(), k.cpu(), s)
    for y in (y1, y2):
        assert ((y.cpu() - ref).abs() <= bound).all()


def test_bad_arguments():
    x, q, k = inputs(1, 8, 2, 2, seed=0)
    good = limits(8, 1e-6)
    with pytest.raises(ValueError, match="max_points must be a positive int"):
        kc.points_cap(8, 0)
    with pytest.raises(ValueError, match="scale must be a finite float > 0"):
        kc.vandermonde_chebyshev_product(x, q, k, -1.0, good)
    for bad in (1e-6, good[:5], list(good), (), tuple(range(16))):
        with pytest.raises(ValueError, match="omega_limits must be a tuple of floats"):
            kc.vandermonde_chebyshev_product(x, q, k, 1e-3, bad)
    with pytest.raises(ValueError, match="precision must be one of"):
        kc.vandermonde_chebyshev_product(x, q, k, 1e-3, good, precision="fp8")
    with pytest.raises(ValueError, match="length of x"):
        kc.vandermonde_chebyshev_product(x, q[:, :4], k, 1e-3, good)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True),
                                   (True, True, False)])
def test_backward_computes_only_the_requested_gradients(needs):
    """The backward runs only the row passes it needs (the rows of q alone, of k alone, dx without dk):
    each gradient is the one of the full backward (to rounding: the reduce kernels add their segments atomically,
    in no fixed order on the GPU)."""
    x, q, k = inputs(2, 21, 3, 2, seed=9)
    s, eps = 1e-2, 1e-12
    full = [t.clone().requires_grad_() for t in (x, q, k)]
    gy = torch.randn(2, 21, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64).to(DEVICE)
    kc.vandermonde_chebyshev_product(*full, s, limits(21, eps)).backward(gy)
    part = [t.clone().requires_grad_(need) for t, need in zip((x, q, k), needs)]
    kc.vandermonde_chebyshev_product(*part, s, limits(21, eps)).backward(gy)
    for f, p, need in zip(full, part, needs):
        assert (p.grad is not None) == need
        if need:
            assert torch.allclose(p.grad, f.grad, rtol=1e-12, atol=1e-12 * f.grad.abs().max().item())


def test_chebyshev_product_is_a_valid_torch_operator():
    """opcheck: schema, fake (meta) implementation, autograd registration and tracing agree with the kernels."""
    x, q, k = (t.requires_grad_() for t in inputs(2, 9, 3, 2, seed=12))
    lim = limits(9, 1e-10)
    args = (x, q, k, kc._params(lim, 1e-2, 9, x.device), len(lim), torch.float64, False, "ieee")
    torch.library.opcheck(kc._chebyshev_product, args)


def test_chebyshev_product_compiles_without_graph_breaks(compiled_matches_eager):
    """torch.compile (fullgraph, aot_eager) of a function around the product: the values and gradients of eager."""
    lim = limits(11, 1e-10)
    compiled_matches_eager(lambda x, q, k: (2 * kc.vandermonde_chebyshev_product(x, q, k, 1e-2, lim)).sin(),
                           [t.requires_grad_() for t in inputs(2, 11, 3, 2, seed=13)], tol=1e-12)
