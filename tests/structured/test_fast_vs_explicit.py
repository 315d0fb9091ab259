"""Fast product == explicit product for the exact structured classes, in float64, float32, bf16,
with broadcast batch dims, odd lengths and L = 1, and gradients (gradcheck) through both paths."""
from __future__ import annotations

import inspect

import pytest
import torch

import structured

# The exact classes of this module's scope (cauchy/vandermonde are approximate and tested beside
# their own modules). Parameter names let the gradient tests rebuild an instance from leaf tensors.
PARAMS = {
    "dense": ("m",),
    "low_rank": ("q", "k"),
    "toeplitz": ("w",),
    "dft": (),
    "semiseparable": ("b", "c", "log_a"),
    "quasiseparable": ("b", "c", "log_a", "delta", "b_bwd", "c_bwd", "log_a_bwd"),
}
CLASSES = sorted(PARAMS)
LENGTHS = (1, 2, 7, 33, 130)


def _randn(shape, gen, dtype=torch.float64):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("length", LENGTHS)
def test_fast_equals_explicit_float64(name, length, gen, rel_err):
    M = structured.get(name).random(length, batch_shape=(2, 3), dtype=torch.float64, generator=gen)
    x = _randn((2, 3, length, 5), gen)
    fast, ref = M.matmul(x), M.matmul(x, method="explicit")
    assert fast.shape == ref.shape == (2, 3, length, 5)
    assert fast.dtype == torch.float64
    assert rel_err(fast, ref) <= 1e-12


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("length", (1, 33, 257))
def test_fast_equals_explicit_float32(name, length, gen, rel_err):
    M64 = structured.get(name).random(length, batch_shape=(2,), dtype=torch.float64, generator=gen)
    M32 = structured.get(name).random(length, batch_shape=(2,), dtype=torch.float32,
                                      generator=gen.manual_seed(gen.initial_seed()))
    x = _randn((2, length, 4), gen)
    fast = M32.matmul(x.float())
    assert fast.dtype == torch.float32
    # Same seed -> same matrix; the float64 explicit product is the reference.
    assert rel_err(fast, M64.matmul(x, method="explicit")) <= 2e-5
    assert rel_err(fast, M32.matmul(x.float(), method="explicit")) <= 2e-5


