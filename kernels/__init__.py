"""kernels: Triton GPU kernels for the hot fast paths of :mod:`structured`.

``structured`` asks :func:`enabled` whether to route a product here. The environment variable
``MIXERZOO_KERNELS`` forces the choice (for tests and benchmarks):

* ``auto`` (default): use the kernels for CUDA tensors when Triton is importable, except where the caller's
  torch algorithm is the better one to hand to ``torch.compile`` (``compile_prefers_torch``);
* ``off``: never (always the torch algorithms of ``structured``);
* ``on``: always; an error if Triton is missing, or if the tensor is on the CPU and
  ``TRITON_INTERPRET=1`` is not set (the Triton interpreter runs kernels on the CPU, slowly).

Entry points (all take tensors with identical batch dims ``(*batch, L, .)``, expanded views allowed,
and return ``(*batch, L, P)`` in the dtype of ``x``, accumulating in float32 or float64):

* :func:`semiseparable_matmul` (causal SSD), :func:`quasiseparable_matmul` (fused bidirectional Hydra
  scan) -- ``kernels/ssd.py``
* :func:`cauchy_matmul` (exact, tiled) and :func:`cauchy_expsum_product` (exponential-sum expansion with a stated
  bound) -- ``kernels/cauchy.py``; :func:`vandermonde_matmul` (exact, tiled) -- ``kernels/vandermonde.py``;
  :func:`vandermonde_chebyshev_product` (``structured.vandermonde``'s Chebyshev path, fused, with a stated bound)
  -- ``kernels/chebyshev.py``
"""
from __future__ import annotations

import functools
import os

import torch

MODES = ("auto", "on", "off")


def mode() -> str:
    """The dispatch mode from ``MIXERZOO_KERNELS`` (default ``auto``)."""
    m = os.environ.get("MIXERZOO_KERNELS", "auto").strip().lower() or "auto"
    if m not in MODES:
        raise ValueError(f"MIXERZOO_KERNELS must be one of {MODES}, got {m!r}")
    return m


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install on an unsupported platform
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def enabled(x, compile_prefers_torch: bool = False) -> bool:
    """Whether a product on tensor ``x`` should run a Triton kernel (see the module docstring).

    ``compile_prefers_torch``: the caller's torch algorithm is one that inductor fuses into faster code
    than the opaque kernel call (the chunk-parallel SSD: a compiled Hydra model trains at 163k tokens/s on
    the torch algorithm against 103k with the scan kernels, docs/performance.md); in ``auto`` mode it then
    runs instead of the kernel while ``torch.compile`` traces. Eager calls are unaffected."""
    m = mode()
    if m == "off":
        return False
    if m == "on":
        if not triton_available():
            raise RuntimeError("MIXERZOO_KERNELS=on but Triton is not importable; install triton or set it to auto/off")
        if not x.is_cuda and not interpreting():
            raise RuntimeError("MIXERZOO_KERNELS=on with a CPU tensor needs TRITON_INTERPRET=1 (set before importing "
                               "triton); use MIXERZOO_KERNELS=auto to fall back to the torch algorithms")
        return True
    if compile_prefers_torch and torch.compiler.is_compiling():
        return False
    return bool(x.is_cuda and triton_available())


def semiseparable_matmul(*args, **kwargs):
    from .ssd import semiseparable_matmul as f
    return f(*args, **kwargs)


def quasiseparable_matmul(*args, **kwargs):
    from .ssd import quasiseparable_matmul as f
    return f(*args, **kwargs)


def cauchy_matmul(*args, **kwargs):
    from .cauchy import cauchy_matmul as f
    return f(*args, **kwargs)


def cauchy_expsum_product(*args, **kwargs):
    from .cauchy import cauchy_expsum_product as f
    return f(*args, **kwargs)


def vandermonde_matmul(*args, **kwargs):
    from .vandermonde import vandermonde_matmul as f
    return f(*args, **kwargs)


def vandermonde_chebyshev_product(*args, **kwargs):
    from .chebyshev import vandermonde_chebyshev_product as f
    return f(*args, **kwargs)

