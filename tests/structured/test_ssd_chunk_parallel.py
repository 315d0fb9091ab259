"""The chunk-parallel SSD product (the GPU torch path) against the explicit matrices, values and gradients."""
from __future__ import annotations

import pytest
import torch

import structured.quasiseparable as qs
from structured.quasiseparable import Quasiseparable
from structured.semiseparable import semiseparable_dense, ssd_chunk_parallel, ssd_chunked, ssd_product


def _inputs(B, H, L, N, P, dtype, gen, shared_c=True, decay=0.7):
    x = torch.randn(B, H, L, P, generator=gen, dtype=torch.float64).to(dtype)
    b = torch.randn(B, H, L, N, generator=gen, dtype=torch.float64).to(dtype)
    c = torch.randn(B, 1 if shared_c else H, L, N, generator=gen, dtype=torch.float64).to(dtype)
    log_a = (-decay * torch.rand(B, H, L, generator=gen, dtype=torch.float64))
    return x, b, c, log_a


@pytest.mark.parametrize("L,Q", [(37, 8), (64, 16), (5, 64), (96, 32), (1, 4)])
def test_float64_values_and_gradients_match_explicit(L, Q, gen):
    x, b, c, log_a = (t.requires_grad_() for t in _inputs(2, 3, L, 5, 4, torch.float64, gen))
    y = ssd_chunk_parallel(x, b, c, log_a, Q)
    ref = semiseparable_dense(b, c, log_a) @ x
    assert y.shape == ref.shape and y.dtype == torch.float64
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(y, (x, b, c, log_a), g)
    want = torch.autograd.grad(ref, (x, b, c, log_a), g)
    for name, a, w in zip("x b c log_a".split(), got, want):
        torch.testing.assert_close(a, w, rtol=1e-11, atol=1e-11, msg=f"d{name}")


def test_float32_close_to_float64_reference(gen, rel_err):
    x, b, c, log_a = _inputs(2, 2, 200, 8, 6, torch.float64, gen, shared_c=False)
    ref = semiseparable_dense(b, c, log_a) @ x
    y = ssd_chunk_parallel(x.float(), b.float(), c.float(), log_a.float(), 32)
    assert y.dtype == torch.float32
    assert rel_err(y, ref) < 1e-5


def test_bfloat16_operands_float32_decays(gen, rel_err):
    """Half operands stay half in the products; the result is in the promoted dtype (float32 here)."""
    x, b, c, log_a = _inputs(1, 2, 130, 8, 16, torch.float64, gen)
    ref = semiseparable_dense(b, c, log_a) @ x
    y = ssd_chunk_parallel(x.bfloat16(), b.bfloat16(), c.bfloat16(), log_a.float(), 32)
    assert y.dtype == torch.float32
    assert rel_err(y, ref) < 3e-2


def test_strong_decay_is_finite_and_accurate(gen, rel_err):
    """Sums of log-decays far below -88 (float32 exp underflow) across many chunks: no inf, no NaN."""
    x, b, c, log_a = _inputs(1, 1, 256, 4, 3, torch.float64, gen, decay=30.0)
    ref = semiseparable_dense(b, c, log_a) @ x
    y = ssd_chunk_parallel(x.float(), b.float(), c.float(), log_a.float(), 16)
    assert torch.isfinite(y).all()
    assert rel_err(y, ref) < 1e-5


def test_same_result_as_the_blocked_cpu_algorithm(gen):
    x, b, c, log_a = _inputs(2, 2, 77, 6, 5, torch.float64, gen)
    torch.testing.assert_close(ssd_chunk_parallel(x, b, c, log_a, 16), ssd_chunked(x, b, c, log_a, 16),
                               rtol=1e-12, atol=1e-12)
    # ssd_product picks the blocked algorithm on the CPU
    torch.testing.assert_close(ssd_product(x, b, c, log_a, 16), ssd_chunked(x, b, c, log_a, 16), rtol=0, atol=0)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_chunk_size_must_be_a_positive_int(bad, gen):
    x, b, c, log_a = _inputs(1, 1, 8, 2, 2, torch.float64, gen)
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_chunk_parallel(x, b, c, log_a, bad)


