"""benchmarks.paper_fidelity's machinery without the paper's code: the weight mapping of every row against our
own block, and a whole row checked against a stand-in written from the released code's documented product
(the low-rank fixed mixer: ``y = s sum_l (q_t . k_l) v_l + v`` with (L, H, d) tables, inside in_proj -> conv + SiLU
-> mixer -> gated RMSNorm -> out_proj)."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import paper_fidelity as pf


class _Norm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y, z):
        return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight * F.silu(z)


class _LowRankFixed(nn.Module):
    def __init__(self, nheads, qk_dim, L):
        super().__init__()
        self.nheads, self.qk_dim, self.L = nheads, qk_dim, L
        self.q_matrix = nn.Parameter(torch.randn(L, nheads, qk_dim))
        self.k_matrix = nn.Parameter(torch.randn(L, nheads, qk_dim))

    def forward(self, v):
        b, L, w = v.shape
        vh = v.reshape(b, L, self.nheads, -1)
        y = torch.einsum("tnd,lnd,blnh->btnh", self.q_matrix[:L], self.k_matrix[:L], vh) / math.sqrt(self.L * self.qk_dim)
        return y.reshape(b, L, w) + v


class StandIn(nn.Module):
    """The paper's MatrixMixer block for the low-rank fixed row, with its parameter names."""

    def __init__(self, d_model, qk_dim, max_seq_len, d_conv, expand, headdim):
        super().__init__()
        self.d_inner = expand * d_model
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv // 2)
        self.matrix_mixer = _LowRankFixed(self.d_inner // headdim, qk_dim, max_seq_len)
        self.matrix_mixer.nheads = self.d_inner // headdim
        self.norm = _Norm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, u):
        z, x = self.in_proj(u).split(self.d_inner, dim=-1)
        x = F.silu(self.conv1d(x.transpose(1, 2)).transpose(1, 2))
        return self.out_proj(self.norm(self.matrix_mixer(x), z))


def _classes():
    def matrix_mixer(kind, dd, d_model, qk_dim, max_seq_len, d_conv, expand, headdim):
        assert (kind, dd) == ("low_rank", False)
        return StandIn(d_model, qk_dim, max_seq_len, d_conv, expand, headdim)
    return matrix_mixer, None


ROW = next(r for r in pf.ROWS if r.label == "Low-rank")


def test_a_row_checked_against_a_stand_in_matches_to_float64_precision():
    out = pf.check_row(ROW, _classes())
    assert out["status"] == "ok"
    assert out["output"]["max_rel"] < 1e-13 and out["matrix"]["max_rel"] < 1e-12


def test_a_wrong_mapping_shows_as_a_large_error():
    # q and k swapped: a different (transposed) matrix
    wrong = pf.Row(ROW.label, ROW.ours, ROW.paper, pf._mm({"tables.q": ("k_matrix", pf._heads_first),
                                                            "tables.k": ("q_matrix", pf._heads_first)}))
    out = pf.check_row(wrong, _classes())
    assert out["output"]["max_rel"] > 1e-3 and out["matrix"]["max_rel"] > 1e-3


@pytest.mark.parametrize("row", [r for r in pf.ROWS if not r.cannot_build], ids=lambda r: r.label)
def test_every_mapping_targets_exist_in_our_block(row):
    ours = dict(pf.build_ours(row).named_parameters())
    assert set(pf.COMMON) | set(row.weights) >= set(ours), "parameters of ours the mapping does not write"
    assert set(row.weights) <= set(ours)


def test_an_unmapped_parameter_is_a_named_error():
    bad = pf.Row(ROW.label, ROW.ours, ROW.paper, {})
    with pytest.raises(ValueError, match="without a source in the mapping: .*tables.k"):
        pf.check_row(bad, _classes())


def test_toeplitz_lag_mapping_follows_the_circular_fft_indexing():
    L = 5
    c = torch.arange(2 * L - 1, dtype=torch.float64)[None]               # (1, 2L-1)
    f, g = pf._toeplitz_lags("f")(c)[0, :, 0], pf._toeplitz_lags("g")(c)[0, :, 0]
    # w_d = c[d + L] for d <= L-2, w_{L-1} = c[0]; f_d = w_d, g_e = w_{-e-1}
    assert f.tolist() == [5, 6, 7, 8, 0] and g[: L - 1].tolist() == [4, 3, 2, 1]


def test_missing_paper_code_is_one_line_and_exit_2():
    code = "import sys; sys.modules['hydra'] = None; from benchmarks import paper_fidelity as pf; sys.exit(pf.main([]))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "not importable" in r.stderr
