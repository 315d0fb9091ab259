"""kernels: Triton GPU kernels for the hot fast paths of :mod:`structured`.

``structured`` asks :func:`enabled` whether to route a product here: the one dispatch point between the two
packages. ``kernels`` imports nothing from ``structured``; constants, tolerances and plans come in as arguments.
The environment variable ``MIXERZOO_KERNELS``, read once per process at the first dispatch, forces the choice
(:func:`set_mode` changes it afterwards, for tests and benchmarks):

* ``auto`` (default): use the kernels for CUDA tensors when Triton is importable, except where the caller's
  torch algorithm is the better one to hand to ``torch.compile`` (``compile_prefers_torch``);
* ``off``: never (always the torch algorithms of ``structured``);
* ``on``: always; an error if Triton is missing, or if the tensor is on the CPU and
  ``TRITON_INTERPRET=1`` is not set (the Triton interpreter runs kernels on the CPU, slowly);
* ``compiled``: as ``auto``, except that the products whose torch algorithm inductor fuses better than the kernel
  call (``compile_prefers_torch``) run that algorithm through ``torch.compile`` on its own, also from eager code
  and on any device (regional compilation at the product: an eager model gets the compiled SSD without compiling
  the model; see ``structured.base.torch_algorithm``).

Entry points (all take tensors with identical batch dims ``(*batch, L, .)``, expanded views allowed,
and return ``(*batch, L, P)`` in the dtype of ``x``, accumulating in float32 or float64):

* :func:`semiseparable_matmul` (causal SSD), :func:`quasiseparable_matmul` (fused bidirectional Hydra
  scan) -- ``kernels/ssd.py``
* :func:`cauchy_matmul` (exact, tiled) and :func:`cauchy_expsum_product` (exponential-sum expansion with a stated
  bound) -- ``kernels/cauchy.py``; :func:`vandermonde_matmul` (exact, tiled) -- ``kernels/vandermonde.py``;
  :func:`vandermonde_chebyshev_product` (``structured.vandermonde``'s Chebyshev path, fused, with a stated bound)
  -- ``kernels/chebyshev.py``

Every entry point has an exact torch reference with its signature in ``kernels/naive.py`` (the explicit L x L
matrix in float64), which the tests compare the kernels with. The kernels are torch custom operators
(``mixerzoo::...``, with fake and autograd registrations), so ``torch.compile`` traces through them.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch

MODES = ("auto", "on", "off", "compiled")
# The mode in effect; None until the first dispatch reads MIXERZOO_KERNELS (or after set_mode(None)). Read once:
# structured asks at every product, and an environment lookup per call costs host time at short L.
_MODE: str | None = None


def parse_mode(value) -> str:
    """A mode from a ``MIXERZOO_KERNELS`` value (case and surrounding blanks ignored, empty = ``auto``)."""
    m = str(value).strip().lower() or "auto"
    if m not in MODES:
        raise ValueError(f"MIXERZOO_KERNELS must be one of {MODES}, got {value!r}")
    return m


def mode() -> str:
    """The dispatch mode: ``MIXERZOO_KERNELS`` (default ``auto``) as read at the first call, or what
    :func:`set_mode` set since."""
    global _MODE
    if _MODE is None:
        _MODE = parse_mode(os.environ.get("MIXERZOO_KERNELS", "auto"))
    return _MODE


def set_mode(m: str | None) -> None:
    """Set the dispatch mode for this process (one of :data:`MODES`), or with None forget it so that the next
    dispatch reads ``MIXERZOO_KERNELS`` again (tests that change the variable call this)."""
    global _MODE
    _MODE = None if m is None else parse_mode(m)


@contextlib.contextmanager
def using(m: str):
    """``with kernels.using("off"): ...`` runs the block in mode ``m`` and restores the previous mode after it."""
    global _MODE
    saved = _MODE
    set_mode(m)
    try:
        yield
    finally:
        _MODE = saved


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install on an unsupported platform
        return False
    return True


@functools.lru_cache(maxsize=None)
def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter: ``TRITON_INTERPRET=1``, read once, as Triton reads it
    when ``triton.jit`` decorates (a later change of the variable changes neither)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def enabled(x, compile_prefers_torch: bool = False) -> bool:
    """Whether a product on tensor ``x`` should run a Triton kernel (see the module docstring).

    ``compile_prefers_torch``: the caller's torch algorithm is one that inductor fuses into faster code
    than the opaque kernel call (the chunk-parallel SSD: a compiled Hydra model trained at 163k tokens/s on
    the torch algorithm against 103k with the scan kernels, on an H200, docs/performance.md); in ``auto`` mode it then
    runs instead of the kernel while ``torch.compile`` traces, and always in ``compiled`` mode."""
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
    if compile_prefers_torch and (m == "compiled" or torch.compiler.is_compiling()):
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

