"""Tests for structured.vandermonde: the exact tiled matrix-free product against an independent reference,
autograd (recomputing backward), memory, validation, dispatch and the per-term displacement property."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kernels
import structured
from structured import properties as P
from structured.vandermonde import Vandermonde, nufft_plan, vandermonde_matmul_nufft, vandermonde_matmul_tiled
from vandermonde_reference import F64, draw, draw_broadcast, explicit_grads, gen

U32 = 2.0 ** -24


def reference_dense(q, k, scale=1.0):
    """Independent float64 numpy materialization of m_ij = sum_d cos(2 pi s q_id j) - cos(2 pi s k_jd i)."""
    qn, kn = np.broadcast_arrays(q.detach().double().numpy(), k.detach().double().numpy())
    L = qn.shape[-2]
    out = np.zeros(qn.shape[:-2] + (L, L))
    for i in range(L):
        for j in range(L):
            out[..., i, j] = (np.cos(2 * np.pi * scale * qn[..., i, :] * j)
                              - np.cos(2 * np.pi * scale * kn[..., j, :] * i)).sum(-1)
    return torch.from_numpy(out)


def abs_bound(Mref, x):
    return Mref.abs() @ x.abs().double()


@pytest.mark.parametrize("L", [1, 2, 7])
def test_to_dense_matches_formula(L):
    g = gen(L)
    q, k = torch.randn(2, L, 3, dtype=F64, generator=g), torch.randn(2, L, 3, dtype=F64, generator=g)
    M = Vandermonde(q, k, scale=0.7)
    torch.testing.assert_close(M.to_dense(), reference_dense(q, k, 0.7), rtol=0, atol=1e-13)
    assert M.shape == (2, L, L) and M.order == 3
    assert structured.get("vandermonde") is Vandermonde
    A, B = M.term_matrices()
    torch.testing.assert_close((A - B).sum(-3), M.to_dense(), rtol=0, atol=1e-13)


@pytest.mark.parametrize("L", [1, 2, 7, 33])
@pytest.mark.parametrize("tile", [None, 1, 4])
@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_tiled_matches_reference_float64(L, tile, scale):
    g = gen(100 + L)
    q, k = torch.randn(2, 3, L, 2, dtype=F64, generator=g), torch.randn(2, 3, L, 2, dtype=F64, generator=g)
    x = torch.randn(2, 3, L, 5, dtype=F64, generator=g)
    M = Vandermonde(q, k, scale=scale, tile=tile, method_fast="tiled")
    Mref = reference_dense(q, k, scale)
    y = M.matmul(x)
    # cos of an angle up to 2 pi s |q| L carries ~|angle| u of phase error in any implementation
    amax = 2 * math.pi * scale * max(q.abs().max(), k.abs().max()).item() * L
    assert ((y - Mref @ x).abs() <= (4 * amax + L + 8) * 2e-16 * (4 * x.abs().sum(-2, keepdim=True))).all()
    torch.testing.assert_close(M.matmul(x, method="explicit"), y, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(vandermonde_matmul_tiled(x, q, k, scale, tile=tile), y, rtol=0, atol=0)


def test_float32_agrees_with_float32_explicit_and_float64():
    g = gen(5)
    L, D = 129, 2
    q, k = torch.randn(3, L, D, generator=g), torch.randn(3, L, D, generator=g)
    x = torch.randn(3, L, 4, generator=g)
    M = Vandermonde(q, k, method_fast="tiled")
    y = M.matmul(x)
    assert y.dtype == torch.float32
    # identical angle products in both paths: they differ by GEMM rounding only
    Mexp = M.to_dense()
    assert ((y - Mexp @ x).abs() <= (L + 2 * D + 32) * U32 * (Mexp.abs() @ x.abs())).all()
    # against float64 arithmetic: phase error ~ |angle| u per entry
    Mref = reference_dense(q, k)
    angle = 2 * math.pi * (q.abs().double()[..., :, None, :] * torch.arange(L, dtype=F64)[:, None]
                           + k.abs().double()[..., None, :, :] * torch.arange(L, dtype=F64)[:, None, None]).sum(-1)
    entry_err = 4 * U32 * (angle + 2 * D)
    bound = entry_err @ x.abs().double() + (L + 32) * U32 * abs_bound(Mref, x)
    assert ((y.double() - Mref @ x.double()).abs() <= bound).all()


def test_broadcast_batch_dims():
    g = gen(6)
    L = 9
    q, k, x = draw_broadcast(g, L)
    for method in ("tiled", "nufft"):
        M = Vandermonde(q, k, tile=2 if method == "tiled" else None, method_fast=method)
        assert M.batch_shape == (2, 3)
        y = M.matmul(x)
        assert y.shape == (2, 3, L, 4)
        torch.testing.assert_close(y, reference_dense(q, k) @ x, rtol=1e-11, atol=1e-11)
        # no batch dims at all
        y0 = Vandermonde(q[0, 0], k[0, 0], method_fast=method).matmul(x[0])
        assert y0.shape == (L, 4)
        torch.testing.assert_close(y0, reference_dense(q[0, 0], k[0, 0]) @ x[0], rtol=1e-11, atol=1e-11)


def test_tiled_gradcheck():
    g = gen(7)
    L = 5
    q = torch.randn(2, L, 2, dtype=F64, generator=g, requires_grad=True)
    k = torch.randn(1, L, 2, dtype=F64, generator=g, requires_grad=True)    # broadcast batch
    x = torch.randn(2, L, 3, dtype=F64, generator=g, requires_grad=True)

    def f(x, q, k):
        return Vandermonde(q, k, scale=0.37, tile=2, method_fast="tiled").matmul(x)

    assert torch.autograd.gradcheck(f, (x, q, k))


def test_tiled_gradients_match_explicit_autograd():
    g = gen(8)
    L = 23
    q = torch.randn(2, L, 3, dtype=F64, generator=g, requires_grad=True)
    k = torch.randn(2, L, 3, dtype=F64, generator=g, requires_grad=True)
    x = torch.randn(2, L, 4, dtype=F64, generator=g, requires_grad=True)
    w = torch.randn(2, L, 4, dtype=F64, generator=g)
    grads = {}
    for method in ("fast", "explicit"):
        y = Vandermonde(q, k, scale=0.2, tile=3, method_fast="tiled").matmul(x, method=method)
        grads[method] = torch.autograd.grad((y * w).sum(), (x, q, k))
    for a, b in zip(grads["fast"], grads["explicit"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


def test_tiled_memory_is_linear_in_L(max_numel):
    g = gen(9)
    L, D, tile, B, Pn = 160, 2, 4, 2, 3
    q = torch.randn(B, L, D, dtype=F64, generator=g, requires_grad=True)
    k = torch.randn(B, L, D, dtype=F64, generator=g, requires_grad=True)
    x = torch.randn(B, L, Pn, dtype=F64, generator=g, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    M = Vandermonde(q, k, tile=tile, method_fast="tiled")
    with max_numel as mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        M.matmul(x).sum().backward()
    assert mode.max_numel <= B * tile * L * D, (mode.max_numel, mode.op)
    assert mode.max_numel < L * L
    assert max(saved) <= B * L * max(D, Pn)
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and x.grad.shape == x.shape


def test_half_inputs_accumulate_in_float32():
    g = gen(14)
    L = 17
    q, k = torch.randn(2, L, 2, generator=g).bfloat16(), torch.randn(2, L, 2, generator=g).bfloat16()
    x = torch.randn(2, L, 3, generator=g).bfloat16()
    for method in ("tiled", "nufft"):
        y = Vandermonde(q, k, scale=0.1, method_fast=method).matmul(x)
        assert y.dtype == torch.bfloat16
        y32 = Vandermonde(q.float(), k.float(), scale=0.1, method_fast=method).matmul(x.float())
        torch.testing.assert_close(y, y32.to(torch.bfloat16), rtol=0, atol=0)
    assert Vandermonde(q, k).to_dense().dtype == torch.float32


def test_kernel_dispatch_hook(monkeypatch):
    g = gen(16)
    L = 6
    q, k = torch.randn(1, L, 2, generator=g), torch.randn(3, L, 2, generator=g)
    x = torch.randn(3, L, 4, generator=g)
    calls = []

    def fake(x_, q_, k_, s_):
        calls.append((x_.shape, q_.shape, k_.shape, q_.dtype, s_))
        return torch.zeros_like(x_)

    monkeypatch.setattr(kernels, "enabled", lambda t: True)
    monkeypatch.setattr(kernels, "vandermonde_matmul", fake)
    y = Vandermonde(q, k, scale=1e-3, method_fast="tiled").matmul(x)
    assert calls == [((3, L, 4), (3, L, 2), (3, L, 2), torch.float32, 1e-3)] and (y == 0).all()
    Vandermonde(q, k, method_fast="nufft").matmul(x)              # FFT + sparse products: no kernel
    assert len(calls) == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(q=torch.full((2, 2), float("nan"))), "q must be finite"),
    (dict(k=torch.full((2, 2), float("inf"))), "k must be finite"),
    (dict(scale=0.0), "scale must be"),
    (dict(scale=-1.0), "scale must be"),
    (dict(scale=float("nan")), "scale must be"),
    (dict(scale="1"), "scale must be"),
    (dict(tile=-2), "tile must be"),
    (dict(eps=1e-3, method_fast="tiled"), "eps=0.001 sets the accuracy of the 'nufft' and 'chebyshev' paths, which method_fast='tiled'"),
    (dict(tile=4, method_fast="nufft"), "tile=4 sets the row tile .* method_fast='nufft' never uses"),
    (dict(eps=0.0), "eps must be"),
    (dict(eps=1e-15), "eps must be"),
    (dict(eps=0.5), "eps must be"),
    (dict(method_fast="fft"), "method_fast must be one of"),
    (dict(k=torch.ones(3, 2)), "q and k must both have shape"),
    (dict(q=torch.ones(2)), "q must have shape"),
    (dict(q=torch.ones(2, 1, 2), k=torch.ones(3, 1, 2)), "must broadcast"),
])
def test_bad_arguments(kwargs, match):
    args = dict(q=torch.ones(2, 2), k=torch.ones(2, 2))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Vandermonde(**args)


def test_validate_false_skips_value_check_only():
    Vandermonde(torch.full((3, 2), float("nan")), torch.ones(3, 2), validate=False)
    with pytest.raises(ValueError, match="q and k"):
        Vandermonde(torch.ones(3, 2), torch.ones(4, 2), validate=False)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("L", [1, 24])
@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_check_structure_passes_on_random(dtype, L, scale):
    base = Vandermonde.random(L, (2,), order=3, dtype=dtype, generator=gen(17))
    rep = Vandermonde(base.q, base.k, scale=scale).check_structure()
    assert rep.ok and rep.bound == 2 and len(rep.parts) == 6 and all(p.ok for p in rep.parts), str(rep)


def test_check_structure_fails_on_random_dense(monkeypatch):
    M = Vandermonde.random(20, (2,), order=2, dtype=F64, generator=gen(18))
    g = gen(19)
    dense = (torch.randn(2, 2, 20, 20, dtype=F64, generator=g), torch.randn(2, 2, 20, 20, dtype=F64, generator=g))
    monkeypatch.setattr(Vandermonde, "term_matrices", lambda self: dense)
    rep = M.check_structure()
    assert not rep.ok and rep.measured > 2


def test_sum_of_terms_breaks_single_term_displacement():
    M = Vandermonde.random(16, order=2, dtype=F64, generator=gen(22))
    theta = 2 * math.pi * M.q[:, 0]
    assert int(P.cosine_displacement_rank(M.to_dense(), theta, 1e-10)) > 2


def test_random_signature_and_reproducibility():
    M = Vandermonde.random(33, (2, 3), dtype=torch.float32, generator=gen(24))
    assert M.order == 2 and M.batch_shape == (2, 3) and M.dtype == torch.float32 and M.scale == 1.0
    M2 = Vandermonde.random(33, (2, 3), dtype=torch.float32, generator=gen(24))
    assert torch.equal(M.q, M2.q) and torch.equal(M.k, M2.k)
    assert M.approximate and not Vandermonde(M.q, M.k, method_fast="tiled").approximate


# ------------------------------------------------------------------------------ NUFFT path
@pytest.mark.parametrize("eps", [1e-3, 1e-7, None])
@pytest.mark.parametrize("L", [1, 2, 7, 64, 129])
@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_nufft_within_stated_bound_values_and_gradients(eps, L, scale):
    g = gen(2000 + L)
    D, Pn = 3, 2
    q, k, x, gout = draw(g, L, D, Pn)
    M = Vandermonde(q, k, scale=scale, eps=eps, method_fast="nufft")
    plan = M.plan(Pn)
    E = plan.bound
    assert plan.method == "nufft" and E <= (1e-12 if eps is None else eps) and E == M.error_eps
    assert isinstance(Vandermonde.error_bound, str)
    y = M.matmul(x)
    gx, gq, gk = torch.autograd.grad((y * gout).sum(), (x, q, k))

    Mref = reference_dense(q, k, scale)
    jj = torch.arange(L, dtype=F64)
    w = 2 * math.pi * scale
    _, gq_ref, gk_ref = explicit_grads(q, k, x, gout, scale)
    rnd = (4 * w * L * max(q.abs().max(), k.abs().max()).item() + 64 * L) * 2e-16   # float64 rounding, phases
    xa, ga = x.detach().abs(), gout.abs()
    assert ((y.detach() - Mref @ x.detach()).abs() <= (2 * D * E + rnd) * xa.sum(-2, keepdim=True)).all()
    assert ((gx - Mref.transpose(-1, -2) @ gout).abs() <= (2 * D * E + rnd) * ga.sum(-2, keepdim=True)).all()
    # d/dq: per (i, d), sum_p |g_ip| E sum_j j |x_jp|  (and the transposed form for k), times 2 pi s
    bq = w * (E + rnd) * (ga @ (jj[:, None] * xa).sum(-2, keepdim=True).transpose(-1, -2))   # (2, L, 1)
    bk = w * (E + rnd) * (xa @ (jj[:, None] * ga).sum(-2, keepdim=True).transpose(-1, -2))
    assert ((gq - gq_ref).abs() <= bq).all()
    assert ((gk - gk_ref).abs() <= bk).all()
    if eps == 1e-3 and L > 2:
        # the bound is not vacuous: at eps = 1e-3 the approximation error is visible
        assert ((y.detach() - Mref @ x.detach()).abs() / xa.sum(-2, keepdim=True)).max() > 1e-7


def test_nufft_float32_matches_explicit_to_its_floor():
    g = gen(31)
    L, D = 300, 2
    q, k = torch.randn(2, L, D, generator=g), torch.randn(2, L, D, generator=g)
    x = torch.randn(2, L, 5, generator=g)
    for scale in (1.0, 1e-3):
        M = Vandermonde(q, k, scale=scale, method_fast="nufft")
        plan = M.plan(5)
        assert plan.eps == 1e-6
        y = M.matmul(x)
        assert y.dtype == torch.float32
        # exact value for the float32 angles theta = fl(2 pi s q) (both paths use these angles)
        theta = (2 * math.pi * scale) * q
        phi = (2 * math.pi * scale) * k
        jj = torch.arange(L, dtype=F64)
        Mref = (torch.cos(theta.double()[..., :, None, :] * jj[:, None]) -
                torch.cos(phi.double()[..., None, :, :] * jj[:, None, None])).sum(-1)
        # stated bound + float32 rounding of the FFT / sparse sums (amplified by the deconvolution)
        amp = math.exp((L // 2) ** 2 * nufft_plan(L, plan.eps).tau)
        tol = 2 * D * plan.bound + 2 * D * amp * (2 * plan.half_width + math.log2(2 * L) + 16) * U32
        err = (y.double() - Mref @ x.double()).abs() / x.abs().double().sum(-2, keepdim=True)
        assert (err <= tol).all(), (err.max(), tol)


def test_nufft_gradcheck():
    g = gen(32)
    L = 6
    q = torch.randn(2, L, 2, dtype=F64, generator=g, requires_grad=True)
    k = torch.randn(1, L, 2, dtype=F64, generator=g, requires_grad=True)
    x = torch.randn(L, 2, dtype=F64, generator=g, requires_grad=True)     # broadcast against (2,)
    assert torch.autograd.gradcheck(lambda x, q, k: vandermonde_matmul_nufft(x, q, k, 0.3), (x, q, k))


def test_nufft_memory_is_linear_in_L(max_numel):
    g = gen(33)
    L, D, B, Pn = 600, 2, 1, 1
    q = torch.randn(B, L, D, dtype=F64, generator=g, requires_grad=True)
    k = torch.randn(B, L, D, dtype=F64, generator=g, requires_grad=True)
    x = torch.randn(B, L, Pn, dtype=F64, generator=g, requires_grad=True)
    M = Vandermonde(q, k, method_fast="nufft")
    S = M.plan(Pn).half_width          # (the cached plan search uses fixed-size float64 grids, not O(L^2))
    with max_numel as mode:
        M.matmul(x).sum().backward()
    assert mode.max_numel <= B * L * D * 2 * S * 2, (mode.max_numel, mode.op)  # window index/weights
    assert mode.max_numel < L * L


def test_auto_choice_follows_cost():
    long = Vandermonde.random(4096, order=2, dtype=torch.float32, generator=gen(34))
    p = long.plan(64)
    assert p.method == "nufft" and p.cost_nufft < p.cost_tiled
    short = Vandermonde.random(16, order=2, dtype=torch.float32, generator=gen(34))
    assert short.plan(64).method == "tiled"
    assert Vandermonde(short.q, short.k, method_fast="nufft").plan(64).method == "nufft"
    assert Vandermonde(long.q, long.k, method_fast="tiled").plan(64).method == "tiled"
    assert long.plan(64, torch.float64).half_width > p.half_width      # 1e-12 needs a wider window than 1e-6


@pytest.mark.parametrize("L", [1, 5, 64, 1000])
@pytest.mark.parametrize("eps", [1e-2, 1e-6, 1e-12, 1e-14])
def test_nufft_plan_bound(L, eps):
    plan = nufft_plan(L, eps)
    assert plan.bound <= eps and plan.n >= 2 * L and plan.half_width >= 1
    # the plan is minimal: one point narrower cannot reach eps with the best tau on a wide grid
    if plan.half_width > 1:
        S = plan.half_width - 1
        h = 2 * math.pi / plan.n
        K = L // 2
        taus = (S * h / plan.n) * torch.logspace(-3, 3, 2000, dtype=F64)
        m = torch.tensor([v for v in range(-8, 9) if v], dtype=F64)
        alias = torch.exp(-taus[:, None] * ((K - m * plan.n) ** 2 - K ** 2)).sum(-1)
        trunc = 2 * torch.exp(-((S + torch.arange(40, dtype=F64)) * h) ** 2 / (4 * taus[:, None])).sum(-1)
        E = alias + h / torch.sqrt(4 * math.pi * taus) * torch.exp(K ** 2 * taus) * trunc
        assert E.min() > eps * 0.5
    with pytest.raises(ValueError, match="eps must be"):
        nufft_plan(L, 0.0)


def test_default_tile_follows_library_block_budget(monkeypatch, max_numel):
    monkeypatch.setattr(structured.base, "BLOCK_ELEMENTS", 4096)
    g = gen(35)
    L, D, B = 160, 2, 2
    q = torch.randn(B, L, D, dtype=F64, generator=g, requires_grad=True)
    k = torch.randn(B, L, D, dtype=F64, generator=g, requires_grad=True)
    x = torch.randn(B, L, 3, dtype=F64, generator=g, requires_grad=True)
    M = Vandermonde(q, k, method_fast="tiled")
    with max_numel as mode:
        M.matmul(x).sum().backward()
    assert mode.max_numel <= 4096, (mode.max_numel, mode.op)
