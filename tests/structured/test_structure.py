"""Rank properties: each class passes its own check, random dense matrices and structured + noise fail
it, and the inclusions the Hydra paper relies on (low rank, semiseparable are quasiseparable)."""
from __future__ import annotations

import pytest
import torch

import structured
from structured import properties as P
from structured.low_rank import LowRank
from structured.quasiseparable import Quasiseparable
from structured.semiseparable import Semiseparable

# Every class with a nontrivial defining property (dense is the negative control itself).
CLASSES = [n for n in ("low_rank", "toeplitz", "dft", "semiseparable", "quasiseparable")]


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("length", [1, 5, 24])
def test_random_instances_pass(name, length, gen):
    for dtype in (torch.float64, torch.float32):
        M = structured.get(name).random(length, batch_shape=(2,), dtype=dtype, generator=gen)
        report = M.check_structure()
        assert report.ok, str(report)
        assert report.measured <= report.bound
        assert report.tol == (1e-10 if dtype == torch.float64 else 1e-5)
        assert "PASS" in str(report)


def _with_dense(M, D):
    """The same instance whose materialization is replaced by D: check_structure then tests D."""
    M.to_dense = lambda: D
    return M


@pytest.mark.parametrize("name", CLASSES)
def test_random_dense_fails(name, gen):
    L = 24
    M = structured.get(name).random(L, batch_shape=(2,), dtype=torch.float64, generator=gen)
    D = torch.randn(2, L, L, generator=gen, dtype=torch.float64)
    report = _with_dense(M, D).check_structure()
    assert not report.ok and "FAIL" in str(report)


@pytest.mark.parametrize("name", CLASSES)
def test_structured_plus_tiny_noise_fails(name, gen):
    L = 24
    M = structured.get(name).random(L, batch_shape=(2,), dtype=torch.float64, generator=gen)
    D = M.to_dense() + 1e-6 * torch.randn(2, L, L, generator=gen, dtype=torch.float64)
    assert not _with_dense(M, D).check_structure(tol=1e-10).ok
    # The check is a bound, not an equality: the exact matrix still passes at the same tolerance.
    assert structured.get(name).random(L, dtype=torch.float64, generator=gen).check_structure(tol=1e-10).ok


def test_dense_control_reports_full_rank(gen):
    M = structured.get("dense").random(12, dtype=torch.float64, generator=gen)
    rep = M.check_structure()
    assert rep.ok and rep.measured == 12 and M.order is None


def test_low_rank_is_quasiseparable(gen):
    r, L = 3, 20
    D = LowRank.random(L, batch_shape=(2,), order=r, dtype=torch.float64, generator=gen).to_dense()
    lower, upper = P.quasiseparable_order(D)
    assert int(lower.max()) <= r and int(upper.max()) <= r


def test_semiseparable_is_quasiseparable(gen):
    N, L = 3, 20
    D = Semiseparable.random(L, batch_shape=(2,), order=N, dtype=torch.float64, generator=gen).to_dense()
    lower, upper = P.quasiseparable_order(D)
    assert int(lower.max()) <= N and int(upper.max()) == 0


def test_semiseparable_strict_upper_is_checked(gen):
    """A quasiseparable (bidirectional) matrix is not semiseparable: the upper part is nonzero."""
    M = Quasiseparable.random(16, order=2, dtype=torch.float64, generator=gen)
    order, upper = P.semiseparable_order(M.to_dense())
    assert float(upper) > 1e-3


def test_hydra_block_including_diagonal_is_not_low_rank(gen):
    """The diagonal is free: blocks that include it exceed the order (so the QS check must exclude it)."""
    N, L = 2, 20
    M = Quasiseparable.random(L, order=N, dtype=torch.float64, generator=gen)
    D = M.to_dense()
    worst = max(int(P.numerical_rank(D[k:, : k + 1], ref_norm=P.spectral_norm(D))) for k in range(L))
    assert worst > N


def test_property_functions_on_known_matrices():
    Z = P.shift_matrix(5)
    assert torch.equal(Z @ torch.arange(5.0, dtype=torch.float64), torch.tensor([0, 0, 1, 2, 3.0], dtype=torch.float64))
    x = torch.tensor([1.0, 2.5, 4.0], dtype=torch.float64)
    y = torch.tensor([0.5, 3.0, 7.0], dtype=torch.float64)
    C = 1 / (x[:, None] - y[None, :])
    assert int(P.cauchy_displacement_rank(C, x, y)) == 1
    assert int(P.cauchy_displacement_rank(1 / (x[:, None] + y[None, :]), x, y, sign=1.0)) == 1
    with pytest.raises(ValueError, match="tol"):
        P.numerical_rank(C, tol=0.0)
    with pytest.raises(ValueError, match="M must be"):
        P.numerical_rank(torch.ones(3))


def test_semiseparable_is_a_quasiseparable_instance(gen, rel_err):
    """Constructive inclusion: SS(b, c, a) == QS(b, c, a, delta=0, c_bwd=0, shift=False) (the tied diagonal
    c_i . b_i is the semiseparable one), entrywise and through the fast products."""
    L, N = 13, 3
    S = Semiseparable.random(L, batch_shape=(2,), order=N, dtype=torch.float64, generator=gen)
    Q = Quasiseparable(S.b, S.c, S.log_a, torch.zeros(2, L, dtype=torch.float64),
                       c_bwd=torch.zeros_like(S.c), shift=False)
    assert torch.allclose(Q.to_dense(), S.to_dense(), rtol=0, atol=1e-15)
    x = torch.randn(2, L, 4, generator=gen, dtype=torch.float64)
    assert rel_err(Q.matmul(x), S.matmul(x)) <= 1e-13


def test_low_rank_is_a_quasiseparable_instance(gen, rel_err):
    """Constructive inclusion: Q K^T is the addition-based bidirectional SSM with no decay (log_a = 0),
    forward and backward generators (b, c) = (k, q), whose tied diagonal 2 q_i . k_i is corrected by
    delta_i = -q_i . k_i; order r."""
    L, r = 11, 2
    M = LowRank.random(L, batch_shape=(3,), order=r, dtype=torch.float64, generator=gen)
    zeros = torch.zeros(3, L, dtype=torch.float64)
    Q = Quasiseparable(M.k, M.q, zeros, -(M.q * M.k).sum(-1), shift=False)
    assert Q.order == r and torch.allclose(Q.to_dense(), M.to_dense(), rtol=0, atol=1e-14)
    x = torch.randn(3, L, 2, generator=gen, dtype=torch.float64)
    assert rel_err(Q.matmul(x), M.matmul(x, method="explicit")) <= 1e-12
    assert Q.check_structure().ok
