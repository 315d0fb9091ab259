"""Tests for the Chebyshev-interpolation product of structured.vandermonde: values and gradients within the
stated bounds (float64, float32), the bound is not vacuous, gradcheck, edge lengths, batch dims, the plan's
choice, the error when the path is forced with n > L, memory, and the plan's minimality."""
from __future__ import annotations

import math

import pytest
import torch

import structured
from structured.vandermonde import (APPROXIMATE_METHODS, FAST_METHODS, Vandermonde, chebyshev_omega,
                                    chebyshev_omega_limits, chebyshev_plan, vandermonde_matmul_chebyshev)
from vandermonde_reference import F64, draw, draw_broadcast, exact_matrix, explicit_grads, gen

U64, U32 = 2.0 ** -53, 2.0 ** -24


def rounding(D, n, L, omega, u):
    """The docstring's first-order rounding term per unit ||x_p||_1: 2 D Lam_n (4 Omega + D + n + L + 2) u."""
    lebesgue = 2 / math.pi * math.log(max(n, 1)) + 1
    return 2 * D * lebesgue * (4 * omega + D + n + L + 2) * u


# (L, scale, eps): every case has n <= L (the path is available); L = 1 and 2 included
CASES = [(1, 1e-3, None), (1, 5.0, 1e-7), (2, 1e-3, 1e-3), (2, 1e-4, 1e-6), (7, 1e-3, 1e-7), (7, 1e-3, None),
         (64, 1e-3, None), (64, 1e-2, 1e-7), (129, 1e-3, None), (129, 1e-2, 1e-3), (301, 3e-3, None)]


@pytest.mark.parametrize("L, scale, eps", CASES)
def test_chebyshev_within_stated_bound_values_and_gradients(L, scale, eps):
    g = gen(10 * L + int(1e4 * scale))
    D, Pn = 3, 2
    q, k, x, gout = draw(g, L, D, Pn)
    M = Vandermonde(q, k, scale=scale, eps=eps, method_fast="chebyshev")
    plan = M.plan(Pn)
    target = 1e-12 if eps is None else eps
    assert plan.method == "chebyshev" and plan.eps == target and plan.bound <= target and plan.bound == M.error_eps
    assert 1 <= plan.n_points <= L
    omega = math.pi * scale * (L - 1) * max(q.abs().max().item(), k.abs().max().item())
    assert omega <= plan.omega <= omega * 1.011 + 1e-300
    cplan = chebyshev_plan(L, omega, target)
    assert (cplan.n, cplan.bound) == (plan.n_points, plan.bound)
    y = M.matmul(x)
    gx, gq, gk = torch.autograd.grad((y * gout).sum(), (x, q, k))
    y_fn = vandermonde_matmul_chebyshev(x, q, k, scale, eps=eps)
    torch.testing.assert_close(y_fn, y, rtol=0, atol=0)

    w = 2 * math.pi * scale
    Mref = exact_matrix(w * q, w * k)
    gx_ref, gq_ref, gk_ref = explicit_grads(q, k, x, gout, scale)
    rnd = rounding(D, plan.n_points, L, plan.omega, U64)
    xa, ga = x.detach().abs(), gout.abs()
    x1, g1 = xa.sum(-2, keepdim=True), ga.sum(-2, keepdim=True)                    # ||x_p||_1, ||g_p||_1
    assert ((y.detach() - Mref @ x.detach()).abs() <= (2 * D * plan.bound + rnd) * x1).all()
    assert ((gx - gx_ref).abs() <= (2 * D * plan.bound + rnd) * g1).all()
    # d/dq_id: 2 pi s E' sum_p |g_ip| ||x_p||_1; d/dk_jd: 2 pi s E' sum_p |x_jp| ||g_p||_1 (+ rounding, times L)
    rnd_g = L * rnd
    bq = w * (cplan.grad_bound + rnd_g) * (ga @ x1.transpose(-1, -2))                   # (2, L, 1)
    bk = w * (cplan.grad_bound + rnd_g) * (xa @ g1.transpose(-1, -2))
    assert ((gq - gq_ref).abs() <= bq).all()
    assert ((gk - gk_ref).abs() <= bk).all()


