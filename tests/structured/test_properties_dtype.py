"""structured.properties: default tolerances follow the input's dtype (a float32, float16 or bfloat16 rank-3
matrix measures rank 3; random dense matrices still fail every check)."""
import pytest
import torch

from structured import properties as P


def _low_rank(n, r, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    U, V = torch.randn(n, r, generator=g, dtype=torch.float64), torch.randn(n, r, generator=g, dtype=torch.float64)
    return (U @ V.T).to(dtype)


def test_float32_rank3_measures_rank3():
    """The default tolerance follows the dtype: a float32 rank-3 matrix measures rank 3."""
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


HALF = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", HALF)
def test_half_rank3_measures_rank3(dtype):
    """Half-precision tolerances follow the dtype: a rank-3 64 x 64 matrix measures rank 3 in float16 and
    bfloat16."""
    assert P.default_tol(dtype) == 4 * torch.finfo(dtype).eps
    for n, seed in ((16, 0), (64, 1), (256, 2)):
        assert int(P.numerical_rank(_low_rank(n, 3, dtype, seed))) == 3, (n, seed)
    g = torch.Generator().manual_seed(3)
    U, V = torch.randn(64, 3, generator=g).to(dtype), torch.randn(64, 3, generator=g).to(dtype)
    assert int(P.numerical_rank(U @ V.T)) == 3   # a product computed in the half dtype
    # a float64 tolerance asked for counts the rounding as rank
    assert int(P.numerical_rank(_low_rank(64, 3, dtype), tol=1e-10)) > 3


@pytest.mark.parametrize("dtype", HALF)
def test_half_orders_and_displacements(dtype):
    """Rounding to a half dtype does not count as order or displacement rank; random dense matrices still fail
    every check."""
    n = 48
    g = torch.Generator().manual_seed(1)
    a = torch.rand(n, generator=g, dtype=torch.float64) * 0.5 + 0.5
    b, c = torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)
    logs = torch.cumsum(torch.log(a), 0)
    S = torch.tril((c @ b.T) * torch.exp(logs[:, None] - logs[None, :]))
    assert int(P.semiseparable_order(S.to(dtype))[0]) == 2
    Q = S + S.T.clone() + torch.diag(torch.randn(n, generator=g, dtype=torch.float64))
    assert tuple(int(v) for v in P.quasiseparable_order(Q.to(dtype))) == (2, 2)
    w = torch.randn(2 * n - 1, generator=g, dtype=torch.float64)
    i = torch.arange(n)
    T = w[(n - 1) + i[:, None] - i[None, :]]
    assert int(P.toeplitz_displacement_rank(T.to(dtype))) <= 2
    x, y = torch.rand(n, generator=g, dtype=torch.float64) + 0.5, torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    C = (1.0 / (x[:, None] + y[None, :])).to(dtype)
    assert int(P.cauchy_displacement_rank(C, x.to(dtype), y.to(dtype), sign=+1.0)) == 1
    # negative controls: the half tolerances stay far below a random matrix's singular values
    for n in (8, 16, 40):
        D = torch.randn(n, n, generator=torch.Generator().manual_seed(2)).to(dtype)
        assert int(P.numerical_rank(D)) >= n - 2
        assert int(P.toeplitz_displacement_rank(D)) > 2
        assert int(P.semiseparable_order(D)[0]) > 2
        assert min(int(v) for v in P.quasiseparable_order(D)) > 2
