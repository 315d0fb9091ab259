"""The kernels' ``compiled`` mode: the SSD products run their chunk-parallel torch algorithm through torch.compile on
its own (regional compilation at the product, from eager code), equal to the explicit matrix in float64 with
gradients; no compile in the other modes or inside an outer compile."""
import pytest
import torch

import structured.base as base
import structured.quasiseparable as qs
import structured.semiseparable as ss
from structured.quasiseparable import Quasiseparable
from structured.semiseparable import Semiseparable


@pytest.fixture
def compile_calls(monkeypatch):
    """Functions handed to torch.compile, which builds them with the fast aot_eager backend (traced, not
    generated): the routing is what is tested here."""
    calls = []
    real = torch.compile

    def spy(fn, **kwargs):
        calls.append(fn)
        return real(fn, backend="aot_eager")
    monkeypatch.setattr(torch, "compile", spy)
    base._compiled.cache_clear()
    yield calls
    base._compiled.cache_clear()


def _check_against_explicit(m, x):
    y = m.matmul(x)
    ref = m.matmul(x, method="explicit")
    g, = torch.autograd.grad(y.square().sum(), x)
    g_ref, = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)


def _quasiseparable(L=37, N=6, H=3):
    b, c = torch.randn(2, 1, L, N, dtype=torch.float64), torch.randn(2, 1, L, N, dtype=torch.float64)
    return Quasiseparable(b, c, -torch.rand(2, H, L, dtype=torch.float64), torch.randn(2, H, L, dtype=torch.float64),
                          b_scale=torch.rand(2, H, L, dtype=torch.float64))


def test_compiled_mode_compiles_the_quasiseparable_product_once(kernels_mode, compile_calls):
    kernels_mode("compiled")
    m = _quasiseparable()
    m.chunk_size = 8
    for _ in range(2):
        _check_against_explicit(m, torch.randn(2, 3, 37, 4, dtype=torch.float64, requires_grad=True))
    assert compile_calls == [qs.qs_chunk_parallel]


def test_compiled_mode_compiles_the_semiseparable_product(kernels_mode, compile_calls):
    kernels_mode("compiled")
    L, N = 29, 5
    m = Semiseparable(torch.randn(2, L, N, dtype=torch.float64), torch.randn(2, L, N, dtype=torch.float64),
                      -torch.rand(2, L, dtype=torch.float64))
    m.chunk_size = 8
    _check_against_explicit(m, torch.randn(2, L, 3, dtype=torch.float64, requires_grad=True))
    assert compile_calls == [ss.ssd_chunk_parallel]


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_other_modes_compile_nothing(kernels_mode, compile_calls, mode):
    kernels_mode(mode)
    _check_against_explicit(_quasiseparable(), torch.randn(2, 3, 37, 4, dtype=torch.float64, requires_grad=True))
    assert compile_calls == []


def test_no_compile_inside_an_outer_compile(kernels_mode, compile_calls, monkeypatch):
    kernels_mode("compiled")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert base.torch_algorithm(qs.qs_chunk_parallel) is qs.qs_chunk_parallel
    assert compile_calls == []
