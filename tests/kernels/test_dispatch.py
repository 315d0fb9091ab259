"""The one dispatch point between structured/ and kernels/: MIXERZOO_KERNELS is read once per process, set_mode and
using change the mode afterwards, a bad value is a ValueError naming the variable, the value and the modes."""
import pytest

import kernels


def test_environment_is_read_once_until_set_mode_none(kernels_mode, monkeypatch):
    monkeypatch.setenv("MIXERZOO_KERNELS", "off")
    kernels_mode(None)
    assert kernels.mode() == "off"
    monkeypatch.setenv("MIXERZOO_KERNELS", "on")
    assert kernels.mode() == "off"            # the first read holds
    kernels_mode(None)
    assert kernels.mode() == "on"
    monkeypatch.setenv("MIXERZOO_KERNELS", " Auto ")
    kernels_mode(None)
    assert kernels.mode() == "auto"


def test_set_mode_and_using(kernels_mode):
    kernels_mode("off")
    with kernels.using("on"):
        assert kernels.mode() == "on"
    assert kernels.mode() == "off"
    with pytest.raises(RuntimeError), kernels.using("auto"):
        raise RuntimeError
    assert kernels.mode() == "off"


def test_bad_mode_names_variable_value_and_modes(kernels_mode, monkeypatch):
    with pytest.raises(ValueError, match=r"MIXERZOO_KERNELS must be one of \('auto', 'on', 'off', 'compiled'\), got 'fast'"):
        kernels_mode("fast")
    monkeypatch.setenv("MIXERZOO_KERNELS", "bogus")
    kernels_mode(None)
    with pytest.raises(ValueError, match="got 'bogus'"):
        kernels.mode()


def test_compiled_mode_hands_only_compile_preferring_products_to_torch(kernels_mode):
    import torch
    x = torch.zeros(2, 3)
    kernels_mode("compiled")
    assert not kernels.enabled(x, compile_prefers_torch=True)
    with kernels.using("auto"):
        auto = kernels.enabled(x)
    assert kernels.enabled(x) == auto          # the others are routed as in auto mode
