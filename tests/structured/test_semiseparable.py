"""Semiseparable (SSD): entry formula, scan == chunked == explicit, ragged chunks, strong decay, errors."""
from __future__ import annotations

import math

import pytest
import torch

from structured.semiseparable import Semiseparable, segsum, ssd_chunked, ssd_scan


def _gens(batch, L, N, gen, dtype=torch.float64, decay=0.5):
    b = torch.randn(*batch, L, N, generator=gen, dtype=torch.float64).to(dtype)
    c = torch.randn(*batch, L, N, generator=gen, dtype=torch.float64).to(dtype)
    log_a = (-decay * torch.rand(*batch, L, generator=gen, dtype=torch.float64)).to(dtype)
    return b, c, log_a


def test_entries_follow_the_contract_formula(gen):
    L, N = 6, 3
    b, c, log_a = _gens((), L, N, gen)
    D = Semiseparable(b, c, log_a).to_dense()
    for i in range(L):
        for j in range(L):
            if i >= j:
                want = float(c[i] @ b[j]) * math.exp(sum(float(log_a[t]) for t in range(j + 1, i + 1)))
            else:
                want = 0.0
            assert abs(float(D[i, j]) - want) <= 1e-13 * (1 + abs(want))


def test_segsum_is_direct_sum():
    log_a = torch.tensor([-1.0, -2.0, -3.0, -4.0], dtype=torch.float64)
    S = segsum(log_a)
    # S[i, j] = sum_{t=j+1..i} log_a_t for i >= j, 0 above.
    assert S[3, 0] == -9.0 and S[3, 2] == -4.0 and S[2, 2] == 0.0 and S[0, 3] == 0.0


@pytest.mark.parametrize("L", [1, 5, 64, 67, 200])
@pytest.mark.parametrize("chunk", [1, 7, 16, 64])
def test_scan_equals_chunked_equals_explicit(L, chunk, gen, rel_err):
    b, c, log_a = _gens((2, 3), L, 4, gen)
    x = torch.randn(2, 3, L, 5, generator=gen, dtype=torch.float64)
    ref = Semiseparable(b, c, log_a).matmul(x, method="explicit")
    assert rel_err(ssd_scan(x, b, c, log_a), ref) <= 1e-12
    assert rel_err(ssd_chunked(x, b, c, log_a, chunk_size=chunk), ref) <= 1e-12


def test_float32_scan_and_chunked(gen, rel_err):
    b, c, log_a = _gens((2,), 301, 8, gen)
    x = torch.randn(2, 301, 3, generator=gen, dtype=torch.float64)
    ref = Semiseparable(b, c, log_a).matmul(x, method="explicit")
    f32 = [t.float() for t in (x, b, c, log_a)]
    assert ssd_scan(*f32).dtype == torch.float32
    assert rel_err(ssd_scan(*f32), ref) <= 1e-5
    assert rel_err(ssd_chunked(*f32, chunk_size=32), ref) <= 1e-5


def test_parameters_broadcast_across_heads(gen, rel_err):
    """b, c shared by heads (B, 1, L, N) with per-head decays (B, H, L)."""
    B, H, L, N = 2, 3, 41, 4
    b, c, _ = _gens((B, 1), L, N, gen)
    log_a = -torch.rand(B, H, L, generator=gen, dtype=torch.float64)
    M = Semiseparable(b, c, log_a)
    assert M.batch_shape == (B, H) and M.order == N
    x = torch.randn(B, H, L, 2, generator=gen, dtype=torch.float64)
    ref = torch.stack([Semiseparable(b[:, 0], c[:, 0], log_a[:, h]).to_dense() for h in range(H)], 1) @ x
    assert rel_err(M.matmul(x), ref) <= 1e-12
    assert rel_err(ssd_scan(x, b, c, log_a), ref) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_strong_decay_stays_finite_and_accurate(dtype, gen, rel_err):
    """log_a in [-20, -5]: the total log-decay is far below -1000 (exp(-sum) would overflow any dtype)."""
    L = 300
    b, c, _ = _gens((2,), L, 4, gen)
    log_a = -5 - 15 * torch.rand(2, L, generator=gen, dtype=torch.float64)
    assert float(log_a.sum(-1).max()) < -1000
    x = torch.randn(2, L, 3, generator=gen, dtype=torch.float64)
    ref = Semiseparable(b, c, log_a).matmul(x, method="explicit")
    assert torch.isfinite(ref).all()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    M = Semiseparable(b.to(dtype), c.to(dtype), log_a.to(dtype))
    for y in (M.matmul(x.to(dtype)), ssd_scan(*(t.to(dtype) for t in (x, b, c, log_a))), M.to_dense() @ x.to(dtype)):
        assert torch.isfinite(y).all()
        assert rel_err(y, ref) <= tol
    # Gradients stay finite too.
    leaves = [t.to(dtype).requires_grad_() for t in (x, b, c, log_a)]
    ssd_chunked(*leaves, chunk_size=64).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)


def test_gradcheck_scan_and_chunked(gen):
    b, c, log_a = _gens((), 5, 2, gen)
    x = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    args = tuple(t.clone().requires_grad_() for t in (x, b, c, log_a))
    assert torch.autograd.gradcheck(ssd_scan, args)
    assert torch.autograd.gradcheck(lambda *a: ssd_chunked(*a, chunk_size=2), args)


def test_positive_log_a_raises_naming_it(gen):
    b, c, log_a = _gens((), 5, 2, gen)
    with pytest.raises(ValueError, match="log_a must be <= 0"):
        Semiseparable(b, c, log_a.abs() + 0.1)
    with pytest.raises(ValueError, match="log_a"):
        Semiseparable(b, c, torch.full_like(log_a, float("nan")))
    Semiseparable(b, c, log_a.abs() + 0.1, validate=False)  # explicitly skipped


def test_shape_errors_name_the_argument(gen):
    b, c, log_a = _gens((), 5, 2, gen)
    x = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="c"):
        Semiseparable(b, c[:, :1], log_a)
    with pytest.raises(ValueError, match="log_a"):
        Semiseparable(b, c, log_a[:4])
    with pytest.raises(ValueError, match="log_a"):
        Semiseparable(b, c, log_a[None].expand(2, 5)[..., None])
    with pytest.raises(ValueError, match="b"):
        Semiseparable(b[:0], c[:0], log_a[:0])
    with pytest.raises(ValueError, match="batch dimensions"):
        Semiseparable(b.expand(2, 5, 2), c.expand(3, 5, 2), log_a)
    with pytest.raises(ValueError, match="b has length 5"):
        ssd_chunked(x[:4], b, c, log_a)
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_chunked(x, b, c, log_a, chunk_size=0)
    with pytest.raises(ValueError, match="x"):
        ssd_scan(x[0], b, c, log_a)
