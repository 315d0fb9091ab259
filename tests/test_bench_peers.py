"""benchmarks.kernels' peer adapters compute the benchmark's product (CPU, float64).

The peers themselves (mamba_ssm's Triton SSD, fla's chunk_simple_gla) need CUDA: fla's kernels do not run
under TRITON_INTERPRET (its loops index with Python ints: ``i_t.to`` fails in the interpreter) and mamba's
fused path is CUDA-only. So the adapters are tested here with stand-ins that implement each peer's documented
product densely; the real peers run in ``mixerzoo bench kernels --device cuda`` and ``mixerzoo bench models``. When mamba_ssm is
importable, its own pure-torch reference (``ssd_chunk_scan_combined_ref``) checks the mamba stand-in.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks import kernels as bk


def _segsum_decay(log_a: torch.Tensor) -> torch.Tensor:
    """(..., L) -> (..., L, L): exp(sum_{r=s+1..t} log_a_r) for t >= s, 0 above the diagonal."""
    cum = log_a.cumsum(-1)
    diff = cum[..., :, None] - cum[..., None, :]
    causal = torch.ones(diff.shape[-2:], dtype=torch.bool).tril()
    return torch.where(causal, diff, torch.full_like(diff, -torch.inf)).exp()


def mamba_standin(x, dt, A, B, C, chunk_size, **kw):
    """mamba_chunk_scan_combined's product, densely: y_t = sum_{s<=t} C_t.B_s exp(A sum_{r=s+1..t} dt_r)
    dt_s x_s; x (b, L, h, p), dt (b, L, h), A (h,), B, C (b, L, groups, n)."""
    assert not kw, kw
    heads = x.shape[2]
    groups = B.shape[2]
    Bh = B.repeat_interleave(heads // groups, dim=2)
    Ch = C.repeat_interleave(heads // groups, dim=2)
    gram = torch.einsum("bthn,bshn->bhts", Ch, Bh)
    decay = _segsum_decay((dt * A).transpose(1, 2))  # (b, h, L, L)
    y = torch.einsum("bhts,bhs,bshp->bthp", gram * decay, dt.transpose(1, 2), x)
    return y


def fla_standin(q, k, v, g=None, scale=None, **kw):
    """chunk_simple_gla's product, densely: o_t = scale sum_{s<=t} (q_t . k_s) exp(G_t - G_s) v_s, G = cumsum g;
    q, k (B, T, H, K), v (B, T, H, V), g (B, T, H)."""
    assert not kw and scale is not None
    gram = torch.einsum("bthk,bshk->bhts", q, k)
    o = torch.einsum("bhts,bshv->bthv", scale * gram * _segsum_decay(g.transpose(1, 2)), v)
    return o, None


def _inputs(L, gen):
    t = bk.make_inputs(L, "cpu", dtype=torch.float64, seed=int(torch.randint(2 ** 31, (1,), generator=gen)))
    t = {k: v.to(torch.float64) for k, v in t.items()}
    t["log_a"][:, :, L // 2] = 0.0  # a step with no decay: mamba's dt would be 0 there (the x / dt floor)
    return t


@pytest.mark.parametrize("L", [1, 2, 7])
def test_qs_paper_with_mamba_layout_matches_quasiseparable(L, gen, rel_err):
    t = _inputs(L, gen)
    want = bk.qs_torch(t)
    got = bk.qs_paper(t, mamba_standin)
    assert rel_err(got, want) < 1e-12


def test_mamba_standin_matches_mamba_reference(gen, rel_err):
    ssd = pytest.importorskip("mamba_ssm.ops.triton.ssd_combined")
    b, L, h, p, n, chunk = 2, 8, 3, 4, 5, 4  # mamba's reference needs L to be a multiple of the chunk
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    x, B, C = r(b, L, h, p), r(b, L, 1, n), r(b, L, 1, n)
    dt = torch.rand(b, L, h, generator=gen, dtype=torch.float64)
    A = -torch.rand(h, generator=gen, dtype=torch.float64)
    # mamba's reference casts dt to float32 before its cumsum ("high precision"): float32-level agreement
    assert rel_err(mamba_standin(x, dt, A, B, C, chunk), ssd.ssd_chunk_scan_combined_ref(x, dt, A, B, C, chunk)) \
        < 1e-6


@pytest.mark.parametrize("L", [1, 7])
def test_fla_simple_gla_layout_matches_semiseparable(L, gen, rel_err):
    import structured
    t = _inputs(L, gen)
    want = structured.get("semiseparable")(t["b"].expand(-1, bk.H, -1, -1), t["c"].expand(-1, bk.H, -1, -1),
                                           t["log_a"]).matmul(t["x"])
    assert rel_err(bk.fla_simple_gla(t, fla_standin), want) < 1e-12


def test_tune_bwd_marks_rows_the_planner_ran_differently(monkeypatch):
    """A knob set the planner cannot run as asked (3 stages run out of shared memory, 2 ran) measured another
    configuration: its row says so, and the sweep leaves TUNING as it found it."""
    import benchmarks.kernels as bk
    from kernels import ssd
    saved = dict(ssd.TUNING)

    def fake_bench(fn, t, keys, do_bench):
        ssd.LAST_PLANS[ssd._BWD_KERNELS] = ssd.Plan(64, 64, ssd.TUNING["bwd_num_warps"], 2)  # always 2 stages
        return 1.0, 2.0, 0

    monkeypatch.setattr(bk, "bench_one", fake_bench)
    monkeypatch.setattr(ssd, "LAST_PLANS", {})   # the fake plans must not outlive the test
    rows = bk.tune_bwd("cpu", L=8)
    assert [(r["bwd_num_warps"], r["bwd_num_stages"]) for r in rows] == [(4, 2), (4, 3), (8, 2), (8, 3)]
    three = [r for r in rows if r["bwd_num_stages"] == 3]
    assert all("not_as_asked" in r and "stages=3" in r["not_as_asked"] for r in three)
    assert not any("not_as_asked" in r for r in rows if r["bwd_num_stages"] == 2)
    assert ssd.TUNING == saved


def test_qs_paper_follows_the_shape_of_its_inputs(gen, rel_err):
    """The shape grid's cells differ from the module's default shape: the paper arrangement reads batch and heads
    from its inputs (the mamba stand-in gets one A per head of these inputs)."""
    t = bk.make_inputs(9, "cpu", dtype=torch.float64, batch=3, heads=2, headdim=5, d_state=4,
                       seed=int(torch.randint(2 ** 31, (1,), generator=gen)))
    t = {k: v.to(torch.float64) for k, v in t.items()}
    assert t["x"].shape == (3, 2, 9, 5) and t["b"].shape == (3, 1, 9, 4)
    assert rel_err(bk.qs_paper(t, mamba_standin), bk.qs_torch(t)) < 1e-12


def test_shape_summary_reports_the_cliff_and_the_speedup():
    rows = [dict(method="qs_fused", d_state=64, headdim=64, batch=64, L=512, fwd_bwd_ms=1.0, tokens_per_s=400.0),
            dict(method="qs_fused", d_state=192, headdim=128, batch=2, L=16384, fwd_bwd_ms=4.0, tokens_per_s=100.0),
            dict(method="qs_paper", d_state=64, headdim=64, batch=64, L=512, fwd_bwd_ms=5.0, tokens_per_s=80.0),
            dict(method="qs_paper", d_state=192, headdim=128, batch=2, L=16384, fwd_bwd_ms=8.0, tokens_per_s=50.0),
            dict(method="qs_fused", d_state=256, headdim=128, batch=2, L=16384, error="ValueError: no plan")]
    s = bk.shape_summary(rows)
    assert s["best_tokens_per_s"] == 400.0 and s["worst_fraction_of_best"] == 0.25
    assert s["worst_speedup_over_paper"] == 2.0
    assert [(c["d_state"], c["speedup_over_paper"]) for c in s["cells"]] == [(64, 5.0), (192, 2.0)]
    assert bk.shape_summary([]) == {}