def _qs_inputs(L, N, P, dtype, gen, heads_share_bc=False, decay=0.7):
    H = 3
    x = torch.randn(2, H, L, P, generator=gen, dtype=torch.float64)
    g = [torch.randn(2, 1 if heads_share_bc else H, L, N, generator=gen, dtype=torch.float64) for _ in range(4)]
    la, lab = (-decay * torch.rand(2, H, L, generator=gen, dtype=torch.float64) for _ in range(2))
    delta = torch.randn(2, H, L, generator=gen, dtype=torch.float64)
    return [t.to(dtype) for t in (x, *g)] + [la, lab, delta]


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("L,Q", [(29, 8), (32, 8), (5, 16), (40, 40), (9, 1)])
def test_bidirectional_parallel_product_matches_explicit(shift, L, Q, gen):
    """Both directions in one chunk-parallel pass (the GPU torch path of Hydra's product): values and gradients
    equal the materialized matrix in float64, ragged last chunk and one-position chunks included."""
    x, b, c, bb, cb, la, lab, delta = leaves = [t.requires_grad_() for t in _qs_inputs(L, 4, 5, torch.float64, gen)]
    M = Quasiseparable(b, c, la, delta, b_bwd=bb, c_bwd=cb, log_a_bwd=lab, shift=shift, validate=False)
    y = qs.qs_chunk_parallel(x, b, c, la, delta, bb, cb, lab, shift, Q)
    ref = M.matmul(x, method="explicit")
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    for name, a, w in zip("x b c b_bwd c_bwd log_a log_a_bwd delta".split(), torch.autograd.grad(y, leaves, g),
                          torch.autograd.grad(ref, leaves, g)):
        torch.testing.assert_close(a, w, rtol=1e-11, atol=1e-11, msg=f"d{name}")


