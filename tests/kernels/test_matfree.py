"""Tests of the matrix-free Triton kernels ``kernels.cauchy_matmul`` and ``kernels.vandermonde_matmul``.

On a machine without CUDA the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set here
before Triton is imported); with CUDA they run compiled on the GPU. References are written directly
from the contract's formulas in float64 (dense L x L, small L), on the inputs rounded to the tested
dtype, so only the kernels' own arithmetic is measured.
"""
from __future__ import annotations

import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from kernels.cauchy import cauchy_matmul  # noqa: E402
from kernels.vandermonde import vandermonde_matmul  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# relative Frobenius error budgets (issue 5): fp32 with ieee dot <= 1e-5, bf16 <= 1e-2
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 5e-3}
LENGTHS = [1, 5, 19, 40]   # L = 1, odd, and lengths not divisible by the 16/32/64/128 tiles


def cauchy_reference(x, q, k, c):
    """float64: y_i = sum_j sum_d x_j / (q_id + k_jd + c)."""
    m = (1.0 / (q[..., :, None, :] + k[..., None, :, :] + c)).sum(-1)
    return m @ x


def vandermonde_reference(x, q, k, s):
    """float64: m_ij = sum_d cos(2 pi s q_id j) - cos(2 pi s k_jd i)."""
    L = x.shape[-2]
    idx = torch.arange(L, dtype=torch.float64, device=x.device)
    m = (torch.cos(2 * math.pi * s * q[..., :, None, :] * idx[None, :, None])
         - torch.cos(2 * math.pi * s * k[..., None, :, :] * idx[:, None, None])).sum(-1)
    return m @ x


def positive_nodes(shape, gen):
    # the paper's exp(q) + b parameterization with b = 0.5 (notes section 1.4)
    return torch.exp(0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)) + 0.5


CASES = {
    # name: (kernel, reference, node sampler, the extra scalar)
    "cauchy": (cauchy_matmul, cauchy_reference, positive_nodes, 0.25),
    "vandermonde": (vandermonde_matmul, vandermonde_reference,
                    lambda shape, gen: torch.randn(shape, generator=gen, dtype=torch.float64), 0.05),
}


