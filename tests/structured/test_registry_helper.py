"""structured._registry.Registry: the helper behind the structured, mixer and task registries."""
import pytest

from structured._registry import Registry


def test_add_lookup_names_remove():
    reg = Registry("widget")
    a, b = object(), object()
    assert reg.add("b", b) is b and reg.add("a", a) is a
    assert reg.names() == ["a", "b"] and reg.lookup("a") is a
    reg.add("a", a)                                   # the same object again: allowed
    with pytest.raises(ValueError, match=r"^a widget named 'a' is already registered$"):
        reg.add("a", b)
    with pytest.raises(KeyError, match=r"unknown widget 'c'; registered: a, b"):
        reg.lookup("c")
    with pytest.raises(KeyError, match=r"unknown widget \['a'\]"):   # unhashable names are unknown too
        reg.lookup(["a"])
    reg.remove("a")
    assert reg.names() == ["b"]
    with pytest.raises(KeyError, match="unknown widget 'a'"):
        reg.remove("a")


def test_same_and_detail_and_copy():
    reg = Registry("widget")
    reg.add("x", 1)
    reg.add("x", 1.0, same=lambda old, new: old == new)          # equal under the caller's rule: replaces
    assert reg["x"] == 1.0
    with pytest.raises(ValueError, match=r"already registered \(old: 1.0\)"):
        reg.add("x", 2, same=lambda old, new: old == new, detail=lambda old: f"old: {old}")
    clone = reg.copy()
    clone.add("y", 3)
    assert "y" not in reg and isinstance(clone, Registry) and clone.kind == "widget"


@pytest.mark.parametrize("bad", ["", "a-b", "1a", None, 3])
def test_check_name(bad):
    with pytest.raises(ValueError, match="mixer name must be a Python identifier string"):
        Registry.check_name(bad, "mixer name")
