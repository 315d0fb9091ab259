"""Tests for structured.cauchy: exponential-sum and tiled fast paths against an independent reference,
the stated componentwise error bounds (values and gradients), autograd, memory, validation, structure."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kernels
import structured
from structured import properties as P
from structured.cauchy import (
    Cauchy,
    cauchy_dense,
    cauchy_matmul_expsum,
    cauchy_matmul_tiled,
    exp_sum_nodes,
)

F64 = torch.float64
U32 = 2.0 ** -24
U64 = 2.0 ** -53


def gen(seed):
    return torch.Generator().manual_seed(seed)


def positive(shape, g, dtype=F64):
    return (torch.exp(0.5 * torch.randn(shape, dtype=F64, generator=g)) + 0.5).to(dtype)


def reference_dense(q, k, c=0.0):
    """Independent float64 numpy materialization of m_ij = sum_d 1/(q_id + k_jd + c)."""
    qn = q.detach().double().numpy()
    kn = k.detach().double().numpy()
    qn, kn = np.broadcast_arrays(qn, kn)
    out = np.zeros(qn.shape[:-2] + (qn.shape[-2], kn.shape[-2]))
    for d in range(qn.shape[-1]):
        out += 1.0 / (qn[..., :, None, d] + kn[..., None, :, d] + float(c))
    return torch.from_numpy(out)


def abs_bound(Mref, x):
    return Mref.abs() @ x.abs().double()


# ------------------------------------------------------------------------------ the quadrature itself
@pytest.mark.parametrize("eps", [1e-1, 1e-3, 1e-6, 1e-10, 1e-13, 1e-15])
@pytest.mark.parametrize("R", [1.0, 3.0, 1e3, 1e9])
def test_exp_sum_nodes_entrywise_bound(eps, R):
    tau, w = exp_sum_nodes(eps, R)
    z = torch.exp(torch.linspace(0.0, math.log(R), 3001, dtype=F64))
    E = torch.exp(-z[:, None] * tau[None, :])
    val_err = (z * (E @ w) - 1).abs().max().item()
    der_err = (z ** 2 * (E @ (w * tau)) - 1).abs().max().item()
    # float64 evaluation adds ~1e-15 rounding: it only matters for the smallest eps
    slack = 3e-15
    assert val_err <= eps + slack, (val_err, eps)
    assert der_err <= eps + slack, (der_err, eps)


@pytest.mark.parametrize("eps", [1e-3, 1e-6, 1e-13])
@pytest.mark.parametrize("R", [1.0, 40.0, 1e6])
def test_exp_sum_nodes_min_count_keeps_the_bound(eps, R):
    """More nodes over the same interval (what the GPU kernels ask for) still meet eps, and are used."""
    n0 = len(exp_sum_nodes(eps, R)[0])
    for count in (n0 - 1, n0 + 1, 2 * n0 + 3):
        tau, w = exp_sum_nodes(eps, R, min_count=count)
        assert len(tau) == max(n0, count)
        z = torch.exp(torch.linspace(0.0, math.log(R), 2001, dtype=F64))
        E = torch.exp(-z[:, None] * tau[None, :])
        assert (z * (E @ w) - 1).abs().max().item() <= eps + 3e-15
        assert (z ** 2 * (E @ (w * tau)) - 1).abs().max().item() <= eps + 3e-15


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "16"])
def test_exp_sum_nodes_bad_min_count(bad):
    with pytest.raises(ValueError, match="min_count must be"):
        exp_sum_nodes(1e-6, 10.0, bad)


def test_exp_sum_nodes_count_grows_logarithmically():
    n = [len(exp_sum_nodes(1e-6, R)[0]) for R in (1.0, 1e2, 1e4, 1e8)]
    assert n == sorted(n) and n[-1] - n[0] < 60  # ~ ln(R) ln(1000/eps)/pi^2 extra nodes


@pytest.mark.parametrize("bad", [0.0, 1.0, 1e-16, "1e-6", True, -1e-3])
def test_exp_sum_nodes_bad_eps(bad):
    with pytest.raises(ValueError, match="eps"):
        exp_sum_nodes(bad, 10.0)


@pytest.mark.parametrize("bad", [0.5, float("inf"), float("nan"), "10"])
def test_exp_sum_nodes_bad_R(bad):
    with pytest.raises(ValueError, match="R must be"):
        exp_sum_nodes(1e-6, bad)


# ------------------------------------------------------------------------------ materialization
@pytest.mark.parametrize("L", [1, 2, 7])
def test_to_dense_matches_formula(L):
    g = gen(L)
    q, k = positive((2, L, 3), g), positive((2, L, 3), g)
    M = Cauchy(q, k, c=0.25)
    torch.testing.assert_close(M.to_dense(), reference_dense(q, k, 0.25), rtol=1e-15, atol=0)
    assert M.shape == (2, L, L) and M.order == 3 and M.length == L
    assert structured.get("cauchy") is Cauchy


# ------------------------------------------------------------------------------ exact tiled path
@pytest.mark.parametrize("L", [1, 2, 7, 33])
@pytest.mark.parametrize("tile", [None, 1, 4])
def test_tiled_matches_reference_float64(L, tile):
    g = gen(100 + L)
    q, k = positive((2, 3, L, 2), g), positive((2, 3, L, 2), g)
    x = torch.randn(2, 3, L, 5, dtype=F64, generator=g)
    M = Cauchy(q, k, c=0.1, method_fast="tiled", tile=tile)
    Mref = reference_dense(q, k, 0.1)
    y = M.matmul(x)
    err = (y - Mref @ x).abs()
    assert (err <= 1e-13 * abs_bound(Mref, x) + 1e-300).all()
    assert not M.approximate and M.error_bound is None and M.error_eps == 0.0
    torch.testing.assert_close(cauchy_matmul_tiled(x, q, k, 0.1, tile=tile), y, rtol=0, atol=0)


def test_tiled_float32_within_rounding_bound():
    g = gen(5)
    L, D = 129, 2
    q, k = positive((3, L, D), g, torch.float32), positive((3, L, D), g, torch.float32)
    x = torch.randn(3, L, 4, generator=g)
    y = Cauchy(q, k, method_fast="tiled").matmul(x)
    assert y.dtype == torch.float32
    Mref = reference_dense(q, k)
    err = (y.double() - Mref @ x.double()).abs()
    assert (err <= (L + D + 32) * U32 * abs_bound(Mref, x)).all()


def test_broadcast_batch_dims_both_paths():
    g = gen(6)
    L = 9
    q = positive((2, 1, L, 2), g)
    k = positive((1, 3, L, 2), g)
    x = torch.randn(3, L, 4, dtype=F64, generator=g)
    Mref = reference_dense(q, k)
    for method in ("tiled", "expsum"):
        M = Cauchy(q, k, method_fast=method)
        assert M.batch_shape == (2, 3)
        y = M.matmul(x)
        assert y.shape == (2, 3, L, 4)
        assert ((y - Mref @ x).abs() <= 1e-12 * abs_bound(Mref, x)).all()
        y0 = Cauchy(q[0, 0], k[0, 0], method_fast=method).matmul(x[0])      # no batch dims at all
        assert y0.shape == (L, 4)
        assert ((y0 - Mref[0, 0] @ x[0]).abs() <= 1e-12 * abs_bound(Mref[0, 0], x[0])).all()


@pytest.mark.parametrize("c_tensor", [False, True])
def test_tiled_gradcheck(c_tensor):
    g = gen(7)
    L = 5
    q = positive((2, L, 2), g).requires_grad_()
    k = positive((1, L, 2), g).requires_grad_()          # broadcast: gradient must be summed over batch
    x = torch.randn(2, L, 3, dtype=F64, generator=g, requires_grad=True)
    c = torch.tensor(0.3, dtype=F64, requires_grad=True) if c_tensor else 0.3

    def f(x, q, k, *c_):
        return Cauchy(q, k, c=c_[0] if c_ else c, method_fast="tiled", tile=2).matmul(x)

    args = (x, q, k, c) if c_tensor else (x, q, k)
    assert torch.autograd.gradcheck(f, args)


def test_tiled_gradients_match_explicit_autograd():
    g = gen(8)
    L = 23
    q = positive((2, L, 3), g).requires_grad_()
    k = positive((2, L, 3), g).requires_grad_()
    x = torch.randn(2, L, 4, dtype=F64, generator=g, requires_grad=True)
    w = torch.randn(2, L, 4, dtype=F64, generator=g)
    grads = {}
    for method in ("tiled", "explicit"):
        M = Cauchy(q, k, method_fast="tiled", tile=3)
        y = M.matmul(x, method="fast" if method == "tiled" else "explicit")
        grads[method] = torch.autograd.grad((y * w).sum(), (x, q, k))
    for a, b in zip(grads["tiled"], grads["explicit"]):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


def test_tiled_memory_is_linear_in_L(max_numel):
    g = gen(9)
    L, D, tile, B, Pn = 160, 2, 4, 2, 3
    q = positive((B, L, D), g).requires_grad_()
    k = positive((B, L, D), g).requires_grad_()
    x = torch.randn(B, L, Pn, dtype=F64, generator=g, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    M = Cauchy(q, k, method_fast="tiled", tile=tile)
    with max_numel as mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = M.matmul(x)
        y.sum().backward()
    assert mode.max_numel <= B * tile * L * D, (mode.max_numel, mode.op)
    assert mode.max_numel < L * L
    assert max(saved) <= B * L * max(D, Pn)
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and x.grad.shape == x.shape


# ------------------------------------------------------------------------------ exponential sums
@pytest.mark.parametrize("eps", [1e-3, 1e-8, None])
@pytest.mark.parametrize("L", [1, 6, 41])
def test_expsum_componentwise_bound_values_and_gradients(eps, L):
    g = gen(1000 + L)
    D = 2
    q = positive((2, L, D), g).requires_grad_()
    k = positive((2, L, D), g).requires_grad_()
    c = torch.tensor(0.2, dtype=F64, requires_grad=True)
    x = torch.randn(2, L, 3, dtype=F64, generator=g, requires_grad=True)
    gout = torch.randn(2, L, 3, dtype=F64, generator=g)

    M = Cauchy(q, k, c=c, eps=eps, method_fast="expsum")
    plan = M.plan(3)
    assert plan.method == "expsum" and M.approximate
    e = 1e-13 if eps is None else eps
    assert plan.eps == e == M.error_eps and isinstance(Cauchy.error_bound, str)
    y = M.matmul(x)
    gx, gq, gk, gc = torch.autograd.grad((y * gout).sum(), (x, q, k, c))

    # float64 reference from the formula, and its exact gradients
    den = q.detach()[..., :, None, :] + k.detach()[..., None, :, :] + c.detach()      # (2, L, L, D)
    Mref = (1 / den).sum(-1)
    G = gout @ x.detach().transpose(-1, -2)                                               # g_i . x_j
    gq_ref = -(G[..., None] / den ** 2).sum(-2)
    gk_ref = -(G[..., None] / den ** 2).sum(-3)
    Gabs_w = G.abs()[..., None] / den ** 2
    gamma = (L + plan.rank + 32) * U64
    tol = e + gamma

    assert ((y.detach() - Mref @ x.detach()).abs() <= tol * abs_bound(Mref, x)).all()
    assert ((gx - Mref.transpose(-1, -2) @ gout).abs() <= tol * (Mref.transpose(-1, -2) @ gout.abs())).all()
    assert ((gq - gq_ref).abs() <= tol * Gabs_w.sum(-2)).all()
    assert ((gk - gk_ref).abs() <= tol * Gabs_w.sum(-3)).all()
    assert (gc - gq_ref.sum()).abs() <= tol * Gabs_w.sum()
    if eps == 1e-3 and L > 1:
        # the bound is not vacuous: at eps = 1e-3 the approximation error is visible
        rel = ((y.detach() - Mref @ x.detach()).abs() / abs_bound(Mref, x)).max()
        assert rel > 1e-7


def test_expsum_float32_within_stated_bound():
    g = gen(11)
    L, D = 257, 2
    M = Cauchy.random(L, (2,), order=D, dtype=torch.float32, generator=g)
    x = torch.randn(2, L, 8, generator=g)
    plan = M.plan(8)
    assert plan.method == "expsum" and plan.eps == 1e-6
    y = M.matmul(x)
    assert y.dtype == torch.float32
    Mref = reference_dense(M.q, M.k)
    err = (y.double() - Mref @ x.double()).abs()
    assert (err <= (plan.eps + (L + plan.rank + 32) * U32) * abs_bound(Mref, x)).all()


def test_expsum_gradcheck():
    g = gen(12)
    L = 6
    q = positive((2, L, 2), g).requires_grad_()
    k = positive((2, L, 2), g).requires_grad_()
    x = torch.randn(2, L, 2, dtype=F64, generator=g, requires_grad=True)
    c = torch.tensor(0.1, dtype=F64, requires_grad=True)

    def f(x, q, k, c):
        return cauchy_matmul_expsum(x, q, k, c)

    assert torch.autograd.gradcheck(f, (x, q, k, c))


def test_expsum_wide_dynamic_range():
    # R ~ 1e6: nodes spanning six decades still meet the entrywise bound
    g = gen(13)
    L = 40
    q = torch.logspace(-3, 3, L, dtype=F64)[:, None].expand(L, 2).contiguous()
    k = torch.logspace(-3, 0, L, dtype=F64)[torch.randperm(L, generator=g)][:, None] * torch.ones(2, dtype=F64)
    x = torch.randn(L, 3, dtype=F64, generator=g)
    M = Cauchy(q, k, eps=1e-9, method_fast="expsum")
    assert M.plan().R > 1e5
    Mref = reference_dense(q, k)
    assert ((M.matmul(x) - Mref @ x).abs() <= 1.01e-9 * abs_bound(Mref, x)).all()


# ------------------------------------------------------------------------------ dtypes, choice, dispatch
def test_half_inputs_accumulate_in_float32():
    g = gen(14)
    L = 17
    q, k = positive((2, L, 2), g, torch.bfloat16), positive((2, L, 2), g, torch.bfloat16)
    x = torch.randn(2, L, 3, generator=g).to(torch.bfloat16)
    for method in ("tiled", "expsum"):
        y = Cauchy(q, k, method_fast=method).matmul(x)
        assert y.dtype == torch.bfloat16
        y32 = Cauchy(q.float(), k.float(), method_fast=method).matmul(x.float())
        torch.testing.assert_close(y, y32.to(torch.bfloat16), rtol=0, atol=0)
    assert Cauchy(q, k).to_dense().dtype == torch.float32


def test_auto_choice_follows_cost():
    g = gen(15)
    long = Cauchy.random(4096, order=2, dtype=torch.float32, generator=g)
    p = long.plan(64)
    assert p.method == "expsum" and p.rank * 20 <= 4096 and p.cost_expsum < p.cost_tiled
    short = Cauchy.random(8, order=2, dtype=torch.float32, generator=g)
    assert short.plan(64).method == "tiled"
    assert Cauchy(short.q, short.k, method_fast="expsum").plan(64).method == "expsum"
    assert Cauchy(long.q, long.k, method_fast="tiled").plan(64).method == "tiled"
    # float64 needs more nodes (eps = 1e-13) than float32 (1e-6)
    assert long.plan(64, torch.float64).n_nodes > p.n_nodes


def test_plan_backend_on_cpu():
    M = Cauchy.random(64, order=2, dtype=torch.float32, generator=gen(17))
    p = Cauchy(M.q, M.k, method_fast="expsum").plan(8)
    assert p.backend == "torch" and p.n_nodes == len(exp_sum_nodes(p.eps, p.R)[0])
    assert Cauchy(M.q, M.k, method_fast="tiled").plan(8).backend == "torch"


def test_kernel_dispatch_hook(monkeypatch):
    g = gen(16)
    L = 6
    q, k = positive((1, L, 2), g, torch.float32), positive((3, L, 2), g, torch.float32)
    x = torch.randn(3, L, 4, generator=g)
    calls = []

    def fake(x_, q_, k_, c_):
        calls.append((x_.shape, q_.shape, k_.shape, q_.dtype, c_))
        assert torch.equal(q_, (q + 0.5).expand(3, L, 2)) and torch.equal(k_, k.expand(3, L, 2))
        return torch.zeros_like(x_)

    monkeypatch.setattr(kernels, "enabled", lambda t: True)
    monkeypatch.setattr(kernels, "cauchy_matmul", fake)
    y = Cauchy(q, k, c=0.5, method_fast="tiled").matmul(x)
    # the shift reaches the kernel folded into the row nodes (q + c), as on every other path
    assert calls == [((3, L, 4), (3, L, 2), (3, L, 2), torch.float32, 0.0)] and (y == 0).all()
    assert len(calls) == 1

    # the expansion goes to the fused feature-map kernel with eps's quadrature rule only: the kernels place the nodes on
    # the device, so with validate=False no value ever comes back to the host (no synchronization)
    import structured.cauchy as sc
    import kernels.cauchy as kc
    expsum_calls = []

    def fake_expsum(x_, xn_, yn_, eps_):
        expsum_calls.append(eps_)
        assert torch.equal(xn_, q.expand(3, L, 2)) and torch.equal(yn_, k.expand(3, L, 2))
        return torch.ones_like(x_)

    def no_sync(*a, **kw):
        raise AssertionError("the node scaling (a host synchronization) ran on the kernel path")

    monkeypatch.setattr(kc, "cauchy_expsum_product", fake_expsum)
    M = Cauchy(q, k, method_fast="expsum")
    plan = M.plan(4)
    chunk = kc.expsum_chunk(sc.quadrature_constants(plan.eps))
    assert plan.backend == "triton" and plan.n_nodes == kc.expsum_feature_count(plan.n_nodes, chunk)
    assert plan.n_nodes % chunk == 0 and plan.n_nodes <= kc.expsum_max_features(sc.quadrature_constants(plan.eps))
    monkeypatch.setattr(sc, "_node_scaling", no_sync)
    fast = Cauchy(q, k, method_fast="expsum", validate=False)
    assert (fast.matmul(x) == 1).all() and expsum_calls == [sc.quadrature_constants(plan.eps)] and len(calls) == 1
    # "auto" decides from the kernels' largest feature count, without the data either
    assert Cauchy(q, k, validate=False)._kernel_method(kc, 4, torch.float32) == ("tiled", 0.0)   # L = 6
    with pytest.raises(AssertionError, match="synchronization"):      # validate=True checks the range
        M.matmul(x)


def test_kernel_path_validate_rejects_a_spread_beyond_r_max(monkeypatch):
    import kernels.cauchy as kc
    monkeypatch.setattr(kernels, "enabled", lambda t: True)
    monkeypatch.setattr(kc, "cauchy_expsum_product", lambda *a: pytest.fail("must raise before the product"))
    q = torch.tensor([[1e-7], [1e6]]).expand(2, 2).contiguous()
    k = torch.full((2, 2), 1e-7)
    with pytest.raises(ValueError, match="exceeds the GPU expansion's R_MAX"):
        Cauchy(q, k, method_fast="expsum").matmul(torch.ones(2, 1))


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("kwargs, match", [
    (dict(q=torch.tensor([[1.0, 0.0]]).T.expand(2, 2).contiguous()), "q must be > 0"),
    (dict(k=torch.full((2, 2), float("nan"))), "k must be > 0"),
    (dict(k=-torch.ones(2, 2)), "k must be > 0"),
    (dict(c=-0.1), "c must be >= 0"),
    (dict(c=torch.tensor(-0.1)), "c must be >= 0"),
    (dict(c="0"), "c must be"),
    (dict(c=float("inf")), "c must be"),
    (dict(c=torch.ones(2)), "c must be"),
    (dict(eps=0.0), "eps must be"),
    (dict(eps=0.5), "eps must be"),
    (dict(method_fast="fft"), "method_fast must be one of"),
    (dict(tile=0), "tile must be"),
    (dict(eps=1e-3, method_fast="tiled"), "eps=0.001 sets the accuracy of the 'expsum' path, .* method_fast='tiled'"),
    (dict(tile=4, method_fast="expsum"), "tile=4 sets the row tile .* method_fast='expsum' never uses"),
    (dict(k=torch.ones(3, 2)), "q and k must both have shape"),
    (dict(q=torch.ones(2)), "q must have shape"),
    (dict(q=torch.ones(2, 2, dtype=torch.long)), "q must be a floating tensor"),
    (dict(q=torch.ones(2, 1, 2), k=torch.ones(3, 1, 2)), "must broadcast"),
])
def test_bad_arguments(kwargs, match):
    args = dict(q=torch.ones(2, 2), k=torch.ones(2, 2))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Cauchy(**args)


def test_validate_false_skips_value_check_only():
    M = Cauchy(-torch.ones(3, 2), torch.ones(3, 2), validate=False, method_fast="expsum")
    with pytest.raises(ValueError, match="positive denominators"):
        M.matmul(torch.ones(3, 1))
    with pytest.raises(ValueError, match="q and k"):
        Cauchy(torch.ones(3, 2), torch.ones(4, 2), validate=False)


def test_bad_x():
    M = Cauchy(torch.ones(4, 2), torch.ones(4, 2))
    with pytest.raises(ValueError, match="x must have shape"):
        M.matmul(torch.ones(5, 3))


# ------------------------------------------------------------------------------ structure
@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("L", [1, 24])
def test_check_structure_passes_on_random(dtype, L):
    M = Cauchy.random(L, (2,), order=3, dtype=dtype, generator=gen(17))
    rep = M.check_structure()
    assert rep.ok and rep.bound == 1 and len(rep.parts) == 3 and all(p.ok for p in rep.parts), str(rep)


def test_check_structure_fails_on_random_dense(monkeypatch):
    M = Cauchy.random(20, (2,), order=2, dtype=F64, generator=gen(18))
    dense = torch.randn(2, 2, 20, 20, dtype=F64, generator=gen(19))
    monkeypatch.setattr(Cauchy, "term_matrices", lambda self: dense)
    rep = M.check_structure()
    assert not rep.ok and rep.measured > 1


def test_check_structure_fails_on_perturbed_term(monkeypatch):
    M = Cauchy.random(20, order=1, dtype=F64, generator=gen(20))
    exact = M.term_matrices()
    noisy = exact + 1e-6 * torch.randn(exact.shape, dtype=F64, generator=gen(21))
    monkeypatch.setattr(Cauchy, "term_matrices", lambda self: noisy)
    assert not M.check_structure().ok


def test_sum_of_terms_breaks_single_pair_displacement():
    M = Cauchy.random(16, order=3, dtype=F64, generator=gen(22))
    rank = P.cauchy_displacement_rank(M.to_dense(), M.q[:, 0], M.k[:, 0], 1e-10, sign=+1.0)
    assert int(rank) > 1


def test_cauchy_dense_general_form():
    g = gen(23)
    x = torch.randn(3, 11, dtype=F64, generator=g)
    y = torch.randn(3, 9, dtype=F64, generator=g) + 10.0
    C = cauchy_dense(x, y)
    assert C.shape == (3, 11, 9)
    torch.testing.assert_close(C, 1 / (x[..., :, None] - y[..., None, :]), rtol=0, atol=0)
    assert (P.cauchy_displacement_rank(C, x, y, 1e-10, sign=-1.0) <= 1).all()
    # negative control: a random dense matrix with the same nodes
    R = torch.randn(3, 11, 9, dtype=F64, generator=g)
    assert (P.cauchy_displacement_rank(R, x, y, 1e-10, sign=-1.0) > 1).all()
    with pytest.raises(ValueError, match="x and y must not share a value"):
        cauchy_dense(torch.tensor([1.0, 2.0]), torch.tensor([2.0]))
    with pytest.raises(ValueError, match="must broadcast"):
        cauchy_dense(torch.ones(2, 3), torch.ones(3, 3) * 5)


def test_random_signature_and_positivity():
    M = Cauchy.random(33, (2, 3), dtype=torch.float32, generator=gen(24))
    assert M.order == 2 and M.batch_shape == (2, 3) and M.dtype == torch.float32
    assert (M.q > 0.5).all() and (M.k > 0.5).all()
    M2 = Cauchy.random(33, (2, 3), dtype=torch.float32, generator=gen(24))
    assert torch.equal(M.q, M2.q)
    with pytest.raises(ValueError, match="order"):
        Cauchy.random(8, order=0)


def test_default_tile_follows_library_block_budget(monkeypatch, max_numel):
    monkeypatch.setattr(structured.base, "BLOCK_ELEMENTS", 4096)
    g = gen(25)
    L, D, B = 160, 2, 2
    q = positive((B, L, D), g).requires_grad_()
    k = positive((B, L, D), g).requires_grad_()
    x = torch.randn(B, L, 3, dtype=F64, generator=g, requires_grad=True)
    M = Cauchy(q, k, method_fast="tiled")
    with max_numel as mode:
        M.matmul(x).sum().backward()
    assert mode.max_numel <= 4096, (mode.max_numel, mode.op)