@pytest.mark.parametrize("name", CLASSES)
def test_broadcast_batch_dims(name, gen, rel_err):
    """A (3, 1)-batched matrix times x of batch (4,) gives batch (3, 4); x without batch dims works."""
    M = structured.get(name).random(9, batch_shape=(3, 1), dtype=torch.float64, generator=gen)
    x = _randn((4, 9, 2), gen)
    y = M.matmul(x)
    assert y.shape == (3, 4, 9, 2)
    D = M.to_dense()
    assert rel_err(y, D @ x) <= 1e-12
    y2 = M.matmul(x[0])
    assert y2.shape == (3, 1, 9, 2)
    assert rel_err(y2, D @ x[0]) <= 1e-12


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("length", (1, 5))
def test_gradcheck_fast_and_explicit(name, length, gen):
    cls = structured.get(name)
    order = 2 if cls.has_order else None  # small sizes keep the numerical Jacobians cheap
    M = cls.random(length, order=order, dtype=torch.float64, generator=gen)
    names = PARAMS[name]
    leaves = [getattr(M, n).detach().clone().requires_grad_() for n in names]
    x = _randn((length, 2), gen).requires_grad_()
    # gradcheck perturbs log-decays by 1e-6: skip the sign check so values at 0 do not trip it.
    extra = {"validate": False} if "validate" in inspect.signature(cls.__init__).parameters else {}

    def product(method):
        def f(x, *params):
            inst = cls(**dict(zip(names, params)), **extra) if names else M
            return inst.matmul(x, method=method)
        return f

    for method in ("fast", "explicit"):
        assert torch.autograd.gradcheck(product(method), (x, *leaves), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("name", CLASSES)
def test_bf16_accumulates_in_float32(name, gen, rel_err):
    """bf16 parameters and inputs: result is bf16 but computed in float32 (error ~ one bf16 rounding
    of the output, independent of L), compared with the float64 product of the same bf16 values."""
    L = 513
    M = structured.get(name).random(L, batch_shape=(2,), dtype=torch.bfloat16, generator=gen)
    x = _randn((2, L, 4), gen, torch.bfloat16)
    y = M.matmul(x)
    assert y.dtype == torch.bfloat16
    ref = M.to_dense().to(torch.float64) @ x.to(torch.float64)
    # bf16 unit roundoff is 2^-8 = 3.9e-3: one rounding of the output is within it; a sum accumulated
    # in bf16 over L = 513 terms would typically be several times worse.
    assert rel_err(y, ref) <= 4e-3
    # to_dense of half-precision parameters is float32 (accumulation dtype).
    assert M.to_dense().dtype == torch.float32
    # Mixed precision: float32 matrix times bf16 input -> float32 result, float32 accuracy.
    M32 = structured.get(name).random(L, batch_shape=(2,), dtype=torch.float32, generator=gen)
    y32 = M32.matmul(x)
    assert y32.dtype == torch.float32
    assert rel_err(y32, M32.to_dense().double() @ x.double()) <= 2e-5


@pytest.mark.parametrize("name", CLASSES)
def test_blocked_fast_paths_match_unblocked(name, gen, rel_err, monkeypatch):
    """Large products run block by block (cache-sized temporaries); tiny blocks give the same result."""
    import structured.base
    M = structured.get(name).random(203, batch_shape=(2, 3), dtype=torch.float64, generator=gen)
    x = _randn((2, 3, 203, 4), gen)
    ref = M.matmul(x, method="explicit")
    one_block = M.matmul(x)
    monkeypatch.setattr(structured.base, "BLOCK_ELEMENTS", 64)
    assert len(structured.base.block_slices(203, 16, multiple=8)) > 10
    many_blocks = M.matmul(x)
    assert rel_err(many_blocks, ref) <= 1e-12
    assert rel_err(many_blocks, one_block) <= 1e-13


def test_block_slices():
    from structured.base import block_slices
    s = block_slices(100, 10, multiple=4, budget=120)      # 12 items -> 12 (multiple of 4)
    assert [(b.start, b.stop) for b in s] == [(0, 12), (12, 24), (24, 36), (36, 48), (48, 60), (60, 72),
                                             (72, 84), (84, 96), (96, 100)]
    assert [(b.start, b.stop) for b in block_slices(5, 10 ** 9, multiple=2, budget=1)] == [(0, 2), (2, 4), (4, 5)]


def test_tiled_scaffold_with_a_custom_spec(gen, rel_err):
    """structured.tiled serves any entry formula: m_ij = sum_d u_id v_jd exp(-(i - j)^2 w_d) (three parameters,
    w of shape (*b, 1, D)), against the dense product, with gradients (gradcheck)."""
    from structured.tiled import tiled_matmul

    class Spec:
        @staticmethod
        def tile(rows, u, v, w):
            idx = torch.arange(u.shape[-2], dtype=u.dtype)
            gap2 = (idx[rows, None] - idx[None, :]) ** 2                             # (T, L)
            return u[..., rows, None, :] * v[..., None, :, :] * torch.exp(-gap2[..., None] * w[..., None, :, :])

        @staticmethod
        def matrix(terms):
            return terms.sum(-1)

        @staticmethod
        def add_param_grads(terms, G, rows, grads, u, v, w):
            gu, gv, gw = grads
            idx = torch.arange(u.shape[-2], dtype=u.dtype)
            gap2 = (idx[rows, None] - idx[None, :]) ** 2
            GT = G[..., None] * terms                                                  # (*b, T, L, D)
            if gu is not None:
                gu[..., rows, :] += GT.sum(-2) / u[..., rows, :]
            if gv is not None:
                gv += GT.sum(-3) / v
            if gw is not None:
                gw -= (GT * gap2[..., None]).sum((-3, -2))[..., None, :]                # w is (*b, 1, D)

    L, D = 7, 2
    u = torch.rand(2, L, D, generator=gen, dtype=torch.float64) + 0.5
    v = torch.rand(2, L, D, generator=gen, dtype=torch.float64) + 0.5
    w = torch.rand(2, 1, D, generator=gen, dtype=torch.float64)
    x = _randn((2, L, 3), gen)
    i = torch.arange(L, dtype=torch.float64)
    decay = torch.exp(-((i[:, None] - i) ** 2)[..., None] * w[..., None, :, :])                 # (2, L, L, D)
    dense = (u[..., :, None, :] * v[..., None, :, :] * decay).sum(-1)
    assert rel_err(tiled_matmul(Spec, x, u, v, w, inner=D, tile=3), dense @ x) <= 1e-14
    leaves = (x.requires_grad_(), u.requires_grad_(), v.requires_grad_(), w.requires_grad_())
    assert torch.autograd.gradcheck(lambda *a: tiled_matmul(Spec, *a, inner=D, tile=2), leaves)
