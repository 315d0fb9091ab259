"""Quasiseparable (Hydra): entry formulas, shift / no-shift, shared generators, strong decay, errors."""
from __future__ import annotations

import math

import pytest
import torch

from structured.quasiseparable import Quasiseparable
from structured.semiseparable import Semiseparable


def _gens(batch, L, N, gen):
    b = torch.randn(*batch, L, N, generator=gen, dtype=torch.float64)
    c = torch.randn(*batch, L, N, generator=gen, dtype=torch.float64)
    log_a = -0.7 * torch.rand(*batch, L, generator=gen, dtype=torch.float64)
    return b, c, log_a


def _esum(log_a, lo, hi):
    """exp(sum_{t=lo..hi} log_a_t) (empty sum -> 1)."""
    return math.exp(sum(float(log_a[t]) for t in range(lo, hi + 1)))


@pytest.mark.parametrize("shift", [True, False])
def test_entries_follow_the_contract_formulas(shift, gen):
    L, N = 7, 3
    b, c, la = _gens((), L, N, gen)
    bb, cb, lab = _gens((), L, N, gen)
    delta = torch.randn(L, generator=gen, dtype=torch.float64)
    D = Quasiseparable(b, c, la, delta, bb, cb, lab, shift=shift).to_dense()
    for i in range(L):
        for j in range(L):
            if shift:
                if i > j:
                    want = float(c[i - 1] @ b[j]) * _esum(la, j + 1, i - 1)
                elif i < j:
                    want = float(cb[i + 1] @ bb[j]) * _esum(lab, i + 1, j - 1)
                else:
                    want = float(delta[i])
            else:
                if i > j:
                    want = float(c[i] @ b[j]) * _esum(la, j + 1, i)
                elif i < j:
                    want = float(cb[i] @ bb[j]) * _esum(lab, i, j - 1)
                else:
                    want = float(c[i] @ b[i] + cb[i] @ bb[i] + delta[i])
            assert abs(float(D[i, j]) - want) <= 1e-13 * (1 + abs(want)), (i, j)


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("L", [1, 2, 9, 64, 131])
def test_fast_equals_explicit_both_shifts(shift, L, gen, rel_err):
    b, c, la = _gens((2,), L, 4, gen)
    bb, cb, lab = _gens((2,), L, 4, gen)
    delta = torch.randn(2, L, generator=gen, dtype=torch.float64)
    x = torch.randn(2, L, 3, generator=gen, dtype=torch.float64)
    for M in (Quasiseparable(b, c, la, delta, bb, cb, lab, shift=shift),
              Quasiseparable(b, c, la, delta, shift=shift)):          # shared generators
        assert rel_err(M.matmul(x), M.matmul(x, method="explicit")) <= 1e-12
        M32 = Quasiseparable(*(t.float() for t in (M.b, M.c, M.log_a, M.delta, M.b_bwd, M.c_bwd, M.log_a_bwd)),
                             shift=shift)
        assert rel_err(M32.matmul(x.float()), M.matmul(x, method="explicit")) <= 2e-5


def test_backward_generators_default_to_forward(gen):
    b, c, la = _gens((), 8, 2, gen)
    delta = torch.randn(8, generator=gen, dtype=torch.float64)
    shared = Quasiseparable(b, c, la, delta).to_dense()
    explicit = Quasiseparable(b, c, la, delta, b, c, la).to_dense()
    assert torch.equal(shared, explicit)
    # Only log_a_bwd given: b, c still shared.
    la2 = la * 2
    assert torch.equal(Quasiseparable(b, c, la, delta, log_a_bwd=la2).to_dense(),
                       Quasiseparable(b, c, la, delta, b, c, la2).to_dense())


def test_addition_bidirectional_is_ss_fwd_plus_flipped_ss_bwd_with_tied_diagonal(gen):
    """shift=False: M = SS_fwd + J SS_bwd(flipped gens) J + diag(delta); its diagonal is rebuilt from the
    generators, c_i.b_i + c'_i.b'_i + delta_i, and it is still quasiseparable of order N."""
    L, N = 24, 3
    b, c, la = _gens((), L, N, gen)
    bb, cb, lab = _gens((), L, N, gen)
    delta = torch.randn(L, generator=gen, dtype=torch.float64)
    M = Quasiseparable(b, c, la, delta, bb, cb, lab, shift=False)
    D = M.to_dense()
    fwd = Semiseparable(b, c, la).to_dense()
    bwd = Semiseparable(bb.flip(0), cb.flip(0), lab.flip(0)).to_dense().flip(0, 1)
    assert torch.allclose(D, fwd + bwd + torch.diag(delta), rtol=0, atol=1e-13)
    tied = (c * b).sum(-1) + (cb * bb).sum(-1) + delta
    assert torch.allclose(torch.diagonal(D), tied, rtol=0, atol=1e-13)
    report = M.check_structure()
    assert report.ok and report.measured <= N


