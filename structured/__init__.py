"""structured: structured matrix classes with explicit and fast products and their rank properties.

    import structured
    structured.names()                  # registered class names
    cls = structured.get("toeplitz")    # KeyError listing the names when unknown
    M = cls.random(64, batch_shape=(2, 3), dtype=torch.float64, generator=g)
    M.to_dense(); M.matmul(x); M.matmul(x, method="explicit"); M.check_structure()

A new class joins with ``@structured.register("name")`` on a :class:`StructuredMatrix` subclass.
"""
from __future__ import annotations

from .base import StructuredMatrix, StructureReport

_REGISTRY: dict[str, type[StructuredMatrix]] = {}


def register(name: str):
    """Class decorator: register a :class:`StructuredMatrix` subclass under ``name``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be a Python identifier string, got {name!r}")

    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, StructuredMatrix)):
            raise ValueError(f"register({name!r}) expects a StructuredMatrix subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"a structured class named {name!r} is already registered ({existing.__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def names() -> list[str]:
    """Sorted names of the registered classes."""
    return sorted(_REGISTRY)


def get(name: str) -> type[StructuredMatrix]:
    """The class registered under ``name``; KeyError listing the registered names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown structured class {name!r}; registered: {', '.join(names())}") from None


# The built-in classes register themselves on import.
from . import dense, low_rank, toeplitz, dft, vandermonde, cauchy, semiseparable, quasiseparable  # noqa: E402,F401
from . import properties  # noqa: E402,F401

__all__ = ["StructuredMatrix", "StructureReport", "register", "names", "get", "properties"]