def rel_err(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def draw(name, batch, L, P, D, seed):
    gen = torch.Generator().manual_seed(seed)
    _, _, nodes, _ = CASES[name]
    x = torch.randn((*batch, L, P), generator=gen, dtype=torch.float64)
    return x, nodes((*batch, L, D), gen), nodes((*batch, L, D), gen)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("L", LENGTHS)
def test_forward_matches_float64_reference(name, dtype, L):
    kernel, reference, _, extra = CASES[name]
    x, q, k = draw(name, (2,), L, 5, 3, seed=1000 * L + 10 * len(name) + list(RTOL).index(dtype))
    xd, qd, kd = (t.to(dtype) for t in (x, q, k))
    y = kernel(xd.to(DEVICE), qd.to(DEVICE), kd.to(DEVICE), extra)
    assert y.dtype == dtype and y.shape == x.shape
    ref = reference(*(t.double() for t in (xd, qd, kd)), extra)
    if L == 1 and name == "vandermonde":      # m_00 = sum_d cos(0) - cos(0) = 0 exactly
        assert y.abs().max().item() == 0.0
        return
    assert rel_err(y, ref) <= RTOL[dtype], (name, dtype, L, rel_err(y, ref))


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("L", [1, 18])
def test_gradcheck_float64(name, L):
    kernel, _, _, extra = CASES[name]
    x, q, k = draw(name, (1,), L, 2, 2, seed=7 + L)
    inputs = tuple(t.to(DEVICE).requires_grad_() for t in (x, q, k))
    assert torch.autograd.gradcheck(lambda a, b, c: kernel(a, b, c, extra), inputs, eps=1e-6, atol=1e-7,
                                    fast_mode=True)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_match_float64_reference(name, dtype):
    kernel, reference, _, extra = CASES[name]
    L = 37
    x, q, k = draw(name, (2,), L, 6, 4, seed=3)
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    xd, qd, kd, gd = (t.to(dtype) for t in (x, q, k, g))
    leaves = [t.double().requires_grad_() for t in (xd, qd, kd)]
    reference(*leaves, extra).backward(gd.double())
    mine = [t.to(DEVICE).requires_grad_() for t in (xd, qd, kd)]
    kernel(*mine, extra).backward(gd.to(DEVICE))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for which, a, b in zip("xqk", mine, leaves):
        assert a.grad.dtype == dtype
        assert rel_err(a.grad, b.grad) <= tol, (name, dtype, which, rel_err(a.grad, b.grad))


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("D", [1, 2, 5])
def test_number_of_terms(name, D):
    """Terms are evaluated in pairs plus one single term when d is odd: d = 1, even and odd."""
    kernel, reference, _, extra = CASES[name]
    x, q, k = draw(name, (1,), 33, 3, D, seed=D)
    y = kernel(*(t.to(DEVICE).float() for t in (x, q, k)), extra)
    assert rel_err(y, reference(x.float().double(), q.float().double(), k.float().double(), extra)) <= 1e-5


def test_cauchy_nodes_outside_the_pair_domain():
    """float32 denominators outside [2^-62, 2^62] cannot use the one-reciprocal-per-pair form (the
    product a b of two denominators under/overflows): the kernels must detect it and evaluate the terms
    one by one, still to float32 accuracy."""
    x, q, k = draw("cauchy", (2,), 29, 4, 4, seed=9)
    q[0, 3, 0:2] = 1e-25      # with k[0, 5, 0:2] below: a = b = 2e-25, a b = 4e-50 underflows float32
    k[0, 5, 0:2] = 1e-25
    xf, qf, kf = (t.float() for t in (x, q, k))
    y = cauchy_matmul(xf.to(DEVICE), qf.to(DEVICE), kf.to(DEVICE), 0.0)
    assert torch.isfinite(y).all()
    assert rel_err(y, cauchy_reference(xf.double(), qf.double(), kf.double(), 0.0)) <= 1e-5


@pytest.mark.parametrize("name", sorted(CASES))
def test_broadcast_nodes_and_differentiable_scalar(name):
    """q shared by all heads (batch dim 1, expanded), k per head, the scalar a tensor with a gradient."""
    kernel, reference, nodes, extra = CASES[name]
    gen = torch.Generator().manual_seed(11)
    B, H, L, P, D = 2, 3, 21, 4, 2
    x = torch.randn((B, H, L, P), generator=gen, dtype=torch.float64)
    q = nodes((B, 1, L, D), gen)
    k = nodes((1, H, L, D), gen)
    scalar = torch.tensor(extra, dtype=torch.float64)
    ref_leaves = [t.clone().requires_grad_() for t in (x, q, k, scalar)]
    ref = reference(*ref_leaves)
    ref.sum().backward()
    leaves = [t.to(DEVICE).requires_grad_() for t in (x, q, k, scalar)]
    y = kernel(leaves[0], leaves[1].expand(B, H, L, D), leaves[2], leaves[3])
    assert y.shape == (B, H, L, P)
    assert rel_err(y, ref) <= 1e-12
    y.sum().backward()
    for a, b in zip(leaves, ref_leaves):
        assert a.grad.shape == b.grad.shape
        assert rel_err(a.grad, b.grad) <= 1e-10


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_structured_class(name):
    """The structured class's own materialization agrees with the kernel it dispatches to."""
    structured = pytest.importorskip("structured")
    cls = structured.get(name)
    gen = torch.Generator().manual_seed(5)
    M = cls.random(23, batch_shape=(2,), order=3, dtype=torch.float64, generator=gen)
    x = torch.randn((2, 23, 3), generator=gen, dtype=torch.float64)
    extra = M.c if name == "cauchy" else M.scale
    y = CASES[name][0](x.to(DEVICE), M.q.to(DEVICE), M.k.to(DEVICE), extra)
    assert rel_err(y, M.to_dense() @ x) <= 1e-12


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_arguments_raise(name):
    kernel = CASES[name][0]
    x, q, k = (t.to(DEVICE) for t in draw(name, (2,), 6, 3, 2, seed=0))
    with pytest.raises(ValueError, match="length of x"):
        kernel(x, q[:, :5], k[:, :5])
    with pytest.raises(ValueError, match="number of terms"):
        kernel(x, q, k[..., :1])
    with pytest.raises(ValueError, match="do not broadcast"):
        kernel(x, torch.rand(3, 6, 2, dtype=q.dtype, device=DEVICE), k)
    with pytest.raises(ValueError, match="x must be float64"):
        kernel(x.long(), q, k)
    with pytest.raises(ValueError, match="precision must be one of"):
        kernel(x, q, k, precision="bf16x3")


@pytest.mark.skipif(DEVICE != "cuda", reason="peak device memory is a property of the compiled GPU path")
@pytest.mark.parametrize("name", sorted(CASES))
def test_memory_is_linear_in_length(name):
    """Peak extra memory of a forward+backward is a small multiple of the inputs, far below one L x L."""
    kernel, _, _, extra = CASES[name]
    L, P, D = 8192, 64, 16
    x = torch.randn(1, L, P, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    q = (torch.rand(1, L, D, device="cuda") + 0.5).requires_grad_()
    k = (torch.rand(1, L, D, device="cuda") + 0.5).requires_grad_()
    kernel(x, q, k, extra).sum().backward()     # compile / autotune first (the autotuner's own buffers)
    x.grad = q.grad = k.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    kernel(x, q, k, extra).sum().backward()
    torch.cuda.synchronize()
    extra_bytes = torch.cuda.max_memory_allocated() - base
    input_bytes = sum(t.numel() * t.element_size() for t in (x, q, k))
    assert extra_bytes < 8 * input_bytes, (extra_bytes, input_bytes)
    assert extra_bytes < 0.05 * L * L * 2          # one bf16 L x L matrix is 134 MB
