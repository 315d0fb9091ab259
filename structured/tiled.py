"""Exact matrix-free products ``y = M x`` computed row tile by row tile, with recomputation in backward.

Used by the classes whose entries are cheap closed-form functions of per-position parameters (Cauchy,
Vandermonde): only a ``(*batch, T, L, D)`` block of per-entry intermediates exists at a time, never the
L x L matrix of a batch. A class describes its entries with a :class:`TileSpec`; :func:`tiled_matmul` runs
the shared loop and a custom autograd function that saves only ``x`` and the parameters and rebuilds each
tile in backward (the flash-attention recomputation pattern: Dao et al., "FlashAttention", NeurIPS 2022,
arXiv 2205.14135), with

    dL/dx = M^T g,         dL/dparams from G_ij = g_i . x_j  (the spec's ``add_param_grads``).

Cost O(L^2 (D + P)) flops per batch element; memory O(batch * T * L * D) in forward and backward besides the
O(L P) input, output and gradients.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch.autograd.function import once_differentiable

from . import base


class TileSpec(Protocol):
    """The entries of a tiled matrix, given its parameters ``params`` (tensors ``(*batch, L, ...)``).

    ``tile(rows, *params)``: the per-entry intermediates of rows ``rows`` (a slice), any object;
    ``matrix(tile)``: the ``(*batch, T, L)`` block of M it gives;
    ``add_param_grads(tile, G, rows, grads, *params)``: add ``d(sum_ij G_ij m_ij)/d param`` over the
    tile's rows into ``grads`` (one zero-initialized tensor per parameter, or None where not needed),
    G ``(*batch, T, L)`` with ``G_ij = g_i . x_j``. ``matrix`` is called before ``add_param_grads`` on
    the same tile, so the latter may overwrite the tile's buffers.
    """

    def tile(self, rows: slice, *params: torch.Tensor): ...

    def matrix(self, tile) -> torch.Tensor: ...

    def add_param_grads(self, tile, G: torch.Tensor, rows: slice, grads: list, *params: torch.Tensor) -> None: ...


def check_tile(tile) -> int | None:
    """Validate a user-given tile size: None (automatic) or a positive int."""
    if tile is None:
        return None
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be None (automatic) or a positive int (rows per tile), got {tile!r}")
    return tile


def check_method_options(method_fast: str, methods: tuple[str, ...], eps, tile) -> str:
    """Validate the fast-path choice of a class with approximate paths and the exact tiled one.

    methods: ``("auto", <approximate path>, ..., "tiled")``. ``eps`` (accuracy of the approximate paths) and
    ``tile`` (rows per tile) must not be given for a path that would never read them: nothing is ignored.
    """
    if method_fast not in methods:
        raise ValueError(f"method_fast must be one of {methods}, got {method_fast!r}")
    approx = tuple(m for m in methods if m not in ("auto", "tiled"))
    others = " or ".join(repr(m) for m in ("auto",) + approx)
    paths = " and ".join(repr(m) for m in approx) + (" path" if len(approx) == 1 else " paths")
    if method_fast == "tiled" and eps is not None:
        raise ValueError(f"eps={eps!r} sets the accuracy of the {paths}, which method_fast='tiled' (exact) "
                         f"never uses; pass eps=None, or method_fast={others}")
    if method_fast in approx and tile is not None:
        raise ValueError(f"tile={tile!r} sets the row tile of the exact 'tiled' path, which "
                         f"method_fast={method_fast!r} never uses; pass tile=None, or method_fast='auto' or 'tiled'")
    return method_fast


def default_tile(n_batch: int, length: int, inner: int, device=None, budget: int | None = None) -> int:
    """Rows per tile so that a ``(n_batch, T, length, inner)`` block has about ``budget`` elements (default:
    the library-wide ``structured.base.BLOCK_ELEMENTS`` on the CPU, ``DEVICE_BLOCK_ELEMENTS`` elsewhere)."""
    if budget is None:
        on_cpu = device is None or torch.device(device).type == "cpu"
        budget = base.BLOCK_ELEMENTS if on_cpu else base.DEVICE_BLOCK_ELEMENTS
    return max(1, min(length, budget // max(1, n_batch * length * inner)))


def _row_tiles(length: int, tile: int) -> list[slice]:
    return [slice(i0, min(length, i0 + tile)) for i0 in range(0, length, tile)]


class _TiledProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, tile, x, *params):
        ctx.spec, ctx.tile = spec, tile
        ctx.save_for_backward(x, *params)
        y = torch.empty_like(x)
        for rows in _row_tiles(x.shape[-2], tile):
            y[..., rows, :] = spec.matrix(spec.tile(rows, *params)) @ x
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, *params = ctx.saved_tensors
        spec = ctx.spec
        need_x, need_params = ctx.needs_input_grad[2], ctx.needs_input_grad[3:]
        gx = torch.zeros_like(x) if need_x else None
        grads = [torch.zeros_like(p) if need else None for p, need in zip(params, need_params)]
        for rows in _row_tiles(x.shape[-2], ctx.tile):
            blk = spec.tile(rows, *params)
            g_rows = g[..., rows, :]
            if need_x:
                gx += spec.matrix(blk).transpose(-1, -2) @ g_rows
            if any(need_params):
                spec.add_param_grads(blk, g_rows @ x.transpose(-1, -2), rows, grads, *params)
        return (None, None, gx, *grads)


def tiled_matmul(spec: TileSpec, x: torch.Tensor, *params: torch.Tensor, inner: int,
                 tile: int | None = None) -> torch.Tensor:
    """``M x`` for the matrix described by ``spec`` and ``params``, ``tile`` rows at a time.

    x: ``(*batch, L, P)`` and params already expanded to the same batch dims and dtype. ``inner``: the size
    of the last dim of a tile's intermediates (per-entry terms), for the default tile size (``tile=None``:
    :func:`default_tile`). Differentiable in x and every parameter (recomputing backward).
    """
    if tile is None:
        tile = default_tile(x.shape[:-2].numel(), x.shape[-2], inner, x.device)
    return _TiledProduct.apply(spec, tile, x, *params)


__all__ = ["TileSpec", "check_method_options", "check_tile", "default_tile", "tiled_matmul"]
