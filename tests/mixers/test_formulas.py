"""Each built-in mixer's matrix against its docstring formula, recomputed entry by entry from the
per-position parameters with the Hydra paper code's scalings (arXiv 2407.09941; research notes §1):
low-rank 1/sqrt(L d), Toeplitz 0.5/sqrt(L), Vandermonde angle 1e-3 and 1/sqrt(2 L d), Cauchy
exp(.) + positive offset (0.5 at init) and 1/sqrt(L d), attention softmax(q k / sqrt(d)), DFT and
dense 1/sqrt(L), SSMs with dt = softplus(dt_raw + dt_bias), A = -exp(A_log)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import mixers

D_MODEL, HEADDIM, QK, LREF, L = 16, 8, 4, 12, 6


def _setup(name, sa=True, **kw):
    torch.manual_seed(0)
    blk = mixers.MatrixMixerBlock(D_MODEL, name, sa, max_seq_len=LREF, headdim=HEADDIM, qk_dim=QK, **kw).double()
    with torch.no_grad():
        for p in blk.mixer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    u = torch.randn(2, L, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, v, params = blk.mixer_inputs(u)
    return blk, blk.matrix(u).to_dense(), params


def _entries(fn):
    return torch.stack([torch.stack([fn(i, j) for j in range(L)], -1) for i in range(L)], -2)


def test_low_rank():
    blk, M, p = _setup("low_rank")
    want = p["q"] @ p["k"].transpose(-1, -2) / math.sqrt(LREF * QK)
    torch.testing.assert_close(M, want)


def test_toeplitz_clean_lags():
    blk, M, p = _setup("toeplitz")
    f, g = p["f"][..., 0], p["g"][..., 0]
    want = _entries(lambda i, j: (f[..., i - j] if i >= j else g[..., j - i - 1]) * 0.5 / math.sqrt(LREF))
    torch.testing.assert_close(M, want)


def test_vandermonde_angle_and_output_scale():
    blk, M, p = _setup("vandermonde")
    q, k, e = p["q"], p["k"], 1e-3
    want = _entries(lambda i, j: (torch.cos(2 * math.pi * e * q[..., i, :] * j)
                                  - torch.cos(2 * math.pi * e * k[..., j, :] * i)).sum(-1))
    torch.testing.assert_close(M, want)
    assert blk.mixer.value_scale == pytest.approx(1 / math.sqrt(2 * LREF * QK))


def test_cauchy_positive_nodes():
    torch.manual_seed(0)
    fresh = mixers.MatrixMixerBlock(D_MODEL, "cauchy", True, max_seq_len=LREF, headdim=HEADDIM, qk_dim=QK)
    torch.testing.assert_close(F.softplus(fresh.mixer.offset_raw), torch.full((2 * D_MODEL // HEADDIM,), 0.5))
    blk, M, p = _setup("cauchy")
    beta = F.softplus(blk.mixer.offset_raw)[:, None]
    x, y = torch.exp(p["q"]) + beta[..., None], torch.exp(p["k"]) + beta[..., None]
    want = _entries(lambda i, j: (1 / (x[..., i, :] + y[..., j, :])).sum(-1) / math.sqrt(LREF * QK))
    torch.testing.assert_close(M, want)


@pytest.mark.parametrize("fixed_offset", [False, True])
def test_cauchy_fixed_has_no_offset_unless_asked(fixed_offset):
    blk, M, p = _setup("cauchy", sa=False, fixed_offset=fixed_offset)
    beta = F.softplus(blk.mixer.offset_raw)[:, None, None] if fixed_offset else 0.0
    x, y = torch.exp(p["q"]) + beta, torch.exp(p["k"]) + beta
    want = _entries(lambda i, j: (1 / (x[..., i, :] + y[..., j, :])).sum(-1) / math.sqrt(LREF * QK))
    torch.testing.assert_close(M, want)
    assert hasattr(blk.mixer, "offset_raw") == fixed_offset


def test_attention():
    blk, M, p = _setup("attention")
    torch.testing.assert_close(M, torch.softmax(p["q"] @ p["k"].transpose(-1, -2) / math.sqrt(QK), -1))


def test_dft_and_dense_fixed():
    blk, M, _ = _setup("dft", sa=False)
    i = torch.arange(L, dtype=torch.float64)
    torch.testing.assert_close(M.expand(2, -1, -1, -1), torch.cos(2 * math.pi * i[:, None] * i / L).expand(2, 4, L, L))
    assert blk.mixer.value_scale == pytest.approx(LREF ** -0.5)
    blk, M, _ = _setup("dense", sa=False)
    torch.testing.assert_close(M, blk.tables["m"][:, :L, :L].expand(2, -1, -1, -1))
    assert blk.mixer.value_scale == pytest.approx(LREF ** -0.5)


def _ssm(mixer, p, dt_name, suffix=""):
    dt = F.softplus(p[dt_name][..., 0] + getattr(mixer, "dt_bias" + suffix)[:, None])
    A = -torch.exp(getattr(mixer, "A_log" + suffix))
    return dt, A


def test_semiseparable_mamba2():
    blk, M, p = _setup("semiseparable")
    dt, A = _ssm(blk.mixer, p, "dt")
    B, C, D = p["B"], p["C"], blk.mixer.D

    def m(i, j):
        if i < j:
            return torch.zeros_like(dt[..., 0])
        val = (C[..., i, :] * B[..., j, :]).sum(-1) * dt[..., j] * torch.exp(A * dt[..., j + 1:i + 1].sum(-1))
        return val + (D if i == j else 0)

    torch.testing.assert_close(M, _entries(m))


def _quasiseparable_entries(blk, p, u, backward_bc=("B", "C")):
    """The docstring formula, with delta = D + fc_D(v) for the default diagonal and dt_raw = 0 where the
    fixed parameterization has no dt input."""
    zero = {"dt_f": torch.zeros_like(p["B"][..., :1]).expand(-1, blk.nheads, -1, -1)}
    dt_f, A = _ssm(blk.mixer, {**zero, **p}, "dt_f")
    dt_b, _ = _ssm(blk.mixer, {"dt_b": zero["dt_f"], **p}, "dt_b")
    B, C = p["B"], p["C"]
    Bb, Cb = p[backward_bc[0]], p[backward_bc[1]]
    if blk.mixer.diagonal == "values":
        _, v, _ = blk.mixer_inputs(u)
        v_flat = v.transpose(1, 2).reshape(*u.shape[:2], -1)                      # (B, L, d_inner)
        delta = (v_flat @ blk.value_proj.weight.T).transpose(1, 2) + blk.mixer.D[:, None]
    else:
        delta = p["delta"][..., 0] + blk.mixer.D[:, None]

    def m(i, j):
        if i == j:
            return delta[..., i]
        if i > j:    # shifted forward pass: C_{i-1}, decays t = j+1 .. i-1
            return (C[..., i - 1, :] * B[..., j, :]).sum(-1) * dt_f[..., j] * torch.exp(A * dt_f[..., j + 1:i].sum(-1))
        return (Cb[..., i + 1, :] * Bb[..., j, :]).sum(-1) * dt_b[..., j] * torch.exp(A * dt_b[..., i + 1:j].sum(-1))

    return _entries(m)


@pytest.mark.parametrize("sa", [True, False], ids=["sa", "fixed"])
@pytest.mark.parametrize("opts", [{}, {"diagonal": "token", "fixed_dt": "table"}], ids=["released", "older"])
def test_quasiseparable_hydra(sa, opts):
    blk, M, p = _setup("quasiseparable", sa=sa, **opts)
    u = torch.randn(2, L, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(M, _quasiseparable_entries(blk, p, u))
    if not sa and not opts:     # the released fixed form: B, C tables only; dt = softplus(dt_bias) everywhere
        assert set(blk.tables) == {"B", "C"}
    torch.manual_seed(0)
    fresh = mixers.MatrixMixerBlock(D_MODEL, "quasiseparable", True, headdim=HEADDIM, qk_dim=QK)
    torch.testing.assert_close(fresh.mixer.A_log, torch.zeros_like(fresh.mixer.A_log))   # A = 1, Hydra's init


@pytest.mark.parametrize("sa", [True, False], ids=["sa", "fixed"])
def test_hydra_layer_has_separate_backward_generators(sa):
    blk, M, p = _setup("hydra", sa=sa)
    u = torch.randn(2, L, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(M, _quasiseparable_entries(blk, p, u, backward_bc=("B_b", "C_b")))
    assert not torch.equal(p["B"], p["B_b"])


@pytest.mark.parametrize("option,value", [("diagonal", "free"), ("fixed_dt", "zero"), ("bc", "tied")])
def test_quasiseparable_bad_option_names_option_value_and_allowed(option, value):
    with pytest.raises(ValueError, match=f"{option} must be one of .* for mixer 'quasiseparable', got '{value}'"):
        mixers.MatrixMixerBlock(D_MODEL, "quasiseparable", True, headdim=HEADDIM, qk_dim=QK, **{option: value})


@pytest.mark.parametrize("name,table,fans", [
    ("low_rank", "q", lambda H, L, d: (H * d, L * d)),          # paper: q_matrix (L, H, d)
    ("attention", "k", lambda H, L, d: (H * d, L * d)),
    ("dense", "m", lambda H, L, d: (L * L, H * L)),             # paper: M (H, L, L)
    ("toeplitz", "f", lambda H, L, d: (2 * L - 1, H)),          # paper: conv_params (H, 2L - 1)
    ("quasiseparable", "B", lambda H, L, d: (2 * H * d, L)),    # paper: BC (L, 2 N), N = H d
])
def test_fixed_tables_start_at_the_paper_codes_xavier_scale(name, table, fans):
    torch.manual_seed(0)
    H, L, d = 8, 64, 8
    blk = mixers.MatrixMixerBlock(32, name, False, max_seq_len=L, headdim=8, qk_dim=d)
    fan_in, fan_out = fans(H, L, d)
    want = math.sqrt(2.0 / (fan_in + fan_out))
    assert float(blk.tables[table].detach().std()) == pytest.approx(want, rel=0.1)
    # the older fixed form's dt and delta tables start at zero (dt = softplus(dt_bias), delta = D)
    if name == "quasiseparable":
        blk = mixers.MatrixMixerBlock(32, name, False, max_seq_len=L, headdim=8, qk_dim=d, diagonal="token",
                                      fixed_dt="table")
        assert all(float(blk.tables[n].detach().abs().max()) == 0 for n in ("dt_f", "dt_b", "delta"))
