"""Example plug-in: a banded (sliding-window) low-rank mixer, complete in one file.

    import mixers, mixers.examples.banded          # importing registers "banded"
    block = mixers.MatrixMixerBlock(64, "banded", sequence_aligned=True, headdim=16, bandwidth=3)

A third-party package would ship this module and declare it in its packaging metadata, e.g. in
``setup.cfg``::

    [options.entry_points]
    mixerzoo.mixers =
        banded = my_package.banded

``mixers.names()`` / ``mixers.get()`` then load it lazily. It shows the two extension points: a new
structured class (a :class:`structured.base.StructuredMatrix` subclass with an explicit and a fast
product and a structure check) and a new mixer (a :class:`mixers.Mixer` subclass declaring its
per-position channels and building the matrix from them). The block supplies both parameterizations.
"""
from __future__ import annotations

import math

import torch

import mixers
from structured import properties as P
from structured.base import StructuredMatrix, StructureReport, broadcast_batch, check_tensor, promote, randn


def bandwidth_report(M: torch.Tensor, bandwidth: int, tol: float | None = None) -> StructureReport:
    """Check that every entry of ``M`` (``(*batch, L, L)``) with ``|i - j| > bandwidth`` is below
    ``tol * ||M||_2``; ``measured`` is the largest such ``|i - j|`` over the batch."""
    D = M.detach().to(torch.float64)
    tol = P.default_tol(M.dtype) if tol is None else tol
    ref = P.spectral_norm(D).clamp_min(1e-300)[..., None, None]
    i = torch.arange(D.shape[-1])
    lag = (i[:, None] - i[None, :]).abs().expand_as(D)
    nonzero = (D.abs() / ref) > tol
    measured = int(lag[nonzero].max()) if bool(nonzero.any()) else 0
    return P.report("banded", Banded.property_name, measured, bandwidth, tol,
                    detail="largest |i - j| of an entry above tol * ||M||_2")


class Banded(StructuredMatrix):
    """Sliding-window low-rank matrix: ``m_ij = q_i . k_j`` if ``|i - j| <= w``, else 0.

    q, k: ``(*batch, L, r)``; ``bandwidth`` w >= 0. ``order`` is w. Fast product: one pass per offset
    d in [-w, w], ``y_i += (q_i . k_{i+d}) x_{i+d}``: O(L w (r + P)) flops, no L x L tensor.
    Defining property: every entry with |i - j| > w is zero (checked on the materialization against
    ``tol * ||M||_2``).
    """

    property_name = "bandwidth <= w"

    def __init__(self, q: torch.Tensor, k: torch.Tensor, bandwidth: int):
        check_tensor("q", q, trailing=(None, None))
        check_tensor("k", k, trailing=(None, None))
        if q.shape[-2:] != k.shape[-2:]:
            raise ValueError(f"q and k must both have shape (*batch, L, r); got q {tuple(q.shape)}, k {tuple(k.shape)}")
        if isinstance(bandwidth, bool) or not isinstance(bandwidth, int) or bandwidth < 0:
            raise ValueError(f"bandwidth must be an int >= 0, got {bandwidth!r}")
        batch = broadcast_batch(q=(q, 2), k=(k, 2))
        super().__init__(q.shape[-2], batch, promote(q, k), q.device, bandwidth)
        self.q, self.k = q, k

    def _band(self, dtype, device):
        i = torch.arange(self.length, device=device)
        return ((i[:, None] - i[None, :]).abs() <= self.order).to(dtype)

    def to_dense(self) -> torch.Tensor:
        dt = torch.promote_types(self.dtype, torch.float32)
        q, k = self.q.to(dt), self.k.to(dt)
        return (q @ k.transpose(-1, -2)) * self._band(dt, q.device)

    def _fast_matmul(self, x: torch.Tensor) -> torch.Tensor:
        q, k = self.q.to(x.dtype), self.k.to(x.dtype)
        L = self.length
        y = torch.zeros_like(x)
        for d in range(-min(self.order, L - 1), min(self.order, L - 1) + 1):
            # rows i with 0 <= i + d < L read column j = i + d
            rows = slice(max(0, -d), L - max(0, d))
            cols = slice(max(0, d), L - max(0, -d))
            w = (q[..., rows, :] * k[..., cols, :]).sum(-1, keepdim=True)
            y[..., rows, :] = y[..., rows, :] + w * x[..., cols, :]
        return y

    def check_structure(self, tol: float | None = None) -> StructureReport:
        return bandwidth_report(self.to_dense(), self.order, tol)

    @classmethod
    def random(cls, length, batch_shape=(), order=None, dtype=None, device=None, generator=None):
        L, batch, w, dtype = cls._random_args(length, batch_shape, order, dtype, default_order=2)
        q = randn((*batch, L, 4), dtype, device, generator)
        k = randn((*batch, L, 4), dtype, device, generator)
        return cls(q, k, w)


@mixers.register_mixer("banded")
class BandedMixer(mixers.Mixer):
    """Sliding-window linear attention: ``m_ij = q_i . k_j / sqrt(d (2w + 1))`` for ``|i - j| <= w``.

    Per-position channels q, k (qk_dim each, through the conv + SiLU). Sequence-aligned (row i and
    column j use only q_i and k_j), so it supports both parameterizations. Option: ``bandwidth`` w.
    """

    structure = "banded"

    def __init__(self, *, bandwidth: int = 4, **common):
        super().__init__(**common)
        if isinstance(bandwidth, bool) or not isinstance(bandwidth, int) or bandwidth < 0:
            raise ValueError(f"bandwidth must be an int >= 0, got {bandwidth!r}")
        self.bandwidth = bandwidth

    def token_channels(self):
        return {"q": self.qk_dim, "k": self.qk_dim}

    def matrix(self, params, length, mask=None):
        s = 1.0 / math.sqrt(self.qk_dim * (2 * self.bandwidth + 1))
        return Banded(params["q"] * s, params["k"], self.bandwidth)
