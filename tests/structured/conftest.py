"""Fixtures shared by the structured tests: a dispatch mode that records the largest tensor any op makes."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class MaxNumel(TorchDispatchMode):
    """Records the largest tensor produced by any op (forward and backward) and the op that made it;
    sparse tensors count their stored entries. Memory tests bound it (no L x L temporaries)."""

    def __init__(self):
        super().__init__()
        self.max_numel, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            size = t.numel() if t.layout == torch.strided else t._nnz()
            if size > self.max_numel:
                self.max_numel, self.op = size, func
        return out


@pytest.fixture
def max_numel() -> MaxNumel:
    """A fresh :class:`MaxNumel` mode: ``with max_numel as mode: ...; mode.max_numel``."""
    return MaxNumel()
