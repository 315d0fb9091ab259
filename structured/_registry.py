"""The one registry helper behind ``structured.register``, ``mixers.register_mixer`` and
``ablations.tasks.register_task``: a name -> object mapping with the errors all three share."""
from __future__ import annotations

from typing import Any, Callable


class Registry(dict):
    """Registered objects by name. ``kind`` names what is registered in error messages ("mixer", "task", ...).

    It is a plain dict for reading (``name in reg``, ``reg[name]``, iteration); entries join through
    :meth:`add`, which refuses a different object under a taken name.
    """

    def __init__(self, kind: str, entries: dict[str, Any] | None = None):
        super().__init__(entries or {})
        self.kind = kind

    def copy(self) -> Registry:
        """An independent registry with the same entries (tests swap one in to register throwaway names)."""
        return Registry(self.kind, self)

    @staticmethod
    def check_name(name, label: str = "name") -> str:
        """``name`` if it is an identifier string, else ValueError naming ``label`` and the value."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{label} must be a Python identifier string, got {name!r}")
        return name

    def add(self, name: str, obj: Any, *, same: Callable[[Any, Any], bool] | None = None,
            detail: Callable[[Any], str] | None = None) -> Any:
        """Register ``obj`` under ``name`` and return it. Re-adding an object that ``same(existing, obj)`` accepts
        (default: identity) replaces it; any other object under a taken name is a ValueError, with
        ``detail(existing)`` in parentheses when given."""
        existing = super().get(name)
        if existing is not None and not (same(existing, obj) if same else existing is obj):
            extra = f" ({detail(existing)})" if detail else ""
            raise ValueError(f"a {self.kind} named {name!r} is already registered{extra}")
        self[name] = obj
        return obj

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self)

    def lookup(self, name: str) -> Any:
        """The object registered under ``name``; KeyError listing the registered names otherwise."""
        try:
            return self[name]
        except (KeyError, TypeError):
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}") from None

    def remove(self, name: str) -> None:
        """Remove ``name``; KeyError listing the registered names if it is unknown."""
        self.lookup(name)
        del self[name]
