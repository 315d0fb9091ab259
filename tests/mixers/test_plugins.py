"""Plug-ins: a mixer registered in this test file, the example plug-in, and entry-point loading."""
from __future__ import annotations

import importlib.metadata
import math
import sys

import pytest
import torch

import mixers
import structured
from mixers import registry


class DecayMixer(mixers.Mixer):
    """Test-file mixer (RetNet-like causal decay): m_ij = c_i . b_j gamma^(i-j) for i >= j."""

    structure = "semiseparable"

    def __init__(self, *, gamma: float = 0.9, **common):
        super().__init__(**common)
        self.log_gamma = math.log(gamma)

    def token_channels(self):
        return {"b": 3, "c": 3}

    def matrix(self, params, length, mask=None):
        b, c = params["b"], params["c"]
        log_a = torch.full(b.shape[:-1], self.log_gamma, dtype=b.dtype)
        if mask is not None:                      # padded positions pass the state through
            log_a = log_a * mask.to(b.dtype)[:, None, :]
        return structured.get("semiseparable")(b, c, log_a)


@pytest.fixture
def decay_mixer():
    mixers.register_mixer("test_decay")(DecayMixer)
    yield "test_decay"
    mixers.unregister_mixer("test_decay")


@pytest.fixture
def banded():
    from mixers.examples import banded as mod
    if "banded" not in mixers.names():
        mixers.register_mixer("banded")(mod.BandedMixer)
    yield mod
    mixers.unregister_mixer("banded")


def _run_block_and_encoder(name, **kw):
    assert name in mixers.names()
    for sa in (True, False):
        torch.manual_seed(0)
        blk = mixers.MatrixMixerBlock(16, name, sa, max_seq_len=12, headdim=8, qk_dim=4, **kw).double()
        u = torch.randn(2, 9, 16, dtype=torch.float64)
        y = blk(u)
        blk.impl = "explicit"
        torch.testing.assert_close(blk(u), y, rtol=1e-10, atol=1e-12)
        _, v, params = blk.mixer_inputs(u)
        M = blk.matrix(u)
        torch.testing.assert_close(M.to_dense() @ v, y.new_zeros(()) + blk.mixer.apply(v, params, None, "fast"))
        assert M.check_structure().ok
        mask = torch.arange(11)[None, :] < torch.tensor([[9], [6]])
        up = torch.cat([u, torch.randn(2, 2, 16, dtype=torch.float64)], 1)
        torch.testing.assert_close(blk(up, mask)[0, :9], blk(u[:1])[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(blk(up, mask)[1, :6], blk(u[1:, :6])[0], rtol=1e-10, atol=1e-12)
        enc = mixers.MixerEncoder(50, 16, 2, name, sa, 12, headdim=8, qk_dim=4, **kw)
        model = mixers.MixerForMaskedLM(enc)
        ids = torch.randint(0, 50, (2, 9))
        logits = model(ids, torch.ones(2, 9, dtype=torch.bool))
        assert logits.shape == (2, 9, 50) and torch.isfinite(logits).all()
        logits.sum().backward()
        assert all(p.grad is not None for p in model.parameters())


def test_mixer_defined_in_a_test_file_runs_through_block_and_encoder(decay_mixer):
    _run_block_and_encoder(decay_mixer, gamma=0.8)
    assert mixers.names()[decay_mixer] == ("fixed", "sequence_aligned")


def test_example_banded_plugin(banded):
    _run_block_and_encoder("banded", bandwidth=2)
    M = banded.Banded.random(9, (2,), order=2, dtype=torch.float64)
    D = M.to_dense()
    i = torch.arange(9)
    assert torch.all(D[..., (i[:, None] - i[None, :]).abs() > 2] == 0)
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    torch.testing.assert_close(M.matmul(x), D @ x)
    # the check can fail: a band-5 matrix is not band-2, nor is a dense one
    wide = banded.Banded(M.q, M.k, 5)
    assert wide.check_structure().ok
    assert not banded.bandwidth_report(wide.to_dense(), 2).ok
    assert not banded.bandwidth_report(torch.randn(9, 9, dtype=torch.float64), 7).ok


def test_entry_point_plugins_load_lazily(monkeypatch, banded):
    mixers.unregister_mixer("banded")
    sys.modules.pop("mixers.examples.banded", None)
    ep = importlib.metadata.EntryPoint(name="banded", value="mixers.examples.banded", group=registry.ENTRY_POINT_GROUP)
    broken = importlib.metadata.EntryPoint(name="broken", value="no_such_module_xyz", group=registry.ENTRY_POINT_GROUP)
    seen = []

    def fake_entry_points(group=None):
        seen.append(group)
        return [ep, broken] if group == registry.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(registry.importlib.metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    assert "banded" not in registry._REGISTRY                 # nothing loaded before first use
    with pytest.warns(RuntimeWarning, match="could not load mixer plug-in 'broken'"):
        got = mixers.get("banded")
    assert got.__name__ == "BandedMixer" and seen == [registry.ENTRY_POINT_GROUP]
    assert "banded" in mixers.names() and "attention" in mixers.names()
    mixers.names()
    assert seen == [registry.ENTRY_POINT_GROUP]               # loaded once


def test_registry_errors():
    with pytest.raises(KeyError, match="unknown mixer 'zzz'; registered: .*low_rank"):
        mixers.get("zzz")
    with pytest.raises(ValueError, match="already registered"):
        mixers.register_mixer("low_rank")(DecayMixer)
    with pytest.raises(ValueError, match="expects a mixers.base.Mixer subclass"):
        mixers.register_mixer("x1")(int)
    with pytest.raises(ValueError, match="identifier"):
        mixers.register_mixer("not a name")

    class Bad(mixers.Mixer):
        parameterizations = ("learned",)

    with pytest.raises(ValueError, match=r"parameterizations must be a non-empty subset"):
        mixers.register_mixer("bad_params")(Bad)


def test_banded_fast_product_gradcheck(banded):
    g = torch.Generator().manual_seed(0)
    for L, w in [(1, 2), (6, 2), (5, 0)]:
        q = torch.randn(2, L, 3, dtype=torch.float64, generator=g, requires_grad=True)
        k = torch.randn(2, L, 3, dtype=torch.float64, generator=g, requires_grad=True)
        x = torch.randn(2, L, 2, dtype=torch.float64, generator=g, requires_grad=True)
        torch.autograd.gradcheck(lambda q, k, x: banded.Banded(q, k, w).matmul(x), (q, k, x))
        M = banded.Banded(q, k, w)
        torch.testing.assert_close(M.matmul(x), M.matmul(x, method="explicit"), rtol=1e-12, atol=1e-12)

