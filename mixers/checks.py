"""Cheap checks of a block's input, so that misuse is a ValueError naming the argument instead of a raw
torch error deep inside a matmul or a silent NaN output.

:func:`check_block_input` is called at the top of ``MatrixMixerBlock.forward``. Its costs:

* dtype and device: metadata comparisons, no device work.
* finiteness: one reduction over ``u`` and a host read of its result (a device sync on CUDA). It runs in
  evaluation and inference (``torch.no_grad()`` or a module in eval mode), where one sync per block call
  is small against the block itself; it is skipped while training with autograd on (the trainer's
  non-finite loss check covers training without a per-step sync), while ``torch.compile`` traces (a
  data-dependent branch would break the graph) and during CUDA graph capture (a sync is illegal there).
"""
from __future__ import annotations

import torch

__all__ = ["check_block_input"]


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _tracing() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and getattr(compiler, "is_compiling", None) and compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def check_block_input(u, *, dtype: torch.dtype, device, name: str = "u", training: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` when ``u`` cannot go through a block whose parameters have
    ``dtype`` and live on ``device``.

    u: ``(B, L, d_model)`` tensor (shape is the block's own check). Under autocast any floating dtype is
    accepted (autocast casts at each matmul); otherwise ``u.dtype`` must equal ``dtype``. ``training``:
    the module's ``training`` flag; with it and autograd on, the finiteness check is skipped (see the
    module docstring for the costs).
    """
    if not isinstance(u, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, L, d_model), got {type(u).__name__}")
    device = torch.device(device)
    if not _same_device(u.device, device):
        raise ValueError(f"{name} is on {u.device} but the block's parameters are on {device}; move one of them "
                         f"({name}.to({str(device)!r}) or block.to({str(u.device)!r}))")
    if not u.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (the block's dtype is {dtype}), got {u.dtype}")
    if u.dtype != dtype and not torch.is_autocast_enabled(u.device.type):
        raise ValueError(f"{name} has dtype {u.dtype} but the block's parameters are {dtype}; allowed: {dtype} "
                         f"({name}.to({dtype}) or block.to({u.dtype})), or any floating dtype under torch.autocast")
    if (training and torch.is_grad_enabled()) or _tracing() or u.numel() == 0:
        return
    if not bool(torch.isfinite(u).all()):
        n_nan = int(torch.isnan(u).sum())
        n_inf = int(torch.isinf(u).sum())
        raise ValueError(f"{name} has non-finite values ({n_nan} NaN, {n_inf} inf of {u.numel()}); allowed: finite "
                         f"inputs")
