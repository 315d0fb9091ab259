"""The mixer registry: built-in mixers, mixers registered at run time, and third-party plug-ins.

A mixer joins with ``@mixers.register_mixer("name")`` on a :class:`mixers.base.Mixer` subclass. Installed
packages can contribute mixers through the entry-point group ``mixerzoo.mixers``: each entry point names a
module (``pkg.my_mixers``) or an object in it (``pkg.my_mixers:BandedMixer``); loading it must run the
decorator. Entry points are loaded lazily, once, the first time :func:`names` or :func:`get` is called.
"""
from __future__ import annotations

import importlib.metadata
import warnings

from structured._registry import Registry

ENTRY_POINT_GROUP = "mixerzoo.mixers"
PARAMETERIZATIONS = ("fixed", "sequence_aligned")

_REGISTRY = Registry("mixer")
_entry_points_loaded = False


def register_mixer(name: str):
    """Class decorator registering a :class:`~mixers.base.Mixer` subclass under ``name``.

    The class must name its structured class (``structure``) and declare the parameterizations it
    supports (``parameterizations``, a non-empty subset of ``("fixed", "sequence_aligned")``).
    Registering a different class under a taken name raises ValueError (re-registering the same class,
    e.g. on module reload, is allowed).
    """
    Registry.check_name(name, "mixer name")

    def deco(cls):
        from .base import Mixer

        if not (isinstance(cls, type) and issubclass(cls, Mixer)):
            raise ValueError(f"register_mixer({name!r}) expects a mixers.base.Mixer subclass, got {cls!r}")
        params = tuple(cls.parameterizations)
        if not params or any(p not in PARAMETERIZATIONS for p in params):
            raise ValueError(f"{cls.__qualname__}.parameterizations must be a non-empty subset of "
                             f"{PARAMETERIZATIONS}, got {params!r}")
        # the same class re-imported (a module reload) replaces itself; another class under the name is an error
        _REGISTRY.add(name, cls, same=lambda existing, new: existing.__qualname__ == new.__qualname__,
                      detail=lambda existing: f"{existing.__module__}.{existing.__qualname__}")
        cls.name = name
        return cls

    return deco


def unregister_mixer(name: str) -> None:
    """Remove ``name`` from the registry (for tests and interactive use); KeyError if unknown."""
    _REGISTRY.remove(name)


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
    return {n: tuple(_REGISTRY[n].parameterizations) for n in _REGISTRY.names()}


def get(name: str) -> type:
    """The mixer class registered under ``name``; KeyError listing the registered names otherwise."""
    _load_entry_points()
    return _REGISTRY.lookup(name)