def test_bound_is_not_vacuous():
    """D = 1 and a node at the largest angle: the worst entry error is within 100x of 2 D E (Thm 8.2 is
    loose only by a modest factor for cosines), read off the full matrix (x = identity)."""
    L, scale = 400, 1e-3
    for eps in (1e-3, 1e-6, 1e-9):
        g = gen(41)
        q = torch.rand(L, 1, dtype=F64, generator=g) * 4
        k = torch.rand(L, 1, dtype=F64, generator=g) * 4
        q[L // 3, 0] = 4.0                                       # the largest |omega| sits on a row node
        M = Vandermonde(q, k, scale=scale, eps=eps, method_fast="chebyshev")
        plan = M.plan(L)
        err = (M.matmul(torch.eye(L, dtype=F64)) - exact_matrix(2 * math.pi * scale * q, 2 * math.pi * scale * k))
        observed = err.abs().max().item()
        stated = 2 * 1 * plan.bound
        assert stated / 100 <= observed <= stated, (eps, observed, stated, plan.n_points)
        # one point fewer would not meet eps: n is the smallest with E <= eps
        assert chebyshev_plan(L, plan.omega * 0.999, eps).n >= plan.n_points - 1


def test_float32_within_bound_plus_rounding():
    g = gen(31)
    L, D, Pn, scale = 300, 4, 5, 1e-3
    q, k = torch.randn(2, L, D, generator=g), torch.randn(2, L, D, generator=g)
    x = torch.randn(2, L, Pn, generator=g)
    M = Vandermonde(q, k, scale=scale, method_fast="chebyshev")
    plan = M.plan(Pn)
    assert plan.eps == 1e-6 and plan.bound <= 1e-6 and plan.n_points < L // 10
    y = M.matmul(x)
    assert y.dtype == torch.float32
    theta, phi = (2 * math.pi * scale) * q, (2 * math.pi * scale) * k      # the float32 angles the path uses
    ref = exact_matrix(theta, phi) @ x.double()
    tol = 2 * D * plan.bound + rounding(D, plan.n_points, L, plan.omega, U32)
    err = (y.double() - ref).abs() / x.abs().double().sum(-2, keepdim=True)
    assert (err <= tol).all(), (err.max(), tol)
    # and float32 vs the float64 computation of the same approximant: rounding only
    y64 = Vandermonde(q.double(), k.double(), scale=scale, eps=1e-6, method_fast="chebyshev").matmul(x.double())
    assert ((y.double() - y64).abs() / x.abs().double().sum(-2, keepdim=True) <= tol).all()


def test_gradcheck():
    g = gen(32)
    L = 9
    q = torch.randn(2, L, 2, dtype=F64, generator=g, requires_grad=True)
    k = torch.randn(1, L, 2, dtype=F64, generator=g, requires_grad=True)      # broadcast batch
    x = torch.randn(L, 2, dtype=F64, generator=g, requires_grad=True)         # broadcast against (2,)
    assert chebyshev_plan(L, chebyshev_omega(q, k, 0.01), 1e-7).n <= L
    assert torch.autograd.gradcheck(lambda x, q, k: vandermonde_matmul_chebyshev(x, q, k, 0.01, eps=1e-7), (x, q, k))


def test_broadcast_batch_dims():
    g = gen(6)
    L = 40
    q, k, x = draw_broadcast(g, L)
    M = Vandermonde(q, k, scale=1e-3, method_fast="chebyshev")
    assert M.batch_shape == (2, 3)
    y = M.matmul(x)
    assert y.shape == (2, 3, L, 4)
    w = 2 * math.pi * 1e-3
    tol = 2 * 2 * M.plan(4).bound * x.abs().sum(-2, keepdim=True) + 1e-13
    assert ((y - exact_matrix(w * q, w * k) @ x).abs() <= tol).all()
    # no batch dims (one element alone: its own Omega, n no larger than the batch's)
    M01 = Vandermonde(q[0, 0], k[0, 1], scale=1e-3, method_fast="chebyshev")
    y01 = M01.matmul(x[1])
    assert y01.shape == (L, 4) and M01.plan(4).n_points <= M.plan(4).n_points
    assert ((y01 - exact_matrix(w * q[0, 0], w * k[0, 1]) @ x[1]).abs() <= tol[1]).all()


def test_half_inputs_accumulate_in_float32():
    g = gen(14)
    L = 33
    q, k = torch.randn(2, L, 2, generator=g).bfloat16(), torch.randn(2, L, 2, generator=g).bfloat16()
    x = torch.randn(2, L, 3, generator=g).bfloat16()
    y = Vandermonde(q, k, scale=1e-3, method_fast="chebyshev").matmul(x)
    assert y.dtype == torch.bfloat16
    y32 = Vandermonde(q.float(), k.float(), scale=1e-3, method_fast="chebyshev").matmul(x.float())
    torch.testing.assert_close(y, y32.to(torch.bfloat16), rtol=0, atol=0)


def test_plan_chooses_chebyshev_only_when_cheap():
    assert "chebyshev" in FAST_METHODS and "chebyshev" in APPROXIMATE_METHODS
    g = gen(34)
    # Hydra's scale: n is a few percent of L, far cheaper than tiled and nufft
    long = Vandermonde(torch.randn(1, 2048, 16, generator=g), torch.randn(1, 2048, 16, generator=g), scale=1e-3)
    p = long.plan(64)
    assert p.method == "chebyshev" and p.n_points < 2048 // 20
    assert p.cost_chebyshev < min(p.cost_nufft, p.cost_tiled) and p.bound <= 1e-6
    # short: n is comparable to L, the exact product is cheaper
    short = Vandermonde(long.q[..., :8, :], long.k[..., :8, :], scale=1e-3)
    ps = short.plan(64)
    assert ps.method == "tiled" and ps.cost_chebyshev > ps.cost_tiled and ps.n_points <= 8
    # scale 1: n > L, the path is unavailable and never chosen
    wide = Vandermonde(long.q[..., :512, :], long.k[..., :512, :], scale=1.0)
    pw = wide.plan(64)
    assert pw.method in ("nufft", "tiled") and pw.n_points > 512 and pw.cost_chebyshev == math.inf
    # the decision is the cheapest cost, whichever it is
    for M in (long, short, wide):
        pl = M.plan(64)
        costs = {"chebyshev": pl.cost_chebyshev, "nufft": pl.cost_nufft, "tiled": pl.cost_tiled}
        assert pl.method == min(costs, key=costs.get)
    # forced methods are kept, and only the candidates are costed
    assert Vandermonde(short.q, short.k, scale=1e-3, method_fast="chebyshev").plan(64).method == "chebyshev"
    pt = Vandermonde(long.q, long.k, scale=1e-3, method_fast="tiled").plan(64)
    assert pt.method == "tiled" and pt.n_points == 0 and math.isnan(pt.cost_chebyshev)
    pn = Vandermonde(long.q, long.k, scale=1e-3, method_fast="nufft").plan(64)
    assert pn.method == "nufft" and pn.n_points == 0


def test_forced_with_too_many_points_raises():
    g = gen(35)
    L = 200
    q, k = torch.randn(L, 2, generator=g), torch.randn(L, 2, generator=g)
    x = torch.randn(L, 3, generator=g)
    M = Vandermonde(q, k, scale=1.0, method_fast="chebyshev")
    omega = chebyshev_omega(q, k, 1.0)
    n = chebyshev_plan(L, omega, 1e-6).n
    assert n > L
    pattern = rf"needs n = {n} points .* Omega = .*{L - 1}|needs n = {n} points .*more than L = {L}"
    for call in (lambda: M.matmul(x), lambda: M.plan(3), lambda: vandermonde_matmul_chebyshev(x, q, k, 1.0)):
        with pytest.raises(ValueError, match=pattern) as info:
            call()
        msg = str(info.value)
        assert f"{chebyshev_plan(L, omega, 1e-6).omega:.6g}" in msg and "'nufft'" in msg and "'tiled'" in msg
    # L = 2 at the float64 default needs more than 2 points: forced raises, a coarser eps works
    q2, k2 = q[:2].double(), k[:2].double()
    with pytest.raises(ValueError, match="more than L = 2"):
        Vandermonde(q2, k2, scale=1e-3, method_fast="chebyshev").matmul(x[:2].double())
    Vandermonde(q2, k2, scale=1e-3, eps=1e-3, method_fast="chebyshev").matmul(x[:2].double())


@pytest.mark.parametrize("kwargs, match", [
    (dict(tile=4, method_fast="chebyshev"), "tile=4 sets the row tile .* method_fast='chebyshev' never uses"),
    (dict(eps=1e-3, method_fast="tiled"), "eps=0.001 sets the accuracy"),
    (dict(eps=1e-15, method_fast="chebyshev"), "eps must be"),
    (dict(method_fast="cheb"), r"method_fast must be one of \('auto', 'nufft', 'chebyshev', 'tiled'\)"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Vandermonde(torch.ones(3, 2), torch.ones(3, 2), **kwargs)


@pytest.mark.parametrize("args, match", [
    ((0, 1.0, 1e-6), "length must be"),
    ((5, -1.0, 1e-6), "omega must be"),
    ((5, float("inf"), 1e-6), "omega must be"),
    ((5, 1.0, 0.5), "eps must be"),
])
def test_chebyshev_plan_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        chebyshev_plan(*args)


def test_memory_is_linear_in_L(max_numel, monkeypatch):
    """No L x L (or L x D x n) tensor: the largest one is an (L, n) factor, an (L, P) block or an angle
    block of about BLOCK_ELEMENTS; autograd saves only O(L (n + P + D))."""
    monkeypatch.setattr(structured.base, "BLOCK_ELEMENTS", 2 ** 12)
    g = gen(36)
    L, D, B, Pn = 1500, 8, 2, 3
    q = torch.randn(B, L, D, dtype=F64, generator=g, requires_grad=True)
    k = torch.randn(B, L, D, dtype=F64, generator=g, requires_grad=True)
    x = torch.randn(B, L, Pn, dtype=F64, generator=g, requires_grad=True)
    M = Vandermonde(q, k, scale=1e-3, method_fast="chebyshev")
    n = M.plan(Pn).n_points
    assert 8 <= n <= 60
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with max_numel as mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        M.matmul(x).sum().backward()
    assert mode.max_numel <= max(B * L * n, B * L * max(D, Pn), 2 * 2 ** 12 + B * D * n), (mode.max_numel, mode.op)
    assert mode.max_numel < B * L * D * n and mode.max_numel < L * L
    assert max(saved) <= B * L * max(n, D, Pn)
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and x.grad.shape == x.shape


@pytest.mark.parametrize("L", [1, 2, 50, 1000])
@pytest.mark.parametrize("eps", [1e-3, 1e-6, 1e-12])
@pytest.mark.parametrize("omega", [0.0, 0.3, 7.0, 60.0])
def test_chebyshev_plan_is_minimal_and_valid(L, eps, omega):
    plan = chebyshev_plan(L, omega, eps)
    assert plan.bound <= eps and plan.omega >= omega and plan.n >= 1
    if omega == 0.0:
        assert (plan.n, plan.bound) == (1, 0.0)
        return
    # independent evaluation on a finer rho grid: with one point fewer no rho reaches eps
    u = torch.logspace(-8, 2, 200000, dtype=F64)
    log_m = plan.omega * torch.sinh(u) + torch.log1p(torch.exp(-2 * plan.omega * torch.sinh(u))) - math.log(2)
    log_bound = math.log(4) + log_m - (plan.n - 2) * u - torch.log(torch.expm1(u))
    assert float(log_bound.min()) > math.log(eps) - 0.05
    # the larger n of a larger Omega
    assert chebyshev_plan(L, 2 * omega + 1, eps).n >= plan.n


@pytest.mark.parametrize("eps", [1e-3, 1e-6, 1e-12])
def test_omega_limits_invert_the_bound(eps):
    """chebyshev_omega_limits (the table the GPU kernels look n up in) inverts the plan's bound: at each limit n points
    meet eps, 1e-6 above it they do not; the limits increase; and the lookup 1 + #{limits < Omega} is the plan's n
    wherever the plan's own rounding of Omega (up by <= 1.1%) does not cross a limit."""
    from structured.vandermonde import _log_ellipse_bounds
    lim = chebyshev_omega_limits(300, eps)
    assert all(a < b for a, b in zip(lim, lim[1:]))
    for n in range(2, 300, 7):
        assert _log_ellipse_bounds(n, lim[n - 1], 100)[0] <= math.log(eps)
        assert _log_ellipse_bounds(n, lim[n - 1] * (1 + 1e-6), 100)[0] > math.log(eps)
    for omega in (0.0, 0.5, 8.0, 27.3, 120.0):
        n_table = 1 + sum(v < omega for v in lim)
        n_plan = chebyshev_plan(512, omega, eps).n
        assert n_table <= n_plan <= 1 + sum(v < omega * 1.011 for v in lim)
    with pytest.raises(ValueError, match="n_max must be a positive int"):
        chebyshev_omega_limits(0, eps)
