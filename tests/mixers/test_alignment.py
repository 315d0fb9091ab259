"""Sequence alignment at the parameter level (Hydra paper, Section 2.3, Definition of sequence-aligned
matrices): perturbing the per-position parameters of positions > i leaves M[:i+1, :i+1] unchanged."""
from __future__ import annotations

import pytest
import torch

import mixers
from mixers import zoo

SA = sorted(n for n, ps in mixers.names().items()
            if "sequence_aligned" in ps and mixers.get(n).__module__ == zoo.__name__)
ALIGNED = [n for n in SA if mixers.get(n).sequence_aligned_definition]


#: non-default options whose per-position parameters differ from the defaults' (the older diagonal)
OPTIONS = {"quasiseparable(older)": ("quasiseparable", {"diagonal": "token"})}


def _block(name):
    name, options = OPTIONS.get(name, (name, {}))
    torch.manual_seed(0)
    return mixers.MatrixMixerBlock(16, name, True, max_seq_len=12, headdim=8, qk_dim=4, **options).double()


def _dense_parts(blk, params, L):
    return {k: M.to_dense() for k, M in blk.mixer.matrices(params, L).items()}


def test_every_sequence_aligned_builtin_except_attention_claims_the_definition():
    assert set(SA) - set(ALIGNED) == {"attention"}


@pytest.mark.parametrize("name", ALIGNED + sorted(OPTIONS))
@pytest.mark.parametrize("i", [0, 4, 8])
def test_leading_block_depends_only_on_leading_parameters(name, i):
    blk = _block(name)
    L = 10
    u = torch.randn(2, L, 16, dtype=torch.float64)
    _, _, params = blk.mixer_inputs(u)
    g = torch.Generator().manual_seed(i)
    perturbed = {}
    for k, p in params.items():
        q = p.clone()
        q[..., i + 1:, :] += torch.randn(q[..., i + 1:, :].shape, generator=g, dtype=q.dtype)
        perturbed[k] = q
    before, after = _dense_parts(blk, params, L), _dense_parts(blk, perturbed, L)
    for k in before:
        torch.testing.assert_close(after[k][..., : i + 1, : i + 1], before[k][..., : i + 1, : i + 1],
                                   rtol=1e-12, atol=1e-14)
        # the perturbation is not a no-op: the rest of the matrix moves
        assert (after[k] - before[k]).abs().amax() > 1e-6


def test_attention_is_not_parameter_level_aligned():
    """Softmax normalizes row i over every key, so later keys change the leading block."""
    blk = _block("attention")
    u = torch.randn(1, 8, 16, dtype=torch.float64)
    _, _, params = blk.mixer_inputs(u)
    p2 = dict(params)
    p2["k"] = params["k"].clone()
    p2["k"][..., 5:, :] += 1.0
    M1, M2 = blk.mixer.matrix(params, 8).to_dense(), blk.mixer.matrix(p2, 8).to_dense()
    assert (M1[..., :5, :5] - M2[..., :5, :5]).abs().amax() > 1e-6


@pytest.mark.parametrize("name", ["dense", "toeplitz", "low_rank"])
def test_fixed_parameterization_is_not_data_dependent(name):
    torch.manual_seed(0)
    blk = mixers.MatrixMixerBlock(16, name, False, max_seq_len=12, headdim=8, qk_dim=4).double()
    a, b = torch.randn(2, 9, 16, dtype=torch.float64).unbind(0)
    torch.testing.assert_close(blk.matrix(a[None]).to_dense(), blk.matrix(b[None]).to_dense())
