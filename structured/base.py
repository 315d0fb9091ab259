"""The base class every structured matrix class derives from, and the shared validation helpers.

A structured matrix is a small immutable object holding its generating parameters as tensors with
leading batch dimensions (typically ``(batch, heads)``). It can

* materialize itself (``to_dense()`` -> ``(*batch, L, L)``), the reference;
* multiply a block of vectors ``x`` of shape ``(*batch, L, P)`` by its fast algorithm
  (``matmul(x)``), which never builds an L x L tensor, or by the reference
  (``matmul(x, method="explicit")``);
* check the rank property that defines its class on its own materialization
  (``check_structure()``, see :mod:`structured.properties`).

Conventions shared by all classes
---------------------------------
* Parameter batch dimensions broadcast against each other; ``batch_shape`` is their broadcast shape.
  The batch dimensions of ``x`` must broadcast against ``batch_shape``; the result has the broadcast
  batch shape.
* dtypes: float64 and float32 are computed in their own precision. bfloat16 / float16 parameters or
  inputs are *accumulated in float32*: the product is computed in float32 and returned in the
  promoted input dtype. ``to_dense()`` returns the compute dtype (float32 for half-precision
  parameters).
* Every bad argument raises ``ValueError`` (or ``KeyError`` for unknown names) naming the argument,
  the value and what is allowed.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)
FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
METHODS = ("fast", "explicit")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic is carried out in: half precisions accumulate in float32."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def torch_algorithm(fn: Callable) -> Callable:
    """``fn`` (a product's torch algorithm), or ``fn`` through its own ``torch.compile`` when the kernels' mode is
    ``compiled`` (``MIXERZOO_KERNELS=compiled``, :mod:`kernels`) and no outer compile is tracing (inside one, the
    outer graph holds ``fn``). The compiled function is built once per ``fn``; shapes follow torch.compile's
    default (static at first, dynamic after a second shape); a new dtype, chunk size or shift, or a length that
    changes the algorithm's branches (one chunk or several), compiles another graph."""
    import kernels
    if kernels.mode() == "compiled" and not torch.compiler.is_compiling():
        return _compiled(fn)
    return fn


@functools.lru_cache(maxsize=None)
def _compiled(fn: Callable) -> Callable:
    return torch.compile(fn)


def check_length(length, name: str = "length") -> int:
    """Validate a sequence length: a positive Python int."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"{name} must be a positive int (>= 1), got {length!r}")
    return length


def check_tensor(name: str, t, *, trailing: Sequence[int | None], dtype_float: bool = True) -> torch.Tensor:
    """Validate a parameter tensor: at least ``len(trailing)`` dims; trailing dims equal ``trailing``
    where given (None = any size >= 1); floating dtype.

    Returns the tensor unchanged.
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() < len(trailing):
        want = "(*batch, " + ", ".join("?" if s is None else str(s) for s in trailing) + ")"
        raise ValueError(f"{name} must have shape {want}, got shape {tuple(t.shape)}")
    for k, want in enumerate(trailing):
        got = t.shape[t.dim() - len(trailing) + k]
        if (want is not None and got != want) or got == 0:
            shape = "(*batch, " + ", ".join("?" if s is None else str(s) for s in trailing) + ")"
            raise ValueError(f"{name} must have shape {shape} with nonzero sizes, got shape {tuple(t.shape)}")
    if dtype_float and t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating tensor (float64, float32, bfloat16, float16), got {t.dtype}")
    return t


def check_batch_shape(batch_shape) -> torch.Size:
    """Validate a batch shape: a sequence of positive ints."""
    try:
        batch_shape = torch.Size(batch_shape)
    except TypeError:
        raise ValueError(f"batch_shape must be a tuple of positive ints, got {batch_shape!r}") from None
    if any(s < 1 for s in batch_shape):
        raise ValueError(f"batch_shape must contain positive sizes, got {tuple(batch_shape)}")
    return batch_shape


def check_dtype(dtype) -> torch.dtype:
    """Validate a floating dtype (None = torch's default dtype)."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of float64, float32, bfloat16, float16, got {dtype}")
    return dtype


def broadcast_batch(**named: tuple[torch.Tensor, int]) -> torch.Size:
    """Broadcast the batch dims of several parameters.

    Each keyword maps a parameter name to ``(tensor, n_trailing_dims)``. Raises ValueError naming the
    parameters when their batch dims do not broadcast.
    """
    shapes = {n: tuple(t.shape[: t.dim() - k]) for n, (t, k) in named.items()}
    try:
        return torch.broadcast_shapes(*shapes.values())
    except RuntimeError:
        desc = ", ".join(f"{n}: {s}" for n, s in shapes.items())
        raise ValueError(f"batch dimensions of the parameters must broadcast; got {desc}") from None


def expand_matrices(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Expand tensors of shapes ``(*batch_k, m_k, n_k)`` to their common broadcast batch shape (views, no
    copies): the form the matrix-free products take ``x (*batch, L, P)`` and ``q, k (*batch, L, D)`` in."""
    first = tensors[0].shape[:-2]
    if all(t.shape[:-2] == first for t in tensors[1:]):
        return tuple(tensors)            # nothing to broadcast (broadcast_shapes costs ~50 us of host time)
    batch = torch.broadcast_shapes(*(t.shape[:-2] for t in tensors))
    return tuple(t.expand(*batch, *t.shape[-2:]) for t in tensors)


def promote(*tensors: torch.Tensor) -> torch.dtype:
    dt = tensors[0].dtype
    for t in tensors[1:]:
        dt = torch.promote_types(dt, t.dtype)
    return dt


@dataclass(frozen=True)
class StructureReport:
    """Outcome of a rank-property check on a materialized matrix.

    ok:        the property holds (measured <= bound) for every matrix of the batch
    measured:  the worst value found over the batch (a rank / order)
    bound:     what the class guarantees
    detail:    human-readable explanation (property, tolerance, worst singular-value ratio, ...)
    """

    cls: str
    property: str
    ok: bool
    measured: int
    bound: int
    tol: float
    detail: str = ""
    parts: tuple = field(default_factory=tuple)

    def __str__(self) -> str:
        mark, relation = ("PASS", "<=") if self.ok else ("FAIL", ">")
        lines = [f"[{mark}] {self.cls}: {self.property}: measured {self.measured} {relation} bound {self.bound}"
                 f" (tol {self.tol:.0e})"]
        if self.detail:
            lines.append("    " + self.detail)
        for p in self.parts:
            lines.extend("    " + ln for ln in str(p).splitlines())
        return "\n".join(lines)


class StructuredMatrix:
    """Base class. Subclasses set ``property_name`` and implement ``to_dense``, ``_fast_matmul``,
    ``check_structure`` and the classmethod ``random``; ``__init__`` validates parameters and calls
    ``super().__init__(length, batch_shape, dtype, device, order)``.

    The registry sets ``name`` (see :func:`structured.register`).
    """

    name: ClassVar[str] = ""
    #: The rank property that defines the class (shown by ``mixerzoo check`` / ``mixerzoo list``).
    property_name: ClassVar[str] = ""
    #: True when the class has a structural order (rank, state size, number of terms).
    has_order: ClassVar[bool] = True
    #: True when ``_fast_matmul`` is approximate (then ``error_bound`` documents the bound).
    approximate: ClassVar[bool] = False
    #: For approximate classes: the stated error bound of the fast product (also in the class docstring).
    error_bound: ClassVar[str | None] = None
    #: True when the parameters are themselves an L x L tensor (dense): the fast product is the explicit
    #: one and building an instance costs O(L^2) memory (benchmarks size their runs by it).
    materializes: ClassVar[bool] = False

    def __init__(self, length: int, batch_shape, dtype: torch.dtype, device, order: int | None):
        self._length = check_length(length)
        self._batch_shape = torch.Size(batch_shape)
        self._dtype = dtype
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self._order = order

    # ----------------------------------------------------------------------------------- metadata
    @property
    def length(self) -> int:
        return self._length

    @property
    def batch_shape(self) -> torch.Size:
        return self._batch_shape

    @property
    def order(self) -> int | None:
        return self._order

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def shape(self) -> torch.Size:
        return self._batch_shape + (self._length, self._length)

    def __repr__(self) -> str:
        o = f", order={self._order}" if self._order is not None else ""
        return (f"{type(self).__name__}(length={self._length}, batch_shape={tuple(self._batch_shape)}{o}, "
                f"dtype={self._dtype})")

    # ----------------------------------------------------------------------------------- products
    def check_input(self, x) -> tuple[torch.Tensor, torch.Size]:
        """Validate ``x`` of shape ``(*batch, L, P)``; return it and the output batch shape."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor of shape (*batch, {self._length}, P), got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"x must have shape (*batch, L={self._length}, P), got shape {tuple(x.shape)}")
        if x.shape[-2] != self._length:
            raise ValueError(f"x must have shape (*batch, L={self._length}, P): x.shape[-2] is {x.shape[-2]}, "
                             f"expected the matrix length {self._length}")
        if x.dtype not in FLOAT_DTYPES:
            raise ValueError(f"x must be a floating tensor (float64, float32, bfloat16, float16), got {x.dtype}")
        try:
            out_batch = torch.broadcast_shapes(tuple(x.shape[:-2]), tuple(self._batch_shape))
        except RuntimeError:
            raise ValueError(f"batch dims of x {tuple(x.shape[:-2])} do not broadcast with the matrix batch_shape "
                             f"{tuple(self._batch_shape)}") from None
        return x, torch.Size(out_batch)

    def matmul(self, x: torch.Tensor, method: str = "fast") -> torch.Tensor:
        """``M @ x`` for ``x`` of shape ``(*batch, L, P)`` -> ``(*batch', L, P)`` (broadcast batch).

        method: ``"fast"`` (the class's sub-quadratic algorithm; see the class docstring for cost and
        accuracy) or ``"explicit"`` (``to_dense() @ x``, the reference).
        """
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        x, out_batch = self.check_input(x)
        out_dtype = torch.promote_types(x.dtype, self._dtype)
        cdt = self._fast_dtype(x, out_dtype) if method == "fast" else compute_dtype(out_dtype)
        xc = x.to(cdt).expand(*out_batch, *x.shape[-2:])
        if method == "explicit":
            y = self._explicit_matmul(xc)
        else:
            y = self._fast_matmul(xc)
        return y.to(out_dtype)

    __matmul__ = matmul

    def _fast_dtype(self, x: torch.Tensor, out_dtype: torch.dtype) -> torch.dtype:
        """The dtype ``x`` enters the fast path in: the compute dtype of the result (half precisions
        accumulate in float32). A class whose GPU kernels take half-precision operands and accumulate in
        float32 themselves overrides this to keep them half there (tensor cores instead of float32 FMAs)."""
        return compute_dtype(out_dtype)

    def _explicit_matmul(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.to_dense().to(x.dtype), x)

    # ----------------------------------------------------------------------------------- abstract
    def to_dense(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement to_dense()")

    def _fast_matmul(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement _fast_matmul()")

    def check_structure(self, tol: float | None = None) -> StructureReport:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement check_structure()")

    @classmethod
    def random(cls, length: int, batch_shape=(), order: int | None = None, dtype: torch.dtype | None = None,
               device=None, generator: torch.Generator | None = None) -> "StructuredMatrix":  # pragma: no cover
        raise NotImplementedError(f"{cls.__name__} must implement random()")

    # ----------------------------------------------------------------------------------- helpers
    @classmethod
    def _random_args(cls, length, batch_shape, order, dtype, default_order):
        """Shared validation for ``random``: returns (length, batch_shape, order, dtype)."""
        check_length(length)
        batch_shape = check_batch_shape(batch_shape)
        if not cls.has_order:
            if order is not None:
                raise ValueError(f"order must be None for {cls.name or cls.__name__} (it has no structural order), "
                                 f"got {order!r}")
        else:
            order = default_order if order is None else order
            if isinstance(order, bool) or not isinstance(order, int) or order < 1:
                raise ValueError(f"order must be a positive int for {cls.name or cls.__name__}, got {order!r}")
        return length, batch_shape, order, check_dtype(dtype)


def randn(shape, dtype, device, generator) -> torch.Tensor:
    """Gaussian samples drawn in float64 on CPU from ``generator`` (reproducible across devices),
    then cast: so the same seed gives the same matrix in every dtype and on every device."""
    return torch.randn(tuple(shape), dtype=torch.float64, generator=generator).to(dtype=dtype, device=device)


def rand(shape, dtype, device, generator) -> torch.Tensor:
    """Uniform [0, 1) samples, drawn like :func:`randn`."""
    return torch.rand(tuple(shape), dtype=torch.float64, generator=generator).to(dtype=dtype, device=device)


#: Elements per working tensor that the blocked fast paths aim for on the CPU (2 MiB in float32): large
#: products are computed block by block so their temporaries stay in cache and time stays ~linear in L.
BLOCK_ELEMENTS = 2 ** 19
#: The same on accelerators, where caches do not reward small blocks and each block costs kernel
#: launches: blocks only bound the temporaries' memory.
DEVICE_BLOCK_ELEMENTS = 2 ** 26


def block_slices(n: int, elements_per_item: int, multiple: int = 1, device: torch.device | None = None,
                 budget: int | None = None) -> list[slice]:
    """Split ``range(n)`` into consecutive slices of about ``budget / elements_per_item`` items each
    (at least ``multiple`` items, a multiple of ``multiple``, except possibly the last one).
    ``budget`` defaults to ``BLOCK_ELEMENTS`` on the CPU and ``DEVICE_BLOCK_ELEMENTS`` elsewhere (module
    globals read at call time, so tests can shrink them)."""
    if budget is None:
        budget = BLOCK_ELEMENTS if device is None or torch.device(device).type == "cpu" else DEVICE_BLOCK_ELEMENTS
    size = max(1, budget // max(1, elements_per_item) // multiple) * multiple
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]
