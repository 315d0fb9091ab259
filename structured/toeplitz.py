"""Toeplitz matrices: m_ij = w[L-1 + i - j] (2L-1 free values, one per lag; index L-1 is lag 0).

Shapes: ``w`` is ``(*batch, 2L-1)``; products take ``x: (*batch, L, P)`` and return ``(*batch, L, P)``.

Fast product: circulant embedding + real FFT. The lags are placed in the first column of a circulant
of size n >= 2L-1 (n the next 5-smooth size, fast for every FFT backend), whose product with the
zero-padded x is a circular convolution; its first L rows are T x. O(n log n P) flops, O(n P) memory
(columns are transformed in cache-sized blocks).

Accuracy is normwise, not componentwise: ||y_fast - y|| <~ c log(n) u ||w|| ||x|| (FFT convolution
has "global" relative error; small outputs can have large relative error), so tests compare normwise.

Note on Hydra's public code (goombalab/hydra, ``matrix_mixers/toeplitz.py``): its FFT construction
shifts every lag by one (lag d reads kernel entry d+1, the diagonal is forward_conv[1]) and wraps the
corner lag d = L-1 around to the reverse kernel, so reverse_conv[0] is never used. We implement the
clean definition m_ij = w[L-1 + i - j]; a mixer wanting the paper code's exact indexing can permute w.

Defining property: displacement rank(Z M - M Z) <= 2, Z the down-shift (Kailath & Sayed, "Displacement
structure", SIAM Review 37(3), 1995). Reference: Hwang et al., Hydra (arXiv 2407.09941), Table 2.
"""
from __future__ import annotations

import torch

from . import properties as P
from . import register
from .base import StructuredMatrix, StructureReport, block_slices, check_tensor, compute_dtype, randn


def fast_fft_size(n: int) -> int:
    """Smallest 5-smooth integer (2^a 3^b 5^c) >= n: FFT lengths every backend handles fast."""
    if n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def toeplitz_fft_matmul(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``T x`` with ``T_ij = w[..., L-1 + i - j]`` by circulant embedding and rfft/irfft.

    w: ``(*batch, 2L-1)``; x: ``(*batch, L, P)`` (batch dims broadcast), both floating. Half
    precision is computed in float32 (CPU has no half FFT; cuFFT half needs power-of-two sizes).
    Returns ``(*batch, L, P)`` in the compute dtype. O(n log n P) flops, n = fast_fft_size(2L-1); the
    columns are transformed in blocks of about ``structured.base.BLOCK_ELEMENTS / n`` so the spectra
    stay cache-sized (extra memory O(L) per block besides the O(L P) output and input copy).
    """
    L, P = x.shape[-2:]
    dt = compute_dtype(torch.promote_types(w.dtype, x.dtype))
    w, x = w.to(dt), x.to(dt)
    batch = torch.broadcast_shapes(w.shape[:-1], x.shape[:-2])
    n = fast_fft_size(2 * L - 1)
    # First column of the circulant: lags 0..L-1, zeros, then lags -(L-1)..-1.
    col = torch.cat([w[..., L - 1:], w.new_zeros(*w.shape[:-1], n - (2 * L - 1)), w[..., : L - 1]], dim=-1)
    spectrum = torch.fft.rfft(col, n=n, dim=-1).expand(*batch, n // 2 + 1).reshape(-1, n // 2 + 1)
    # One row per (batch entry, column) in contiguous memory; row r belongs to batch entry r // P.
    rows = x.expand(*batch, L, P).transpose(-1, -2).reshape(-1, L)
    out = []
    for blk in block_slices(rows.shape[0], n, device=x.device):
        owner = torch.arange(blk.start, blk.stop, device=x.device) // P
        prod = spectrum[owner] * torch.fft.rfft(rows[blk], n=n, dim=-1)
        out.append(torch.fft.irfft(prod, n=n, dim=-1)[:, :L])
    return torch.cat(out, dim=0).reshape(*batch, P, L).transpose(-1, -2)


@register("toeplitz")
class Toeplitz(StructuredMatrix):
    """Toeplitz matrix ``m_ij = w[..., (L-1) + (i-j)]``.

    Parameters
    ----------
    w : ``(*batch, 2L-1)`` the lags -(L-1)..L-1 in order (index L-1 is lag 0, the diagonal;
        index L-1+d is the d-th subdiagonal).

    ``order`` is None. Fast product: :func:`toeplitz_fft_matmul`, O(L log L P), normwise accurate.
    Defining property: rank(Z M - M Z) <= 2, Z the down-shift (Kailath, Kung & Morf, "Displacement ranks
    of matrices and linear equations", J. Math. Anal. Appl. 68, 1979;
    :func:`structured.properties.toeplitz_displacement_rank`).

    Hydra's public code shifts the lags by one and wraps the corner lag (see the module docstring);
    this class implements the clean definition above.
    """

    property_name = "displacement rank(Z M - M Z) <= 2"
    has_order = False

    def __init__(self, w: torch.Tensor):
        check_tensor("w", w, trailing=(None,))
        n = w.shape[-1]
        if n % 2 == 0:
            raise ValueError(f"w must have shape (*batch, 2L-1) (an odd last dim: lags -(L-1)..L-1), "
                             f"got shape {tuple(w.shape)}")
        super().__init__((n + 1) // 2, w.shape[:-1], w.dtype, w.device, None)
        self.w = w

    def to_dense(self) -> torch.Tensor:
        L = self.length
        i = torch.arange(L, device=self.w.device)
        index = (L - 1) + i[:, None] - i[None, :]
        return self.w.to(compute_dtype(self.dtype))[..., index]

    def _fast_matmul(self, x: torch.Tensor) -> torch.Tensor:
        return toeplitz_fft_matmul(self.w.to(x.dtype), x)

    def check_structure(self, tol: float | None = None) -> StructureReport:
        D = self.to_dense()
        tol = P.default_tol(D.dtype) if tol is None else tol
        return P.report(self.name, self.property_name, P.toeplitz_displacement_rank(D, tol), 2, tol)

    @classmethod
    def random(cls, length, batch_shape=(), order=None, dtype=None, device=None, generator=None):
        """w ~ N(0, 1/L) (so the operator norm stays O(1))."""
        L, batch, _, dtype = cls._random_args(length, batch_shape, order, dtype, default_order=None)
        return cls(randn((*batch, 2 * L - 1), dtype, device, generator) / L ** 0.5)