def test_bidirectional_parallel_product_with_generators_shared_by_heads(gen):
    """B, C of shape (B, 1, L, N) broadcast over the heads, shared by both directions (the Table 2 mixer)."""
    x, b, c, _, _, la, lab, delta = _qs_inputs(33, 6, 4, torch.float64, gen, heads_share_bc=True)
    M = Quasiseparable(b, c, la, delta, log_a_bwd=lab, validate=False)
    torch.testing.assert_close(qs.qs_chunk_parallel(x, b, c, la, delta, b, c, lab, True, 8),
                               M.matmul(x, method="explicit"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_bidirectional_parallel_product_in_lower_precision(dtype, tol, gen, rel_err):
    """float32 everywhere, or bf16 operands with float32 decays and diagonal (as under autocast): close to the
    float64 matrix; the result is in the promoted dtype."""
    x, b, c, bb, cb, la, lab, delta = _qs_inputs(150, 8, 16, torch.float64, gen)
    ref = Quasiseparable(b, c, la, delta, b_bwd=bb, c_bwd=cb, log_a_bwd=lab).matmul(x, method="explicit")
    y = qs.qs_chunk_parallel(*(t.to(dtype) for t in (x, b, c)), la.float(), delta.float(),
                             *(t.to(dtype) for t in (bb, cb)), lab.float(), True, 32)
    assert y.dtype == torch.float32
    assert rel_err(y, ref) < tol


def test_bidirectional_parallel_product_under_strong_decay(gen, rel_err):
    """Log-decay sums far below -88 (float32 exp underflow) in both directions: finite and accurate."""
    x, b, c, bb, cb, la, lab, delta = _qs_inputs(256, 4, 3, torch.float64, gen, decay=30.0)
    ref = Quasiseparable(b, c, la, delta, b_bwd=bb, c_bwd=cb, log_a_bwd=lab).matmul(x, method="explicit")
    y = qs.qs_chunk_parallel(*(t.float() for t in (x, b, c, la, delta, bb, cb, lab)), True, 16)
    assert torch.isfinite(y).all()
    assert rel_err(y, ref) < 1e-5


@pytest.mark.parametrize("bad", [0, -3, 8.0, False])
def test_bidirectional_parallel_product_chunk_size_must_be_a_positive_int(bad, gen):
    x, b, c, bb, cb, la, lab, delta = _qs_inputs(8, 2, 2, torch.float64, gen)
    with pytest.raises(ValueError, match="chunk_size"):
        qs.qs_chunk_parallel(x, b, c, la, delta, bb, cb, lab, True, bad)


@pytest.mark.parametrize("Q", [8, 32])
@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("one_gram", [True, False])
def test_bidirectional_parallel_product_with_column_scales(shift, one_gram, Q, gen):
    """Generators given as B (shared by the heads) times a per-head step (Mamba's b = B dt): values and gradients,
    the scales' included, equal the explicit matrix of the scaled generators in float64; with B, C shared by the
    directions (the same objects) the product forms one Gram for both; chunks of 8 pass states, one chunk of 32
    holds the whole sequence."""
    L, N = 27, 4
    x, b, c, bb, cb, la, lab, delta = _qs_inputs(L, N, 5, torch.float64, gen, heads_share_bc=True)
    if one_gram:
        bb, cb = b, c
    s_f, s_b = (torch.rand(2, 3, L, generator=gen, dtype=torch.float64) + 0.1 for _ in range(2))
    leaves = [t.requires_grad_() for t in dict.fromkeys((x, b, c, bb, cb, la, lab, delta, s_f, s_b))]
    y = qs.qs_chunk_parallel(x, b, c, la, delta, bb, cb, lab, shift, Q, s_f, s_b)
    ref = Quasiseparable(b * s_f[..., None], c, la, delta, b_bwd=bb * s_b[..., None], c_bwd=cb, log_a_bwd=lab,
                         shift=shift, validate=False).matmul(x, method="explicit")
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    for a, w in zip(torch.autograd.grad(y, leaves, g), torch.autograd.grad(ref, leaves, g)):
        torch.testing.assert_close(a, w, rtol=1e-11, atol=1e-11)


def test_column_scales_of_the_matrix(gen, rel_err):
    """Quasiseparable(b, ..., b_scale=s) is the matrix of the generators b * s, explicitly and by the CPU's fast
    product; b_bwd_scale follows b_scale when b_bwd follows b; a scale of the wrong length is refused."""
    L = 19
    x, b, c, bb, cb, la, lab, delta = _qs_inputs(L, 3, 4, torch.float64, gen, heads_share_bc=True)
    s_f, s_b = (torch.rand(2, 3, L, generator=gen, dtype=torch.float64) for _ in range(2))
    M = Quasiseparable(b, c, la, delta, b_bwd=bb, c_bwd=cb, log_a_bwd=lab, b_scale=s_f, b_bwd_scale=s_b)
    want = Quasiseparable(b * s_f[..., None], c, la, delta, b_bwd=bb * s_b[..., None], c_bwd=cb, log_a_bwd=lab)
    torch.testing.assert_close(M.to_dense(), want.to_dense(), rtol=0, atol=0)
    assert rel_err(M.matmul(x), want.matmul(x, method="explicit")) < 1e-13
    shared = Quasiseparable(b, c, la, delta, b_scale=s_f)
    torch.testing.assert_close(shared.to_dense(), Quasiseparable(b * s_f[..., None], c, la, delta).to_dense(),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"b_bwd_scale must have shape \(\*batch, L\) with L=19"):
        Quasiseparable(b, c, la, delta, b_bwd_scale=s_b[..., :-1])


def test_one_chunk_forms_no_chunk_states(gen, monkeypatch):
    """With chunk_size >= L the product is the quadratic form: no chunk states are formed or passed (and chunks
    shorter than L do pass them, so the spy can fire)."""
    x, b, c, bb, cb, la, lab, delta = _qs_inputs(24, 3, 4, torch.float64, gen)
    calls = []
    real = qs.passed_states
    monkeypatch.setattr(qs, "passed_states", lambda *a: calls.append(1) or real(*a))
    want = Quasiseparable(b, c, la, delta, b_bwd=bb, c_bwd=cb, log_a_bwd=lab).matmul(x, method="explicit")
    for Q in (24, 64):
        torch.testing.assert_close(qs.qs_chunk_parallel(x, b, c, la, delta, bb, cb, lab, True, Q), want,
                                   rtol=1e-12, atol=1e-12)
    assert calls == []
    qs.qs_chunk_parallel(x, b, c, la, delta, bb, cb, lab, True, 8)
    assert calls
