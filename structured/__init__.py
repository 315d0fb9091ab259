"""structured: structured matrix classes with explicit and fast products and their rank properties.

    import structured
    structured.names()                  # registered class names
    cls = structured.get("toeplitz")    # KeyError listing the names when unknown
    M = cls.random(64, batch_shape=(2, 3), dtype=torch.float64, generator=g)
    M.to_dense(); M.matmul(x); M.matmul(x, method="explicit"); M.check_structure()

A new class joins with ``@structured.register("name")`` on a :class:`StructuredMatrix` subclass.
"""
from __future__ import annotations

from ._registry import Registry
from .base import StructuredMatrix, StructureReport

_REGISTRY = Registry("structured class")


def register(name: str):
    """Class decorator: register a :class:`StructuredMatrix` subclass under ``name``."""
    Registry.check_name(name)

    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, StructuredMatrix)):
            raise ValueError(f"register({name!r}) expects a StructuredMatrix subclass, got {cls!r}")
        _REGISTRY.add(name, cls, detail=lambda existing: existing.__qualname__)
        cls.name = name
        return cls

    return deco


def names() -> list[str]:
    """Sorted names of the registered classes."""
    return _REGISTRY.names()


def get(name: str) -> type[StructuredMatrix]:
    """The class registered under ``name``; KeyError listing the registered names otherwise."""
    return _REGISTRY.lookup(name)


# The built-in classes register themselves on import.
from . import dense, low_rank, toeplitz, dft, vandermonde, cauchy, semiseparable, quasiseparable  # noqa: E402,F401
from . import properties  # noqa: E402,F401

__all__ = ["StructuredMatrix", "StructureReport", "register", "names", "get", "properties"]
