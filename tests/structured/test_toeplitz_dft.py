"""Toeplitz and DFT: entries against independent constructions (scipy, numpy FFT), FFT sizes, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from structured.dft import DFT
from structured.toeplitz import Toeplitz, fast_fft_size, toeplitz_fft_matmul


@pytest.mark.parametrize("L", [1, 2, 5, 16, 33])
def test_toeplitz_entries_and_scipy_oracle(L, gen, rel_err):
    w = torch.randn(2 * L - 1, generator=gen, dtype=torch.float64)
    D = Toeplitz(w).to_dense()
    for i in range(L):
        for j in range(L):
            assert D[i, j] == w[L - 1 + i - j]
    # scipy: first column = lags 0..L-1, first row = lags 0, -1, ..., -(L-1).
    col, row = w[L - 1:].numpy(), w[:L].flip(0).numpy()
    assert np.array_equal(scipy.linalg.toeplitz(col, row), D.numpy())
    x = torch.randn(L, 3, generator=gen, dtype=torch.float64)
    oracle = torch.from_numpy(np.asarray(scipy.linalg.matmul_toeplitz((col, row), x.numpy())).reshape(L, 3))
    assert rel_err(Toeplitz(w).matmul(x), oracle) <= 1e-12


def test_toeplitz_fast_is_normwise_accurate_at_large_L(gen):
    """Normwise bound ||y - y_ref|| <= c log(n) u ||w|| ||x||, checked with c = 10."""
    L = 2000
    w = torch.randn(3, 2 * L - 1, generator=gen, dtype=torch.float64)
    x = torch.randn(3, L, 2, generator=gen, dtype=torch.float64)
    M = Toeplitz(w)
    for dtype, u in ((torch.float64, 2.0 ** -53), (torch.float32, 2.0 ** -24)):
        err = (Toeplitz(w.to(dtype)).matmul(x.to(dtype)).double() - M.matmul(x, method="explicit")).norm()
        n = fast_fft_size(2 * L - 1)
        assert err <= 10 * math.log2(n) * u * w.norm() * x.norm()


def test_fast_fft_size():
    sizes = [fast_fft_size(n) for n in range(1, 2000)]
    for n, m in zip(range(1, 2000), sizes):
        assert m >= n
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        assert k == 1
        # Minimal: no 5-smooth number in [n, m).
        assert all(not _smooth(t) for t in range(n, m))
    with pytest.raises(ValueError, match="n must be"):
        fast_fft_size(0)


def _smooth(t):
    for p in (2, 3, 5):
        while t % p == 0:
            t //= p
    return t == 1


def test_toeplitz_half_input_computed_in_float32(gen, rel_err):
    L = 100
    w = torch.randn(2 * L - 1, generator=gen, dtype=torch.float64)
    x = torch.randn(L, 2, generator=gen, dtype=torch.float64)
    y = toeplitz_fft_matmul(w.to(torch.bfloat16), x.to(torch.bfloat16))
    assert y.dtype == torch.float32
    ref = Toeplitz(w.to(torch.bfloat16).double()).to_dense() @ x.to(torch.bfloat16).double()
    assert rel_err(y, ref) <= 1e-5


def test_toeplitz_errors():
    with pytest.raises(ValueError, match="w must have shape .*2L-1"):
        Toeplitz(torch.zeros(4))
    with pytest.raises(ValueError, match="w"):
        Toeplitz(torch.zeros(3, 0))
    with pytest.raises(ValueError, match="w must be a floating"):
        Toeplitz(torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("L", [1, 2, 3, 8, 15])
def test_dft_entries_and_numpy_fft(L, gen, rel_err):
    D = DFT(L, dtype=torch.float64).to_dense()
    for i in range(L):
        for j in range(L):
            # The naive angle 2 pi i j / L carries a rounding error ~ u * 2 pi i j / L.
            assert abs(float(D[i, j]) - math.cos(2 * math.pi * i * j / L)) <= 1e-15 * (1 + i * j)
    x = torch.randn(2, L, 3, generator=gen, dtype=torch.float64)
    oracle = torch.from_numpy(np.fft.fft(x.numpy(), axis=-2).real)
    assert rel_err(DFT(L, dtype=torch.float64).matmul(x), oracle) <= 1e-13


def test_dft_metadata_and_errors():
    M = DFT(6, batch_shape=(2, 3), dtype=torch.float32)
    assert M.shape == (2, 3, 6, 6) and M.order is None and M.to_dense().dtype == torch.float32
    assert DFT(4).dtype == torch.get_default_dtype()
    with pytest.raises(ValueError, match="length"):
        DFT(0)
    with pytest.raises(ValueError, match="batch_shape"):
        DFT(4, batch_shape=(0,))
    with pytest.raises(ValueError, match="dtype"):
        DFT(4, dtype=torch.int32)
    with pytest.raises(ValueError, match="order must be None"):
        DFT.random(4, order=2)
