"""The fixed cosine-DFT matrix m_ij = cos(2 pi i j / L) (Hydra's fixed Vandermonde mixer; FNet-like).

No parameters (``DFT(length, batch_shape)``); products take ``x: (*batch, L, P)`` and return ``(*batch, L, P)``.

Fast product: for real x, sum_j cos(2 pi i j / L) x_j = Re(FFT(x))_i. With ``rfft`` one gets
i = 0..floor(L/2) and the rest from Re X_{L-i} = Re X_i. O(L log L P) flops, any L, accurate like
the FFT (normwise). Reference: Lee-Thorp et al., "FNet: Mixing Tokens with Fourier Transforms",
NAACL 2022 (arXiv 2105.03824); Cooley & Tukey 1965.
"""
from __future__ import annotations

import math

import torch

from . import properties as P
from . import register
from .base import (StructuredMatrix, StructureReport, block_slices, check_batch_shape, check_dtype, check_length,
                   compute_dtype)


def dft_cos_nodes(length: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """theta_i = 2 pi i / L, the nodes of m_ij = cos(theta_i j): ``(L,)``."""
    return 2 * math.pi * torch.arange(length, dtype=dtype, device=device) / length


@register("dft")
class DFT(StructuredMatrix):
    """Real part of the DFT matrix: ``m_ij = cos(2 pi i j / L)``, no parameters.

    Parameters
    ----------
    length : L >= 1.
    batch_shape : batch dims the matrix reports (it is the same matrix in every batch entry; x
        broadcasts against them).
    dtype, device : of the materialization (default: torch's default dtype, CPU).

    ``order`` is None. Fast product: Re(rfft(x)) mirrored, O(L log L P). Defining property: the
    cosine-Vandermonde displacement 2 D_{cos theta} M - M (Z + Z^T) has rank <= 2 with
    theta_i = 2 pi i / L (:func:`structured.properties.cosine_displacement_rank`), and M is symmetric.
    """

    property_name = "cosine displacement rank <= 2 (theta_i = 2 pi i / L), symmetric"
    has_order = False

    def __init__(self, length: int, batch_shape=(), dtype: torch.dtype | None = None, device=None):
        check_length(length)
        super().__init__(length, check_batch_shape(batch_shape), check_dtype(dtype), device, None)

    def to_dense(self) -> torch.Tensor:
        L = self.length
        i = torch.arange(L, device=self.device)
        # Reduce i*j mod L in integers first, so the angle is exact before the cosine.
        angle = (2 * math.pi / L) * ((i[:, None] * i[None, :]) % L).to(torch.float64)
        M = torch.cos(angle).to(compute_dtype(self.dtype))
        return M.expand(*self.batch_shape, L, L)

    def _fast_matmul(self, x: torch.Tensor) -> torch.Tensor:
        L, P = x.shape[-2:]
        i = torch.arange(L, device=x.device)
        mirror = torch.minimum(i, L - i)                       # Re X_{L-i} = Re X_i
        # One contiguous row per (batch entry, column), transformed in cache-sized blocks.
        rows = x.transpose(-1, -2).reshape(-1, L)
        out = [torch.fft.rfft(rows[blk], dim=-1).real.index_select(-1, mirror)
               for blk in block_slices(rows.shape[0], L, device=x.device)]
        return torch.cat(out, dim=0).reshape(*x.shape[:-2], P, L).transpose(-1, -2)

    def check_structure(self, tol: float | None = None) -> StructureReport:
        D = self.to_dense()
        tol = P.default_tol(D.dtype) if tol is None else tol
        theta = dft_cos_nodes(self.length).expand(*self.batch_shape, self.length)
        rank = P.cosine_displacement_rank(D, theta, tol)
        D64 = D.to(torch.float64)
        asym = float((D64 - D64.transpose(-1, -2)).abs().amax()) if D.numel() else 0.0
        return P.report(self.name, self.property_name, rank, 2, tol,
                        detail=f"max |m_ij - m_ji| = {asym:.1e}", extra_ok=asym <= tol)

    @classmethod
    def random(cls, length, batch_shape=(), order=None, dtype=None, device=None, generator=None):
        """The DFT matrix has no parameters: ``generator`` draws nothing; ``order`` must be None."""
        L, batch, _, dtype = cls._random_args(length, batch_shape, order, dtype, default_order=None)
        return cls(L, batch, dtype=dtype, device=device)
