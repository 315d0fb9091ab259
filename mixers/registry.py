"""The mixer registry: built-in mixers, mixers registered at run time, and third-party plug-ins.

A mixer joins with ``@mixers.register_mixer("name")`` on a :class:`mixers.base.Mixer` subclass. Installed
packages can contribute mixers through the entry-point group ``mixerzoo.mixers``: each entry point names a
module (``pkg.my_mixers``) or an object in it (``pkg.my_mixers:BandedMixer``); loading it must run the
decorator. Entry points are loaded lazily, once, the first time :func:`names` or :func:`get` is called.
"""
from __future__ import annotations

import importlib.metadata
import warnings

ENTRY_POINT_GROUP = "mixerzoo.mixers"
PARAMETERIZATIONS = ("fixed", "sequence_aligned")

_REGISTRY: dict[str, type] = {}
_entry_points_loaded = False


def register_mixer(name: str):
    """Class decorator registering a :class:`~mixers.base.Mixer` subclass under ``name``.

    The class must name its structured class (``structure``) and declare the parameterizations it
    supports (``parameterizations``, a non-empty subset of ``("fixed", "sequence_aligned")``).
    Registering a different class under a taken name raises ValueError (re-registering the same class,
    e.g. on module reload, is allowed).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"mixer name must be a Python identifier string, got {name!r}")

    def deco(cls):
        from .base import Mixer

        if not (isinstance(cls, type) and issubclass(cls, Mixer)):
            raise ValueError(f"register_mixer({name!r}) expects a mixers.base.Mixer subclass, got {cls!r}")
        params = tuple(cls.parameterizations)
        if not params or any(p not in PARAMETERIZATIONS for p in params):
            raise ValueError(f"{cls.__qualname__}.parameterizations must be a non-empty subset of "
                             f"{PARAMETERIZATIONS}, got {params!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"a mixer named {name!r} is already registered ({existing.__module__}."
                             f"{existing.__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def unregister_mixer(name: str) -> None:
    """Remove ``name`` from the registry (for tests and interactive use); KeyError if unknown."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown mixer {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    del _REGISTRY[name]


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken plug-in must not break the built-in mixers
            warnings.warn(f"could not load mixer plug-in {ep.name!r} ({ep.value}) from entry-point group "
                          f"{ENTRY_POINT_GROUP!r}: {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=3)


def names() -> dict[str, tuple[str, ...]]:
    """``{name: supported parameterizations}`` for every registered mixer, sorted by name
    (loads the ``mixerzoo.mixers`` entry points on first use)."""
    _load_entry_points()
    return {n: tuple(_REGISTRY[n].parameterizations) for n in sorted(_REGISTRY)}


def get(name: str) -> type:
    """The mixer class registered under ``name``; KeyError listing the registered names otherwise."""
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown mixer {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None
