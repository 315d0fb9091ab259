"""Shared test fixtures: a seeded random generator and a normwise relative error.

Without CUDA, Triton kernels run under Triton's CPU interpreter. Triton reads ``TRITON_INTERPRET`` when it is
first imported, so it is set here, once, before any test module is collected (an explicit value is kept).
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normwise relative error ||a - b|| / ||b|| computed in float64 (0 when both are zero)."""
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    num = float(torch.linalg.vector_norm(a64 - b64))
    den = float(torch.linalg.vector_norm(b64))
    return num / den if den > 0 else num


@pytest.fixture(name="rel_err")
def rel_err_fixture():
    """The :func:`rel_err` helper as a fixture (tests need not import conftest)."""
    return rel_err


@pytest.fixture
def gen(request) -> torch.Generator:
    """A torch.Generator seeded from the test's node id: fresh, reproducible inputs per test."""
    seed = sum(ord(ch) * (k + 1) for k, ch in enumerate(request.node.nodeid)) % (2 ** 31)
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def kernels_mode():
    """``kernels.set_mode`` for one test (the dispatch mode is read once per process, so tests set it here rather
    than through ``MIXERZOO_KERNELS``); afterwards the mode is forgotten and the next dispatch reads the variable."""
    import kernels
    yield kernels.set_mode
    kernels.set_mode(None)


@pytest.fixture
def compiled_matches_eager():
    """``check(f, leaves, tol)``: ``f`` through ``torch.compile(fullgraph=True, backend="aot_eager")`` gives the values
    and the gradients (of ``f(...).square().sum()``) of eager, within ``tol`` normwise."""
    def check(f, leaves, tol=1e-13):
        y = f(*leaves)
        grads = torch.autograd.grad(y.square().sum(), leaves)
        yc = torch.compile(f, backend="aot_eager", fullgraph=True)(*leaves)
        grads_c = torch.autograd.grad(yc.square().sum(), leaves)
        assert rel_err(yc, y) < tol
        for gc_, g_ in zip(grads_c, grads):
            assert rel_err(gc_, g_) < tol
    return check
