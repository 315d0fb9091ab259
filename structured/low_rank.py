"""Low-rank matrices: m_ij = q_i . k_j (linear attention without normalization).

Shapes: ``q, k`` are ``(*batch, L, r)``; products take ``x: (*batch, L, P)`` and return ``(*batch, L, P)``.

Fast product: y = Q (K^T x), contracting K^T x first: O(L r P) flops, O(r P) extra memory, two GEMMs
(backward stable). The Hydra paper's code writes this as one 3-operand einsum which torch contracts
left to right, forming the L x L matrix Q K^T (quadratic); here the order is explicit.

Defining property: numerical rank <= r. References: Katharopoulos et al., "Transformers are RNNs" (ICML 2020,
arXiv 2006.16236); Hwang et al., Hydra (arXiv 2407.09941), Table 2.
"""
from __future__ import annotations

import torch

from . import properties as P
from . import register
from .base import StructuredMatrix, StructureReport, broadcast_batch, check_tensor, promote, randn


@register("low_rank")
class LowRank(StructuredMatrix):
    """Rank-r matrix ``M = Q K^T``, i.e. ``m_ij = sum_r q_ir k_jr``.

    Parameters
    ----------
    q, k : ``(*batch, L, r)`` tensors (batch dims broadcast).

    ``order`` is r. Fast product ``Q (K^T x)``: O(L r P) flops, O(r P) extra memory. Defining property:
    numerical rank <= r (:func:`structured.properties.numerical_rank`).
    """

    property_name = "numerical rank <= r"

    def __init__(self, q: torch.Tensor, k: torch.Tensor):
        check_tensor("q", q, trailing=(None, None))
        check_tensor("k", k, trailing=(None, None))
        if q.shape[-2:] != k.shape[-2:]:
            raise ValueError(f"q and k must both have shape (*batch, L, r); got q {tuple(q.shape)}, k {tuple(k.shape)}")
        batch = broadcast_batch(q=(q, 2), k=(k, 2))
        super().__init__(q.shape[-2], batch, promote(q, k), q.device, q.shape[-1])
        self.q, self.k = q, k

    def to_dense(self) -> torch.Tensor:
        q, k = self.q, self.k
        dt = torch.promote_types(q.dtype, torch.float32)
        return q.to(dt) @ k.to(dt).transpose(-1, -2)

    def _fast_matmul(self, x: torch.Tensor) -> torch.Tensor:
        q, k = self.q.to(x.dtype), self.k.to(x.dtype)
        return q @ (k.transpose(-1, -2) @ x)

    def check_structure(self, tol: float | None = None) -> StructureReport:
        D = self.to_dense()
        tol = P.default_tol(D.dtype) if tol is None else tol
        return P.report(self.name, self.property_name, P.numerical_rank(D, tol), self.order, tol)

    @classmethod
    def random(cls, length, batch_shape=(), order=None, dtype=None, device=None, generator=None):
        L, batch, r, dtype = cls._random_args(length, batch_shape, order, dtype, default_order=4)
        scale = (L * r) ** -0.25
        q = randn((*batch, L, r), dtype, device, generator) * scale
        k = randn((*batch, L, r), dtype, device, generator) * scale
        return cls(q, k)
