"""structured.properties: default tolerances follow the input's dtype (float32 rank-3 measures rank 3)."""
import pytest
import torch

from structured import properties as P


def _low_rank(n, r, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    U, V = torch.randn(n, r, generator=g, dtype=torch.float64), torch.randn(n, r, generator=g, dtype=torch.float64)
    return (U @ V.T).to(dtype)


def test_float32_rank3_measures_rank3():
    """Failed before: tol defaulted to 1e-10 whatever the dtype, and float32 rounding counted as rank (~64)."""
    M = _low_rank(64, 3, torch.float32)
    assert int(P.numerical_rank(M)) == 3
    assert int(P.low_rank_order(M)) == 3
    assert int(P.numerical_rank(_low_rank(64, 3, torch.float64))) == 3
    # an explicit tolerance is still obeyed
    assert int(P.numerical_rank(M, tol=1e-12)) > 3


def test_float32_orders_and_displacements():
    n = 48
    g = torch.Generator().manual_seed(1)
    # semiseparable order 2 (scalar-decay SSM, lower triangle) and a quasiseparable lower + upper of order 2
    a = torch.rand(n, generator=g, dtype=torch.float64) * 0.5 + 0.5
    b, c = torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)
    logs = torch.cumsum(torch.log(a), 0)
    decay = torch.exp(logs[:, None] - logs[None, :])
    S = torch.tril((c @ b.T) * decay)
    order, upper = P.semiseparable_order(S.float())
    assert int(order) == 2 and float(upper) == 0.0
    Q = S + S.T.clone() + torch.diag(torch.randn(n, generator=g, dtype=torch.float64))
    lo, up = P.quasiseparable_order(Q.float())
    assert (int(lo), int(up)) == (2, 2)
    # Toeplitz: displacement rank <= 2
    w = torch.randn(2 * n - 1, generator=g, dtype=torch.float64)
    i = torch.arange(n)
    T = w[(n - 1) + i[:, None] - i[None, :]]
    assert int(P.toeplitz_displacement_rank(T.float())) <= 2
    # Cauchy 1/(x_i + y_j) with float32 nodes: displacement rank 1
    x, y = torch.rand(n, generator=g) + 0.5, torch.rand(n, generator=g) + 0.5
    C = 1.0 / (x[:, None] + y[None, :])
    assert int(P.cauchy_displacement_rank(C, x, y, sign=+1.0)) == 1
    theta = torch.rand(n, generator=g) * 3
    V = torch.cos(theta[:, None] * torch.arange(n, dtype=torch.float32)[None, :])
    assert int(P.cosine_displacement_rank(V, theta)) <= 2


def test_checks_still_fail_on_random_dense_float32():
    D = torch.randn(40, 40, generator=torch.Generator().manual_seed(2))
    assert int(P.numerical_rank(D)) == 40
    assert int(P.toeplitz_displacement_rank(D)) > 2
    assert int(P.semiseparable_order(D)[0]) > 2


@pytest.mark.parametrize("tol", [0, 1, -1e-3, "x"])
def test_bad_tolerance_names_it(tol):
    with pytest.raises(ValueError, match="tol must be a float in"):
        P.numerical_rank(torch.eye(3), tol=tol)