def test_hydra_diagonal_is_free(gen):
    """Changing delta changes only the diagonal (shift=True): off-diagonal entries do not move."""
    L = 16
    b, c, la = _gens((2,), L, 3, gen)
    d1, d2 = torch.randn(2, 2, L, generator=gen, dtype=torch.float64)
    D1 = Quasiseparable(b, c, la, d1).to_dense()
    D2 = Quasiseparable(b, c, la, d2).to_dense()
    off = ~torch.eye(L, dtype=torch.bool)
    assert torch.equal(D1[..., off], D2[..., off])
    assert torch.equal(torch.diagonal(D2, dim1=-2, dim2=-1), d2)
    # With shift=True the diagonal does not depend on b, c at all.
    D3 = Quasiseparable(2 * b, c, la, d1).to_dense()
    assert torch.equal(torch.diagonal(D3, dim1=-2, dim2=-1), d1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_strong_decay_stays_finite_and_accurate(dtype, gen, rel_err):
    L = 300
    b, c, _ = _gens((2,), L, 4, gen)
    la = -5 - 15 * torch.rand(2, L, generator=gen, dtype=torch.float64)
    lab = -5 - 15 * torch.rand(2, L, generator=gen, dtype=torch.float64)
    assert float(torch.maximum(la.sum(-1), lab.sum(-1)).max()) < -1000
    delta = torch.randn(2, L, generator=gen, dtype=torch.float64)
    x = torch.randn(2, L, 3, generator=gen, dtype=torch.float64)
    ref = Quasiseparable(b, c, la, delta, log_a_bwd=lab).matmul(x, method="explicit")
    assert torch.isfinite(ref).all()
    M = Quasiseparable(*(t.to(dtype) for t in (b, c, la, delta)), log_a_bwd=lab.to(dtype))
    y = M.matmul(x.to(dtype))
    assert torch.isfinite(y).all()
    assert rel_err(y, ref) <= (1e-12 if dtype == torch.float64 else 1e-5)


def test_errors_name_the_argument(gen):
    b, c, la = _gens((), 6, 2, gen)
    delta = torch.randn(6, dtype=torch.float64)
    with pytest.raises(ValueError, match="delta"):
        Quasiseparable(b, c, la, delta[:5])
    with pytest.raises(ValueError, match="log_a must be <= 0"):
        Quasiseparable(b, c, -la + 0.5, delta)
    with pytest.raises(ValueError, match="log_a_bwd must be <= 0"):
        Quasiseparable(b, c, la, delta, log_a_bwd=-la + 0.5)
    with pytest.raises(ValueError, match="b_bwd"):
        Quasiseparable(b, c, la, delta, b_bwd=b[:, :1])
    with pytest.raises(ValueError, match="b_bwd"):
        Quasiseparable(b, c, la, delta, b_bwd=b[:5])
    with pytest.raises(ValueError, match="shift"):
        Quasiseparable(b, c, la, delta, shift="yes")
    with pytest.raises(ValueError, match="batch dimensions"):
        Quasiseparable(b.expand(2, 6, 2), c, la, delta.expand(3, 6))
    Quasiseparable(b, c, -la + 0.5, delta, validate=False)


def test_batch_dims_carried_by_any_parameter(gen, rel_err):
    """Unbatched generators with a per-(batch, head) diagonal and backward decays."""
    L = 11
    b, c, la = _gens((), L, 2, gen)
    delta = torch.randn(2, 3, L, generator=gen, dtype=torch.float64)
    lab = -torch.rand(3, L, generator=gen, dtype=torch.float64)
    M = Quasiseparable(b, c, la, delta, log_a_bwd=lab)
    assert M.batch_shape == (2, 3)
    D = M.to_dense()
    assert D.shape == (2, 3, L, L)
    x = torch.randn(L, 2, generator=gen, dtype=torch.float64)
    assert rel_err(M.matmul(x), D @ x) <= 1e-12
    assert torch.equal(D[1, 2], Quasiseparable(b, c, la, delta[1, 2], log_a_bwd=lab[2]).to_dense())


@pytest.mark.parametrize("shift", [True, False])
def test_gradcheck_fast_path_across_chunks(shift, gen, monkeypatch):
    """Gradients of the two-pass fast product with several chunks (chunk_size 2 at L = 5, ragged last chunk),
    for separate and for shared backward generators."""
    monkeypatch.setattr(Quasiseparable, "chunk_size", 2)
    L = 5
    b, c, la = _gens((), L, 2, gen)
    bb, cb, lab = _gens((), L, 2, gen)
    delta = torch.randn(L, generator=gen, dtype=torch.float64)
    x = torch.randn(L, 2, generator=gen, dtype=torch.float64)
    leaves = tuple(t.clone().requires_grad_() for t in (x, b, c, la, delta, bb, cb, lab))

    def separate(x, b, c, la, delta, bb, cb, lab):
        return Quasiseparable(b, c, la, delta, bb, cb, lab, shift=shift, validate=False).matmul(x)

    def shared(x, b, c, la, delta):
        return Quasiseparable(b, c, la, delta, shift=shift, validate=False).matmul(x)

    assert torch.autograd.gradcheck(separate, leaves)
    assert torch.autograd.gradcheck(shared, leaves[:5])
