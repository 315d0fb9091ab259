"""Dense (unstructured) matrices: m_ij free; ``m`` is ``(*batch, L, L)``.

The explicit product is the algorithm (O(L^2 P) per product); the class is the negative control of every
rank-property check (a random dense matrix fails all of them)."""
from __future__ import annotations

import torch

from . import properties as P
from . import register
from .base import StructuredMatrix, StructureReport, check_tensor, randn


@register("dense")
class Dense(StructuredMatrix):
    """A free ``(*batch, L, L)`` matrix. Fast product = explicit product, O(L^2 P).

    Its "structure" check reports the numerical rank against the full bound L (always passes);
    ``order`` is None.
    """

    property_name = "none (numerical rank <= L)"
    has_order = False
    materializes = True

    def __init__(self, m: torch.Tensor):
        check_tensor("m", m, trailing=(None, None))
        if m.shape[-1] != m.shape[-2]:
            raise ValueError(f"m must be square with shape (*batch, L, L), got shape {tuple(m.shape)}")
        super().__init__(m.shape[-1], m.shape[:-2], m.dtype, m.device, None)
        self.m = m

    def to_dense(self) -> torch.Tensor:
        return self.m.to(torch.promote_types(self.m.dtype, torch.float32))

    def _fast_matmul(self, x: torch.Tensor) -> torch.Tensor:
        return self.m.to(x.dtype) @ x

    def check_structure(self, tol: float | None = None) -> StructureReport:
        D = self.to_dense()
        tol = P.default_tol(D.dtype) if tol is None else tol
        return P.report(self.name, self.property_name, P.numerical_rank(D, tol), self.length, tol)

    @classmethod
    def random(cls, length, batch_shape=(), order=None, dtype=None, device=None, generator=None):
        L, batch, _, dtype = cls._random_args(length, batch_shape, order, dtype, default_order=None)
        return cls(randn((*batch, L, L), dtype, device, generator) / L ** 0.5)
